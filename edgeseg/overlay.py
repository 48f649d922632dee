"""Pure drawing functions: colourise a class map, blend it on a frame, legend and HUD.

All functions take and return BGR uint8 arrays (OpenCV order) and never loop over pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from edgeseg.labels import IGNORE_INDEX, LabelSet

FONT = cv2.FONT_HERSHEY_SIMPLEX
LEGEND_ROW_PX = 18  # height of one legend row in pixels
LEGEND_SWATCH_PX = 12  # side of the colour square
LEGEND_MIN_SHARE = 0.005  # classes under 0.5 % of the frame are left out of the legend
LEGEND_MAX_ROWS = 12
PANEL_ALPHA = 0.55  # opacity of the dark panels behind text


def palette_lut(palette_bgr: np.ndarray) -> np.ndarray:
    """``(N, 3)`` palette -> the ``(256, 1, 3)`` user colour map `cv2.applyColorMap` takes (unused entries black)."""
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[: len(palette_bgr), 0] = palette_bgr[:256]
    return lut


def colourise(class_map: np.ndarray, palette_bgr: np.ndarray) -> np.ndarray:
    """Class-index map ``(H, W)`` uint8 -> BGR image through the palette.

    OpenCV's colour-map lookup with the palette as a user colour map: one table lookup per pixel
    (the fastest of the ways measured, docs/performance.md).
    """
    if class_map.dtype != np.uint8 or len(palette_bgr) > 256:
        return palette_bgr[class_map]
    return cv2.applyColorMap(class_map, palette_lut(palette_bgr))


def blend(frame: np.ndarray, colour: np.ndarray, class_map: np.ndarray, alpha: float) -> np.ndarray:
    """Alpha-blend the colourised mask on the frame; not-labelled pixels keep the frame as is.

    Args:
        frame: BGR frame ``(H, W, 3)``.
        colour: colourised mask of the same size.
        class_map: class indices, of the frame's size or smaller (then upscaled by nearest
            neighbour like `colour`, and only when it holds a not-labelled pixel at all).
        alpha: mask opacity, 0 = frame only, 1 = mask only.
    """
    mixed = cv2.addWeighted(frame, 1.0 - alpha, colour, alpha, 0.0)
    unlabelled = (class_map == IGNORE_INDEX).view(np.uint8)
    if unlabelled.any():
        if unlabelled.shape != frame.shape[:2]:
            unlabelled = cv2.resize(unlabelled, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
        mixed = cv2.copyTo(frame, unlabelled, mixed)
    return mixed


def class_shares(class_map: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of the frame (0..1) covered by each class index."""
    if class_map.dtype == np.uint8 and num_classes <= 256:  # OpenCV's histogram: no int64 copy of the map
        counts = cv2.calcHist([class_map], [0], None, [num_classes], [0, num_classes]).reshape(-1)
    else:
        counts = np.bincount(class_map.reshape(-1), minlength=num_classes)[:num_classes]
    return counts.astype(np.float64) / max(1, class_map.size)


def draw_legend(image: np.ndarray, shares: np.ndarray, labels: LabelSet, palette_bgr: np.ndarray) -> np.ndarray:
    """Draw, in place at the top right, the classes present with their share of the frame."""
    order = [int(i) for i in np.argsort(-shares) if shares[i] >= LEGEND_MIN_SHARE and i != IGNORE_INDEX]
    order = order[:LEGEND_MAX_ROWS]
    if not order:
        return image
    texts = [f"{labels.names[i]} {100 * shares[i]:.0f}%" for i in order]
    text_w = max(cv2.getTextSize(t, FONT, 0.45, 1)[0][0] for t in texts)
    panel_w = text_w + LEGEND_SWATCH_PX + 16
    panel_h = LEGEND_ROW_PX * len(order) + 8
    x0 = max(0, image.shape[1] - panel_w - 4)
    _dark_panel(image, x0, 4, panel_w, panel_h)
    for row, (index, text) in enumerate(zip(order, texts)):
        y = 8 + row * LEGEND_ROW_PX
        colour = tuple(int(v) for v in palette_bgr[index])
        cv2.rectangle(image, (x0 + 4, y), (x0 + 4 + LEGEND_SWATCH_PX, y + LEGEND_SWATCH_PX), colour, -1)
        cv2.putText(image, text, (x0 + LEGEND_SWATCH_PX + 10, y + 11), FONT, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def draw_hud(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """Draw, in place at the top left, a few lines of status text (FPS, inference ms)."""
    if not lines:
        return image
    width = max(cv2.getTextSize(t, FONT, 0.5, 1)[0][0] for t in lines) + 12
    _dark_panel(image, 4, 4, width, 20 * len(lines) + 6)
    for row, text in enumerate(lines):
        cv2.putText(image, text, (10, 20 + 20 * row), FONT, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def _dark_panel(image: np.ndarray, x: int, y: int, width: int, height: int) -> None:
    region = image[y : y + height, x : x + width]
    cv2.convertScaleAbs(region, region, 1.0 - PANEL_ALPHA)  # in place (a view into `image`)


def render(
    frame: np.ndarray,
    class_map: np.ndarray,
    labels: LabelSet,
    palette_bgr: np.ndarray,
    alpha: float = 0.5,
    legend: bool = True,
    hud_lines: list[str] | None = None,
) -> np.ndarray:
    """Full overlay of one frame: blended mask, legend of present classes, HUD text.

    `class_map` may be at model resolution: it is coloured small and the colour image resized
    to the frame with nearest neighbour (the same pixels as upscaling the labels, less work).
    """
    colour = colourise(class_map, palette_bgr)
    if class_map.shape != frame.shape[:2]:
        colour = cv2.resize(colour, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
    out = blend(frame, colour, class_map, alpha)
    if legend:
        draw_legend(out, class_shares(class_map, labels.num_classes), labels, palette_bgr)
    if hud_lines:
        draw_hud(out, hud_lines)
    return out
