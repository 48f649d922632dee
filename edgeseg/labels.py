"""Class names and palettes shared by train, convert and the runtime.

Index 0 is always "not labelled": it is ignored by the loss and the metrics (the ADE20K /
SceneParse150 protocol) and drawn black. Class k of a dataset is channel k of the model output,
so no index shift is ever needed between the dataset, the model and the overlay.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.errors import InputError

IGNORE_INDEX = 0
"""Label value that means "not labelled"; never counted in the loss or the metrics."""


class LabelsError(InputError, ValueError):
    """A label set (classes.csv, labels in a model) that is malformed; the message says how to fix it."""


@dataclass(frozen=True)
class LabelSet:
    """Names and display colours of a dataset's classes, index 0 = not labelled.

    Attributes:
        name: short identifier, e.g. ``"ade20k"``.
        names: one name per class index, ``names[0]`` is the not-labelled class.
        palette: one RGB triple per class index.
    """

    name: str
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.palette):
            raise LabelsError(
                f"label set {self.name!r} has {len(self.names)} names but {len(self.palette)} colours;"
                " give one colour per class"
            )

    @property
    def num_classes(self) -> int:
        """Number of output channels, the not-labelled class included."""
        return len(self.names)

    def palette_bgr(self) -> np.ndarray:
        """Palette as a ``(num_classes, 3)`` uint8 lookup table in OpenCV's BGR order."""
        return np.asarray(self.palette, dtype=np.uint8)[:, ::-1].copy()

    def to_dict(self) -> dict:
        return {"name": self.name, "names": list(self.names), "palette": [list(c) for c in self.palette]}

    @classmethod
    def from_dict(cls, data: dict) -> "LabelSet":
        return cls(
            name=str(data.get("name", "custom")),
            names=tuple(str(n) for n in data["names"]),
            palette=tuple(tuple(int(v) for v in c) for c in data["palette"]),  # type: ignore[misc]
        )


def generic_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours for a dataset that ships none (the PASCAL VOC bit-interleaving scheme)."""
    colours = [(0, 0, 0)]
    for index in range(1, num_classes):
        r = g = b = 0
        cid = index
        for shift in range(7, -1, -1):
            r |= ((cid >> 0) & 1) << shift
            g |= ((cid >> 1) & 1) << shift
            b |= ((cid >> 2) & 1) << shift
            cid >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def read_labels_json(path: Path) -> LabelSet:
    """Read the ``labels.json`` that `train` writes beside a run's models (`LabelSet.to_dict`).

    Raises:
        LabelsError: one line naming the file and the fix, when it cannot be read or parsed.
    """
    try:
        return LabelSet.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LabelsError(f"{path} cannot be read as a run's labels ({exc.__class__.__name__}); restore the run's"
                          " labels.json or remove it") from exc


def read_classes_csv(path: Path) -> LabelSet:
    """Read a ``classes.csv`` (columns ``index,name[,r,g,b]``) as shipped beside a dataset.

    Args:
        path: the CSV file; row ``0`` must be the not-labelled class.

    Returns:
        The label set, named after the CSV's folder.

    Raises:
        ValueError: when indices are not 0..N-1 in order.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    indices = [int(row["index"]) for row in rows]
    if indices != list(range(len(rows))):
        raise LabelsError(f"{path}: class indices must be 0..{len(rows) - 1} in order, got {indices[:5]}...")
    names = tuple(row["name"] for row in rows)
    if all(key in rows[0] for key in ("r", "g", "b")):
        palette = tuple((int(row["r"]), int(row["g"]), int(row["b"])) for row in rows)
    else:
        palette = generic_palette(len(rows))
    return LabelSet(name=path.parent.name, names=names, palette=palette)  # type: ignore[arg-type]


# SceneParse150 (ADEChallengeData2016): names are the first synonym of objectInfo150.csv, colours
# are the benchmark's color150.mat (HEAD version), index 0 = not labelled.
ADE20K_NAMES: tuple[str, ...] = (
    "not labelled",
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway",
    "case", "pool", "pillow", "screen", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen", "computer", "swivel", "boat", "bar", "arcade", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television", "airplane",
    "dirt", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer", "canopy", "washer", "plaything",
    "swimming", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic",
    "tray", "ashcan", "fan", "pier", "crt", "plate", "monitor", "bulletin", "shower", "radiator",
    "glass", "clock", "flag",
)

ADE20K_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

ADE20K = LabelSet(name="ade20k", names=ADE20K_NAMES, palette=ADE20K_PALETTE)

# CamVid, 11-class version of the SegNet tutorial; source value 11 ("void") became 0.
CAMVID = LabelSet(
    name="camvid",
    names=(
        "unlabelled", "sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence",
        "car", "pedestrian", "bicyclist",
    ),
    palette=(
        (0, 0, 0), (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
        (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ),
)

BUILTIN: dict[str, LabelSet] = {"ade20k": ADE20K, "camvid": CAMVID}


def builtin_for(num_classes: int) -> LabelSet:
    """Best guess of labels for a model without metadata, from its output channel count."""
    for labels in BUILTIN.values():
        if labels.num_classes == num_classes:
            return labels
    return LabelSet(
        name=f"classes{num_classes}",
        names=("not labelled",) + tuple(f"class {i}" for i in range(1, num_classes)),
        palette=generic_palette(num_classes),
    )
