"""Datasets in ADE layout, read without TensorFlow (used by train, convert and `edgeseg eval`).

    <root>/images/<split>/*.jpg       RGB images
    <root>/annotations/<split>/*.png  single-channel masks, 0 = not labelled, 1..N-1 classes
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import InputError
from edgeseg.labels import ADE20K, BUILTIN, LabelSet, read_classes_csv

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetError(InputError, ValueError):
    """A dataset folder that is missing, empty, mismatched or holds bad files."""


@dataclass(frozen=True)
class Pairs:
    """Image and mask paths of one split, matched by file stem, sorted."""

    images: tuple[str, ...]
    masks: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    def select(self, indices) -> "Pairs":
        return Pairs(tuple(self.images[i] for i in indices), tuple(self.masks[i] for i in indices))


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_pairs(root: Path, split: str, max_examples: int = 0) -> Pairs:
    """Match the images and masks of one split by file stem.

    Raises:
        DatasetError: missing folders, no images, or files without a partner (listed).
    """
    root = Path(root)
    image_dir, mask_dir = root / "images" / split, root / "annotations" / split
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DatasetError(
                f"{folder} does not exist; a dataset needs images/{split}/*.jpg and annotations/{split}/*.png"
            )
    images = {p.stem: p for p in list_images(image_dir)}
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
    if not images:
        raise DatasetError(f"{image_dir} holds no images (.jpg/.png); put the {split} images there")
    unmatched = sorted(set(images) ^ set(masks))
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        raise DatasetError(
            f"{len(unmatched)} {split} files have no partner image/mask with the same name ({shown});"
            f" every images/{split}/X.jpg needs annotations/{split}/X.png"
        )
    stems = sorted(images)
    if max_examples:
        stems = stems[:max_examples]
    return Pairs(tuple(str(images[s]) for s in stems), tuple(str(masks[s]) for s in stems))


def select_pairs(root: Path, splits: str, prefixes=(), max_examples: int = 0) -> Pairs:
    """The pairs of one or more splits (``"training+validation"``), optionally only those whose file
    name starts with one of `prefixes` (a CamVid drive such as ``0006R0``, a Cityscapes city), sorted
    by name; `max_examples` keeps the first N after filtering.

    Raises:
        DatasetError: as `list_pairs`, or no pair left after filtering (the prefixes found are listed).
    """
    images: list[str] = []
    masks: list[str] = []
    for split in splits.split("+"):
        pairs = list_pairs(root, split.strip())
        images += pairs.images
        masks += pairs.masks
    order = sorted(range(len(images)), key=lambda i: Path(images[i]).name)
    if prefixes:
        prefixes = tuple(prefixes)
        kept = [i for i in order if Path(images[i]).name.startswith(prefixes)]
        if not kept:
            found = sorted({Path(images[i]).name.split("_")[0] for i in order})
            raise DatasetError(f"no {splits} file name starts with {', '.join(prefixes)}; names there start with"
                               f" {', '.join(found[:8])}: fix the prefixes")
        order = kept
    if max_examples:
        order = order[:max_examples]
    return Pairs(tuple(images[i] for i in order), tuple(masks[i] for i in order))


def resolve_labels(root: Path, name: str = "auto") -> LabelSet:
    """Label table of a dataset: a builtin name, a classes.csv path, or ``auto``
    (``classes.csv`` in the dataset root, else ADE20K-150)."""
    if name in BUILTIN:
        return BUILTIN[name]
    if name != "auto":
        path = Path(name)
        if path.is_file():
            return read_classes_csv(path)
        raise DatasetError(f"labels {name!r} unknown; use one of {sorted(BUILTIN)}, 'auto' or a classes.csv path")
    csv_path = Path(root) / "classes.csv"
    return read_classes_csv(csv_path) if csv_path.is_file() else ADE20K


def read_image(path: str | Path) -> np.ndarray:
    """Read any image file as 8-bit BGR ``(H, W, 3)``, the one image reader of the runtime, `eval`,
    training and calibration: grey, RGBA, 16-bit and CMYK JPEGs are converted.

    Raises:
        DatasetError: a folder, a missing or empty file, or not an image (an `InputError`: exit code 3).
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path} is a folder; pass it alone to segment all its images, or name image files")
    if not path.is_file():
        raise DatasetError(f"image {path} does not exist; check the path")
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise DatasetError(f"image {path} is empty (0 bytes); replace it with a real image file")
    frame = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if frame is None:
        raise DatasetError(f"{path} is not an image OpenCV can read; replace it with a PNG or JPEG")
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)  # 16-bit: keep the 8 most significant bits
    elif frame.dtype != np.uint8:
        raise DatasetError(f"{path} has {frame.dtype} pixels; save it as an 8- or 16-bit PNG or a JPEG")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def read_image_rgb(path: str | Path) -> np.ndarray:
    """`read_image` as RGB (what the training pipeline and calibration hold)."""
    return cv2.cvtColor(read_image(path), cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """Read a class-index mask and check its values fit the label table.

    Raises:
        DatasetError: unreadable, multi-channel, or holding labels >= num_classes.
    """
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise DatasetError(f"{path} is not a readable mask; masks must be single-channel PNGs")
    if mask.ndim != 2:
        raise DatasetError(f"{path} has {mask.shape[2]} channels; masks must be single-channel class-index PNGs")
    if int(mask.max()) >= num_classes:
        raise DatasetError(
            f"{path} holds label {int(mask.max())} but the label table has only {num_classes} classes"
            f" (0..{num_classes - 1}); fix the mask or the dataset's classes.csv"
        )
    return mask.astype(np.uint8)
