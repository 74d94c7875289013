"""Geodesic distances on images (numpy + OpenCV, deterministic) and the box prompt's
background-connectivity prior of the classical backend.

Usage:
    d = geodesic_distance(seeds, feat, tau=3.0)        # (H, W) float32, 0 on the seeds
    core = box_core(img, box, crop)                     # (H, W) bool: probable object in the box

geodesic_distance: the cheapest 4-connected path from any seed pixel, a step costing the
feature difference above `tau` (texture below it is free) plus `eps`; computed exactly per
row/column by min-plus prefix scans (d[x] = S[x] + cummin(d - S)), rows and columns
alternated `iters` times (paths with more turns than that are over-estimated).

box_core: a tight box's object is what the background outside the box cannot reach cheaply:
background inside the box (sky, wall, water between the legs) is connected to the same
background outside it without crossing an edge. The box pixels farthest (geodesically) from
the outside, all but the `bg_frac` nearest, are the probable object that GrabCut starts from.
"""

from __future__ import annotations

import cv2
import numpy as np

GEO_SIDE = 200  # px: the prior is computed with the crop's longer side at most this
GEO_TAU = 3.0  # feature difference a step may have for free (texture)
BG_FRAC = 0.25  # fraction of the box nearest to the outside that starts as background


def _scan(d: np.ndarray, c: np.ndarray) -> np.ndarray:
    """One forward and one backward min-plus scan along axis 1: d[x] = min(d[x], d[x-1] +
    c[x]) then d[x] = min(d[x], d[x+1] + c[x+1]); c[x] is the cost of the step into x."""
    s = np.cumsum(c, axis=1)
    d = np.minimum(d, np.minimum.accumulate(d - s, axis=1) + s)
    back = np.zeros_like(c)
    back[:, :-1] = c[:, 1:]
    s = np.cumsum(back[:, ::-1], axis=1)[:, ::-1]
    return np.minimum(d, np.minimum.accumulate((d - s)[:, ::-1], axis=1)[:, ::-1] + s)


def geodesic_distance(
    seeds: np.ndarray, feat: np.ndarray, tau: float = GEO_TAU, eps: float = 0.5, iters: int = 2
) -> np.ndarray:
    """(H, W) float32 geodesic distance from the (H, W) bool `seeds` over the (H, W, C)
    features (module docstring); 1e9 where no seed is given at all."""
    f = feat.astype(np.float32)
    ch = np.zeros(f.shape[:2], np.float32)
    cv = np.zeros(f.shape[:2], np.float32)
    ch[:, 1:] = np.linalg.norm(f[:, 1:] - f[:, :-1], axis=-1)
    cv[1:, :] = np.linalg.norm(f[1:] - f[:-1], axis=-1)
    ch = np.maximum(ch - tau, 0) + eps
    cv = np.maximum(cv - tau, 0) + eps
    d = np.where(seeds, 0.0, 1e9).astype(np.float32)
    for _ in range(iters):
        d = _scan(d, ch)
        d = _scan(d.T, cv.T).T
    return d


def box_core(
    img: np.ndarray,  # (H, W, 3) uint8 RGB
    box: tuple[int, int, int, int],  # x0, y0, x1, y1 (exclusive) of the tight box
    crop: tuple[int, int, int, int],  # the context around it (outside the box: the seeds)
    bg_frac: float = BG_FRAC,
    side: int = GEO_SIDE,
) -> np.ndarray:
    """(H, W) bool: the box pixels the outside reaches least cheaply (module docstring);
    empty when the crop has no pixels outside the box. Distances in CIE Lab."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = box
    cx0, cy0, cx1, cy1 = crop
    out = np.zeros((h, w), bool)
    sub = img[cy0:cy1, cx0:cx1]
    s = min(1.0, side / max(sub.shape[:2]))
    small = cv2.resize(sub, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else sub
    small = cv2.cvtColor(cv2.GaussianBlur(small, (3, 3), 0), cv2.COLOR_RGB2Lab)
    inbox = np.zeros(small.shape[:2], bool)
    b = np.round(np.array([x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0]) * s).astype(int)
    inbox[b[1] : b[3], b[0] : b[2]] = True
    if inbox.all() or not inbox.any():
        return out
    d = geodesic_distance(~inbox, small)
    core = inbox & (d > np.quantile(d[inbox], bg_frac))
    size = (cx1 - cx0, cy1 - cy0)
    out[cy0:cy1, cx0:cx1] = cv2.resize(core.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0  # fmt: skip
    out[:y0] = out[y1:] = False
    out[:, :x0] = out[:, x1:] = False
    return out
