"""Training configuration: one frozen dataclass, loaded from YAML, saved beside every run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edgeseg import atomic
from edgeseg.errors import UsageError


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Field names are the YAML keys.

    Attributes:
        data_dir: dataset root in ADE layout (images/<split>/*.jpg, annotations/<split>/*.png).
        labels: ``"ade20k"``, ``"camvid"``, or ``"auto"`` (``classes.csv`` in data_dir, else ADE20K).
        architecture: ``"unet"``, ``"unet-lite"``, ``"unet-lite2"`` or ``"dilated-lite"``.
        height, width: network input size (non-square allowed).
        width_multiplier: channel scale of unet-lite(2) and dilated-lite; base_filters: first-level width of unet.
        image_pooling: unet-lite2 only: its global image-pooling context branch at 1/32 (off = the
            residual encoder alone).
        batch_norm: unet only: BatchNorm after every conv (off = the tutorial; on = int8-friendly).
        optimizer: ``"radam"`` (rectified Adam, the tutorial's) or ``"adamw"``.
        lr_schedule: ``"constant"`` (the tutorial) or ``"cosine"`` (with linear warm-up).
        train_split, val_split: split folder names; ``"training+validation"`` joins splits (to train the
            final model on both once the recipe is chosen).
        train_prefixes, val_prefixes: keep only pairs whose file name starts with one of these (e.g. the
            CamVid drives ``0006R0``: a leave-one-drive-out check); empty = every pair of the split(s).
        class_weighting: ``"none"``, ``"median_frequency"`` (Eigen & Fergus, used by SegNet on CamVid) or
            ``"enet"`` (1 / ln(1.02 + p), ENet's; gentler on rare classes).
        class_weight_power: each class weight is raised to this power after the rule (1 = the rule's own
            weights, 0.5 = their square root: rare classes weigh less, for a model that over-predicts them;
            0 = unweighted).
        augment: random flip, zoom crop and colour jitter on training images.
        max_scale, min_scale: zoom range; below 1 the image shrinks and the border is label 0 (ignored).
        source_scale: training images are prepared (the shared `prepare_pixels`) and cached at this
            multiple of the input size, so a zoom up to it crops real pixels instead of upsampled ones
            (1.5 at 320x256 keeps CamVid's 480x360 detail); 1 = prepared at the input size.
        color_jitter: ``"basic"`` (brightness, contrast) or ``"strong"`` (also saturation, hue, gamma and
            per-channel gain: other cameras and other days' light).
        detail_jitter: half of the training crops are shrunk by a random factor in [1, detail_jitter] and
            resized back (a softer camera, a farther scene: textures at less detail than CamVid's);
            1 = off.
        camera_jitter: the probability of each of `train.data.other_camera`'s effects on a training crop
            (another mount's roll and pitch, blur, sensor noise, JPEG re-compression: footage from other
            cameras than the dataset's); 0 = off.
        copy_paste: the probability that a training crop receives the `paste_classes` pixels of another
            crop in its batch (image and label, same place; `train.data.paste_objects`); 0 = off.
        paste_classes: class names that `copy_paste` copies (e.g. the thin and rare pole, signsymbol,
            pedestrian, bicyclist); checked against the dataset's labels before training.
        checkpoint: which weights the run delivers and evaluates: ``"best"`` (highest val mIoU, early
            stopping on) or ``"last"`` (the final epoch, for a fixed schedule on train + val).
        snapshot_every: also save ``snapshots/epoch_NNN.keras`` every this many epochs (to score points of
            one schedule afterwards, e.g. on held-out frames and clips); 0 = off.
        max_examples: use only the first N training and validation pairs (debugging), 0 = all.
        cache: ``"memory"``, ``"none"`` or a file path for tf.data's cache.
        init_from: a ``.keras`` model of the same architecture, size and class count whose weights start
            this run (fine-tuning, or a second cosine cycle after a first run); ``""`` = random init.
        teachers: ``.keras`` models (same input size and classes, any architecture) to distil from: the
            mean of their softmax outputs on each augmented training crop joins the labels as the target;
            empty = no distillation.
        distill_weight: the teachers' share of each labelled pixel's target (0..1; the labels have the rest).
        lovasz_weight: weight of a Lovász-softmax term (Berman et al. 2018: a surrogate of the mean IoU,
            every class present weighing alike) added to the cross-entropy; 0 = cross-entropy only.
        validation_every: run validation every N epochs (and on no other); 1 = every epoch. On a CPU the
            validation pass can cost a third of an epoch; the best checkpoint and early stopping (whose
            patience then counts validations) see only the validated epochs; the run's last epoch is
            always evaluated when the model is delivered.
        ohem_threshold: online hard example mining: only labelled pixels whose true class gets a probability
            below this count in the loss (BiSeNet and HRNet use 0.7); 0 = every labelled pixel.
        ohem_min_kept: with ``ohem_threshold``, the share of each batch's labelled pixels (the hardest)
            kept even when fewer are below the threshold.
    """

    data_dir: str = "data/ADEChallengeData2016"
    run_dir: str = "runs/ade20k_unet"
    labels: str = "auto"
    train_split: str = "training"
    val_split: str = "validation"
    train_prefixes: list = field(default_factory=list)
    val_prefixes: list = field(default_factory=list)
    architecture: str = "unet"
    height: int = 128
    width: int = 128
    base_filters: int = 64
    width_multiplier: float = 1.0
    image_pooling: bool = True
    batch_norm: bool = False
    batch_size: int = 5
    epochs: int = 20
    learning_rate: float = 1e-3
    optimizer: str = "radam"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    early_stop_patience: int = 10
    class_weighting: str = "none"
    class_weight_power: float = 1.0
    augment: bool = False
    max_scale: float = 1.5
    min_scale: float = 1.0
    source_scale: float = 1.0
    color_jitter: str = "basic"
    detail_jitter: float = 1.0
    camera_jitter: float = 0.0
    copy_paste: float = 0.0
    paste_classes: list = field(default_factory=list)
    checkpoint: str = "best"
    snapshot_every: int = 0
    max_examples: int = 0
    cache: str = "memory"
    mixed_precision: bool = False
    seed: int = 42
    sample_images: int = 4
    init_from: str = ""
    teachers: list = field(default_factory=list)
    distill_weight: float = 0.5
    lovasz_weight: float = 0.0
    validation_every: int = 1
    ohem_threshold: float = 0.0
    ohem_min_kept: float = 0.0625
    extra: dict = field(default_factory=dict)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with the given (non-None) values, checked like a config file's."""
        changed = dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
        changed.validate("option")
        return changed

    def validate(self, where: str = "config") -> None:
        """Check every field's type and range.

        Raises:
            ConfigError: one line naming the key, its value and what is expected.
        """
        for item in dataclasses.fields(self):
            _check_field(item.name, getattr(self, item.name), where)
        if self.lr_schedule == "cosine" and self.warmup_epochs >= self.epochs:
            raise ConfigError(f"{where}: warmup_epochs {self.warmup_epochs} is not shorter than epochs {self.epochs};"
                              " the learning rate would never leave its warm-up: lower warmup_epochs")
        if not self.image_pooling and self.architecture != "unet-lite2":
            raise ConfigError(f"{where}: image_pooling false applies to unet-lite2 only, not {self.architecture}:"
                              " remove the key or set architecture: unet-lite2")
        for key in ("ohem_threshold", "ohem_min_kept"):
            if getattr(self, key) >= 1:
                raise ConfigError(f"{where}: {key} is {getattr(self, key)!r}; it is a share between 0 and 1 (e.g. 0.7)")
        if self.camera_jitter > 1:
            raise ConfigError(f"{where}: camera_jitter is {self.camera_jitter!r}; it is a probability between 0 and 1")
        if self.copy_paste > 1:
            raise ConfigError(f"{where}: copy_paste is {self.copy_paste!r}; it is a probability between 0 and 1")
        if self.copy_paste > 0 and not self.paste_classes:
            raise ConfigError(f"{where}: copy_paste is {self.copy_paste!r} but paste_classes is empty;"
                              " name the classes to paste, e.g. paste_classes: [pole, pedestrian]")
        if self.class_weight_power != 1 and self.class_weighting == "none":
            raise ConfigError(f"{where}: class_weight_power {self.class_weight_power} has no weights to act on:"
                              " set class_weighting (e.g. enet) or remove class_weight_power")
        if self.distill_weight > 1:
            raise ConfigError(f"{where}: distill_weight is {self.distill_weight!r}; it must be between 0 and 1")
        if self.min_scale > min(1.0, self.max_scale):
            raise ConfigError(f"{where}: min_scale {self.min_scale} must be <= 1 and <= max_scale {self.max_scale}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        atomic.write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


class ConfigError(UsageError, ValueError):
    """A config file that cannot be read or names unknown keys."""


def load_config(path: Path | None) -> TrainConfig:
    """Read a YAML config; unknown keys are an error (typos must not pass silently)."""
    if path is None:
        return TrainConfig()
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing YAML file, e.g. configs/camvid_lite.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML ({exc.__class__.__name__}); fix its syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of key: value")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config file {path} has unknown keys {unknown}; valid keys: {sorted(known)}")
    config = TrainConfig(**{**dataclasses.asdict(TrainConfig()), **data})
    config.validate(f"config file {path}")
    return config


