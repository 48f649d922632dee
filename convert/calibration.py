"""Representative data for int8 calibration: real images, seeded selection, shared preprocessing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edgeseg.dataset import DatasetError, list_images, read_image_rgb
from edgeseg.preprocess import InputSpec, preprocess

from .source import ConvertError


def calibration_images(root: Path, split: str, count: int, seed: int, exclude: set[str]) -> list[str]:
    """Pick `count` images (seeded) from ``root/images/<split>`` or a plain folder of images.

    Images in `exclude` (the evaluation set) are never picked, so calibration never sees the
    images the accuracy check is measured on.

    Raises:
        ConvertError: folder missing, empty, or holding fewer usable images than asked.
    """
    root = Path(root)
    folder = root / "images" / split if (root / "images" / split).is_dir() else root
    if not folder.is_dir():
        raise ConvertError(f"calibration folder {folder} does not exist; pass --calib-data with real images")
    try:
        candidates = [str(p) for p in list_images(folder)]
    except OSError as exc:
        raise ConvertError(f"calibration folder {folder} cannot be read ({exc.strerror})") from exc
    excluded = [p for p in candidates if str(Path(p).resolve()) in exclude]
    candidates = [p for p in candidates if str(Path(p).resolve()) not in exclude]
    if not candidates:
        raise ConvertError(f"calibration folder {folder} holds no images (besides evaluation images);"
                           " pass --calib-data with the training images")
    if len(candidates) < count:
        note = f" ({len(excluded)} evaluation images left out)" if excluded else ""
        raise ConvertError(f"calibration folder {folder} has {len(candidates)} usable images{note} but"
                           f" --num-calib asks for {count}; lower --num-calib to {len(candidates)} or add images")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(candidates), size=count, replace=False)
    return [candidates[i] for i in sorted(chosen)]


def representative_dataset(paths: list[str], spec: InputSpec, progress: bool = True,
                           transform=None) -> Iterator[list[np.ndarray]]:
    """Generator for ``TFLiteConverter.representative_dataset`` (one image per step)."""
    for path in tqdm(paths, desc="calibrate", unit="img", disable=None if progress else True, leave=False):
        try:
            image = read_image_rgb(path)
        except DatasetError as exc:
            raise ConvertError(str(exc)) from exc
        batch = preprocess(image, spec)[np.newaxis]
        yield [transform(batch) if transform else batch]
