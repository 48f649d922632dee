"""The one set of preprocessing functions, shared by training, calibration, verification and the runtime.

Training (`train.data`), int8 calibration and verification (`convert`) and the edge runtime
(`edgeseg.segmenter`) all call these functions, so a model never sees pixels prepared one way
in training and another way on the device. (The runtime then feeds the result to the model in the
input's own type: float32 and float16 as they are, int8 and uint8 quantised by the input's scale
and zero point; the pixel values are the same.) The input spec travels inside exported models
(`edgeseg.metadata`), so the runtime reproduces it without side files.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """How a frame becomes a model input.

    Attributes:
        height: model input height in pixels.
        width: model input width in pixels.
        mean: per-channel value subtracted from 0..255 RGB pixels.
        std: per-channel divisor applied after the mean; the default maps pixels to [0, 1].
    """

    height: int
    width: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)

    @property
    def size_hw(self) -> tuple[int, int]:
        return (self.height, self.width)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["colour_order"] = "RGB"
        data["layout"] = "NHWC"
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "InputSpec":
        return cls(
            height=int(data["height"]),
            width=int(data["width"]),
            mean=tuple(float(v) for v in data.get("mean", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data.get("std", (255.0, 255.0, 255.0))),  # type: ignore[arg-type]
        )


def resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a colour image to ``size_hw``: area averaging when shrinking, bilinear otherwise.

    Area averaging avoids the aliasing that plain bilinear gives when a 480x360 frame shrinks
    to a 256x192 input.
    """
    height, width = size_hw
    if image.shape[0] == height and image.shape[1] == width:
        return image
    shrinking = image.shape[0] > height and image.shape[1] > width
    if not shrinking:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    integer_ratio = image.shape[0] % height == 0 and image.shape[1] % width == 0
    if integer_ratio or image.dtype != np.uint8:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    # A non-integer shrink (480x360 -> 256x192) takes OpenCV's general area path, which sums in
    # float32 for uint8 and float32 alike and rounds to uint8 at the end. Handing it float32 and
    # rounding afterwards (convertScaleAbs: round to nearest, saturate) gives the same bytes, faster
    # (tests check the bytes are equal).
    # Integer ratios keep the uint8 call: their fast path rounds halves up, not to even.
    shrunk = cv2.resize(image.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    return cv2.convertScaleAbs(shrunk)


def resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a class-index mask with NEAREST neighbour.

    The tutorial resized masks bilinearly, which invents label values between two classes at
    every boundary (e.g. 1 and 5 blend into 3). Nearest neighbour keeps only labels that exist.
    """
    height, width = size_hw
    if mask.shape[0] == height and mask.shape[1] == width:
        return mask
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def prepare_pixels(image: np.ndarray, spec: InputSpec, bgr: bool = False) -> np.ndarray:
    """Resize a uint8 frame to the model's size and order it RGB, still uint8 ``(H, W, 3)``.

    Args:
        image: ``(h, w, 3)`` uint8 frame.
        spec: the model's input spec.
        bgr: True when the frame comes from OpenCV (BGR order).
    """
    resized = resize_image(image, spec.size_hw)
    if bgr:
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(resized)


def normalize(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Map uint8 RGB pixels to the float32 values the network was trained on.

    An ``(H, W, 3)`` uint8 image goes through a table of the 256 values per channel, computed with
    the same float32 arithmetic, so the result is the same to the bit (three full-size float passes
    become one lookup).
    """
    if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3:
        return cv2.LUT(pixels, _normalize_table(tuple(spec.mean), tuple(spec.std)))
    return _normalize_values(pixels, spec.mean, spec.std)


def _normalize_values(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    inv_std = 1.0 / np.asarray(std, dtype=np.float32)
    return (pixels.astype(np.float32) - np.asarray(mean, dtype=np.float32)) * inv_std


@functools.lru_cache(maxsize=16)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """`cv2.LUT` table of `normalize` for every uint8 value."""
    return cv_lut(_normalize_values(np.arange(256, dtype=np.uint8)[:, np.newaxis].repeat(3, axis=1), mean, std))


def cv_lut(table: np.ndarray) -> np.ndarray:
    """A ``(256, 3)`` per-channel table -> what `cv2.LUT` takes for a 3-channel image: one shared
    ``(1, 256)`` row when the channels agree (the usual case), else ``(1, 256, 3)``."""
    if bool((table == table[:, :1]).all()):
        return table[:, 0].reshape(1, 256).copy()
    return table.reshape(1, 256, 3).copy()


def preprocess(image: np.ndarray, spec: InputSpec, bgr: bool = False) -> np.ndarray:
    """Frame -> float32 ``(H, W, 3)`` network input: resize, colour order, normalisation.

    This is the function training, calibration and the runtime share.
    """
    return normalize(prepare_pixels(image, spec, bgr=bgr), spec)