# Closed choices and ranges per key; a key not listed here only has its type checked.
CHOICES = {
    "architecture": ("unet", "unet-lite", "unet-lite2", "dilated-lite"),
    "optimizer": ("radam", "adamw"),
    "lr_schedule": ("constant", "cosine"),
    "class_weighting": ("none", "median_frequency", "enet"),
    "color_jitter": ("basic", "strong"),
    "checkpoint": ("best", "last"),
}
MINIMUM = {  # key: (smallest allowed value, whether it may equal it)
    "height": (1, True), "width": (1, True), "base_filters": (1, True), "width_multiplier": (0, False),
    "batch_size": (1, True), "epochs": (1, True), "learning_rate": (0, False), "weight_decay": (0, True),
    "warmup_epochs": (0, True), "early_stop_patience": (1, True), "max_scale": (1, True), "min_scale": (0, False),
    "source_scale": (1, True), "detail_jitter": (1, True), "max_examples": (0, True), "distill_weight": (0, True),
    "lovasz_weight": (0, True), "copy_paste": (0, True), "camera_jitter": (0, True), "sample_images": (0, True),
    "snapshot_every": (0, True), "seed": (0, True), "class_weight_power": (0, True),
    "ohem_threshold": (0, True), "ohem_min_kept": (0, False), "validation_every": (1, True),
}
LIST_ITEMS = {"train_prefixes": "file-name prefixes", "val_prefixes": "file-name prefixes", "teachers": "model paths",
              "paste_classes": "class names"}
TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text", dict: "a mapping",
              list: "a list"}


def _check_field(key: str, value, where: str) -> None:
    expected = {item.name: item.type for item in dataclasses.fields(TrainConfig)}[key]
    kind = {"bool": bool, "int": int, "float": float, "str": str, "dict": dict, "list": list}[str(expected)]
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        hint = ""
        if kind in (int, float) and isinstance(value, str):
            hint = " (YAML reads 1e-3 without a dot as text: write 1.0e-3 or 0.001)" if "e" in value.lower() else ""
        if kind is bool and isinstance(value, str):
            hint = " (write true or false without quotes)"
        raise ConfigError(f"{where}: {key} is {value!r} ({type(value).__name__}); expected {TYPE_NAMES[kind]}{hint}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{where}: {key} is {value!r}; choose one of {', '.join(CHOICES[key])}")
    if kind is list and not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{where}: {key} is {value!r}; expected a list of {LIST_ITEMS[key]} (text)")
    if key in MINIMUM:
        low, inclusive = MINIMUM[key]
        if value < low or (value == low and not inclusive):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise ConfigError(f"{where}: {key} is {value!r}; it must be {bound}")
