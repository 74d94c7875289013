"""Bit-packed boolean masks for the wire: 8x smaller than bool, exact round trip.

Usage:
    bits = pack(masks)            # (..., H, W) bool -> (..., H, ceil(W/8)) uint8
    masks = unpack(bits, width)   # and back; width is the original W

A message that carries masks sends the packed array as `masks` and `width` (int) beside it.
"""

from __future__ import annotations

import numpy as np


def pack(masks: np.ndarray) -> np.ndarray:
    """Pack a boolean (or 0/1) array along its last axis; bit order is numpy's 'big'."""
    m = np.asarray(masks)
    if m.ndim < 1:
        raise ValueError("masks: need at least one axis (..., W), got a 0-d array")
    if m.dtype != np.bool_:
        m = m != 0
    return np.packbits(m, axis=-1)


def unpack(bits: np.ndarray, width: int) -> np.ndarray:
    """Inverse of pack(): (..., ceil(W/8)) uint8 -> (..., W) bool."""
    b = np.asarray(bits)
    if b.dtype != np.uint8:
        raise ValueError(f"masks: packed masks must be uint8, got {b.dtype}")
    if width < 0 or (width + 7) // 8 != (b.shape[-1] if b.ndim else -1):
        raise ValueError(
            f"width: {width} does not match packed last axis {b.shape[-1:]} "
            f"(expected ceil(width/8) bytes per row)"
        )
    return np.unpackbits(b, axis=-1, count=width).astype(bool, copy=False)
