"""Validation of SAM prompts at the service edge: errors name the field and the fix.

Usage:
    pts, labels = check_points(points, labels, rel, height, width)   # (N, 2) abs px, (N,)
    box = check_box(box, rel, height, width)                          # (4,) abs px, clipped
    mask = check_mask(mask, height, width)                            # (H, W) bool copy

Relative coordinates ([0, 1]) are turned into pixels here, once, so backends only ever see
absolute pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protocol.errors import BadRequest


def check_points(
    points: Sequence[Sequence[float]] | None,
    labels: Sequence[int] | None,
    rel: bool,
    height: int,
    width: int,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Validate points/labels; returns ((N, 2) float32 abs px, (N,) int32) or (None, None)."""
    if points is None and labels is None:
        return None, None
    if points is None:
        raise BadRequest("labels: given without points; send points [[x, y], ...] too")
    if labels is None:
        raise BadRequest("labels: required with points (1 = foreground, 0 = background)")
    try:
        pts = np.asarray(points, np.float64)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"points: must be a list of [x, y] numbers ({e})") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise BadRequest(f"points: must be a non-empty list of [x, y], got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise BadRequest("points: contain NaN or inf")
    if len(labels) != len(pts):
        raise BadRequest(
            f"labels: {len(labels)} labels for {len(pts)} points; give one label per point"
        )
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iub" or not np.isin(lab, (0, 1)).all():
        raise BadRequest(f"labels: must be 0 (background) or 1 (foreground), got {list(labels)}")
    if rel:
        bad = (pts < 0) | (pts > 1)
        if bad.any():
            i = int(np.argwhere(bad.any(axis=1))[0, 0])
            raise BadRequest(
                f"points: point {i} {pts[i].tolist()} is outside [0, 1] (rel=true); "
                "send relative coordinates or set rel=false for pixels"
            )
        pts = pts * (width, height)  # rel -> abs pixels, once, here
        pts = np.minimum(pts, (width - 1e-3, height - 1e-3))
    else:
        bad = (pts < 0) | (pts >= (width, height))
        if bad.any():
            i = int(np.argwhere(bad.any(axis=1))[0, 0])
            raise BadRequest(
                f"points: point {i} {pts[i].tolist()} is outside the {width}x{height} image "
                "(x in [0, width), y in [0, height)); use rel=true for [0, 1] coordinates"
            )
    return pts.astype(np.float32), lab.astype(np.int32)  # (N, 2), (N,)


def check_box(box: Sequence[float], rel: bool, height: int, width: int) -> np.ndarray:
    """Validate an xyxy box; clipped to the image. Returns (4,) float32 abs px."""
    try:
        b = np.asarray(box, np.float64)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"box: must be [x0, y0, x1, y1] numbers ({e})") from None
    if b.shape != (4,) or not np.isfinite(b).all():
        raise BadRequest(f"box: must be 4 finite numbers [x0, y0, x1, y1], got {list(box)}")
    if rel:
        if ((b < 0) | (b > 1)).any():
            raise BadRequest(f"box: {b.tolist()} is outside [0, 1] (rel=true)")
        b = b * (width, height, width, height)
    if b[0] >= b[2] or b[1] >= b[3]:
        raise BadRequest(f"box: {b.tolist()} needs x0 < x1 and y0 < y1 (xyxy order)")
    c = np.clip(b, 0, (width, height, width, height))
    if c[2] - c[0] < 1 or c[3] - c[1] < 1:
        raise BadRequest(f"box: {b.tolist()} lies outside the {width}x{height} image (abs pixels)")
    return c.astype(np.float32)


def check_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.shape != (height, width):
        got = getattr(mask, "shape", type(mask).__name__)
        raise BadRequest(f"mask: expected an ({height}, {width}) array, got {got}")
    if mask.dtype not in (np.bool_, np.uint8):
        raise BadRequest(f"mask: expected dtype bool or uint8 (0/nonzero), got {mask.dtype}")
    m = mask != 0  # a new (H, W) bool array: the received view is read-only and transient
    if not m.any():
        raise BadRequest("mask: is empty (all zero); send a mask with the object's pixels")
    return m
