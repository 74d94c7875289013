"""Box coordinate conventions: what a model's numbers mean, and the way back to original pixels.

Usage:
    conv = BoxConvention("resized")                     # Qwen2.5-VL (the default)
    mh, mw = conv.model_size(480, 640)                  # (476, 644): what the model sees
    box = conv.to_original([10, 20, 300, 400], 480, 640) # -> [x0, y0, x1, y1] in the 640x480 image

Conventions (backend option `coords`):
- resized  : absolute pixels of the image as Qwen2.5-VL's processor resized it (smart_resize:
             both sides multiples of `factor`, area within [min_pixels, max_pixels]).
- norm1000 : 0..1000 on both axes, whatever the image size (Qwen2-VL, Qwen3-VL).
- norm1    : 0..1 on both axes.
- original : absolute pixels of the image as sent (models that see the original size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from .errors import InvalidBoxError, OptionError

# Qwen2.5-VL image processor defaults (preprocessor_config.json of the Qwen2.5-VL checkpoints,
# and qwen-vl-utils): patch 14 merged 2x2 -> 28 px per visual token side.
IMAGE_FACTOR = 28
MIN_PIXELS = 4 * 28 * 28  # 3136
MAX_PIXELS = 16384 * 28 * 28  # 12845056
MAX_RATIO = 200  # the processor refuses longer/shorter side ratios above this
# A model may overshoot the image edge a little; beyond this fraction of the convention's range
# the numbers are taken as a convention mismatch (e.g. 0-1000 answers read as resized pixels).
OVERSHOOT_TOLERANCE = 0.10

Convention = Literal["resized", "norm1000", "norm1", "original"]
CONVENTIONS: tuple[str, ...] = ("resized", "norm1000", "norm1", "original")


def _round_to(x: float, factor: int) -> int:
    """Nearest multiple of `factor` (Python round: halves go to the even multiple)."""
    return round(x / factor) * factor


def _floor_to(x: float, factor: int) -> int:
    return math.floor(x / factor) * factor


def _ceil_to(x: float, factor: int) -> int:
    return math.ceil(x / factor) * factor


def smart_resize(
    height: int,
    width: int,
    factor: int = IMAGE_FACTOR,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """(height, width) the Qwen2.5-VL processor resizes an image to.

    Each side goes to the nearest multiple of `factor` (at least `factor`); if the area then
    exceeds `max_pixels` (or falls below `min_pixels`) both sides are scaled by the same
    factor, rounded down (up) to multiples of `factor`, keeping the aspect ratio close.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size: height and width must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(
            f"image size: aspect ratio {max(height, width) / min(height, width):.1f} exceeds "
            f"{MAX_RATIO}, which the Qwen2.5-VL processor refuses; crop the image"
        )
    h = max(factor, _round_to(height, factor))
    w = max(factor, _round_to(width, factor))
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, _floor_to(height / beta, factor))
        w = max(factor, _floor_to(width / beta, factor))
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = _ceil_to(height * beta, factor)
        w = _ceil_to(width * beta, factor)
    return h, w


@dataclass(frozen=True)
class BoxConvention:
    """How a model's box numbers relate to the image; see the module docstring."""

    coords: Convention = "resized"
    factor: int = IMAGE_FACTOR
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    pre_resize: bool = True  # resized: send the image already smart-resized (what the model sees)

    def __post_init__(self) -> None:
        if self.coords not in CONVENTIONS:
            raise OptionError(f"coords: {self.coords!r} is not one of {list(CONVENTIONS)}")
        if self.factor < 1:
            raise OptionError(f"factor: must be >= 1, got {self.factor}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise OptionError(
                f"min_pixels/max_pixels: need 0 < min_pixels <= max_pixels, "
                f"got {self.min_pixels} and {self.max_pixels}"
            )

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the image as the model sees it."""
        if self.coords == "resized":
            return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return height, width

    def range(self, height: int, width: int) -> tuple[float, float]:
        """(x_max, y_max) of the model's coordinate space for an original height x width image."""
        if self.coords == "resized":
            mh, mw = self.model_size(height, width)
            return float(mw), float(mh)
        if self.coords == "norm1000":
            return 1000.0, 1000.0
        if self.coords == "norm1":
            return 1.0, 1.0
        return float(width), float(height)

    def prepare_image(self, image: np.ndarray) -> np.ndarray:
        """The image to send: smart-resized when coords=resized and pre_resize, else as is.

        Sending it pre-resized makes the server's own smart_resize a no-op, so the size the
        model answers in is the one computed here even if the server rounds differently.
        """
        # (H, W, 3) uint8 -> (mh, mw, 3) uint8
        if self.coords != "resized" or not self.pre_resize:
            return image
        h, w = image.shape[:2]
        mh, mw = self.model_size(h, w)
        if (mh, mw) == (h, w):
            return image
        interp = cv2.INTER_AREA if mh * mw < h * w else cv2.INTER_CUBIC
        return cv2.resize(image, (mw, mh), interpolation=interp)

    def to_original(self, box: list[float], height: int, width: int, raw: str = "") -> list[float]:
        """Map a model box [x0, y0, x1, y1] to the original image, clamp, reject bad boxes."""
        if len(box) != 4 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box
        ):
            raise InvalidBoxError(f"need 4 finite numbers [x0, y0, x1, y1], got {box!r}", raw)
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 < x0 or y1 < y0:
            raise InvalidBoxError(
                f"{box!r} is inverted (need x0 <= x1 and y0 <= y1, order [x0, y0, x1, y1])", raw
            )
        xmax, ymax = self.range(height, width)
        tol_x, tol_y = xmax * OVERSHOOT_TOLERANCE, ymax * OVERSHOOT_TOLERANCE
        if x0 < -tol_x or y0 < -tol_y or x1 > xmax + tol_x or y1 > ymax + tol_y:
            raise InvalidBoxError(
                f"{box!r} lies outside the coordinate range of coords={self.coords} "
                f"(x in [0, {xmax:g}], y in [0, {ymax:g}]); if the model answers in another "
                f"convention set the backend option coords to one of {list(CONVENTIONS)}",
                raw,
            )
        sx, sy = width / xmax, height / ymax
        out = [
            min(max(x0 * sx, 0.0), float(width)),
            min(max(y0 * sy, 0.0), float(height)),
            min(max(x1 * sx, 0.0), float(width)),
            min(max(y1 * sy, 0.0), float(height)),
        ]
        if out[2] - out[0] <= 0 or out[3] - out[1] <= 0:
            raise InvalidBoxError(
                f"{box!r} is empty (zero width or height) once mapped to the "
                f"{width}x{height} image",
                raw,
            )
        return [round(v, 2) for v in out]

    def hint(self, height: int, width: int) -> str:
        """A sentence for the prompt telling the model which coordinates to answer in."""
        if self.coords == "resized":
            mh, mw = self.model_size(height, width)
            return f"Give bbox_2d as absolute pixel coordinates in this {mw}x{mh} image."
        if self.coords == "original":
            return f"Give bbox_2d as absolute pixel coordinates in this {width}x{height} image."
        if self.coords == "norm1000":
            return "Give bbox_2d in coordinates normalised to 0-1000 on both axes."
        return "Give bbox_2d as fractions of the image width and height, between 0 and 1."
