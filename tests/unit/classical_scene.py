"""The synthetic scene of the classical backend's unit tests: a red square on textured green.

Usage:
    from tests.unit.classical_scene import iou, scene
    img, mask = scene(x0=20, y0=40, size=36)
"""

from __future__ import annotations

import numpy as np


def scene(h: int = 120, w: int = 160, x0: int = 50, y0: int = 40, size: int = 40):
    """(H, W, 3) uint8 textured green background with a red square object at (x0, y0), and
    the object's (H, W) bool mask."""
    rng = np.random.default_rng(0)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 1] = 120 + rng.integers(0, 30, (h, w))
    img[..., 0] = 30 + rng.integers(0, 20, (h, w))
    m = np.zeros((h, w), bool)
    m[y0 : y0 + size, x0 : x0 + size] = True
    img[m] = (200, 40, 40)
    return img, m


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b))
