"""Video object segmentation metrics as the DAVIS toolkit computes them, and the click
simulation of interactive segmentation benchmarks. numpy + OpenCV only.

Usage:
    from bench.vos_metrics import region_j, boundary_f, sequence_scores, next_clicks
    j = region_j(pred, gt)                 # (H, W) bool each -> float
    f = boundary_f(pred, gt)               # boundary F, tolerance 0.008 of the image diagonal
    s = sequence_scores(preds, gts)        # {"J", "F", "JF", "J_per_frame", "F_per_frame"}
    clicks = next_clicks(pred, gt)         # [(x, y, 1), (x, y, 0)] at the error regions' centres

Definitions (davis2017-evaluation, davis/metrics.py):
- J: |pred & gt| / |pred | gt|; 1 when both are empty.
- F: boundaries are the pixels whose right, lower or lower-right neighbour differs
  (_seg2bmap); each boundary is dilated by a disk of radius ceil(0.008 * diagonal) pixels
  (8 px at 854x480); precision = fraction of predicted boundary pixels within that
  tolerance of the GT boundary, recall the reverse; F = 2PR / (P + R). An empty predicted
  boundary with a non-empty GT one gives P = 1, R = 0 (F = 0), both empty F = 1.
- A sequence's J and F are means over frames 1 .. T-2 (the toolkit leaves out the first
  frame, which is given, and the last one).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

BOUND_TH = 0.008  # DAVIS boundary tolerance, fraction of the image diagonal


def region_j(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region similarity (IoU) of two (H, W) bool masks; 1.0 when both are empty."""
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) bool boundary map, as DAVIS's _seg2bmap (same size)."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk: (2r+1, 2r+1) uint8, 1 where x^2 + y^2 <= r^2."""
    r = int(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return ((x * x + y * y) <= r * r).astype(np.uint8)


def bound_pixels(shape: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Tolerance in pixels: bound_th itself when >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure of two (H, W) bool masks (DAVIS's f_measure, no void pixels)."""
    fg_b = seg2bmap(pred)
    gt_b = seg2bmap(gt)
    n_fg = int(np.count_nonzero(fg_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0 or n_gt == 0:
        return 0.0  # P = 1, R = 0 (or the reverse)
    k = disk(bound_pixels(pred.shape, bound_th))
    fg_dil = cv2.dilate(fg_b.astype(np.uint8), k).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), k).astype(bool)
    precision = np.count_nonzero(fg_b & gt_dil) / n_fg
    recall = np.count_nonzero(gt_b & fg_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def sequence_scores(preds: np.ndarray, gts: np.ndarray) -> dict:
    """(T, H, W) bool predictions and ground truth -> per-frame J and F (every frame) and the
    sequence means over frames 1 .. T-2 (all frames when T < 3)."""
    if preds.shape != gts.shape:
        raise ValueError(f"preds: shape {preds.shape} differs from the ground truth's {gts.shape}")
    jf = [region_j(p, g) for p, g in zip(preds, gts, strict=True)]
    ff = [boundary_f(p, g) for p, g in zip(preds, gts, strict=True)]
    sel = slice(1, -1) if len(jf) >= 3 else slice(None)
    j = float(np.mean(jf[sel]))
    f = float(np.mean(ff[sel]))
    return {"J": j, "F": f, "JF": (j + f) / 2, "J_per_frame": jf, "F_per_frame": ff}


def region_centre(region: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of the largest 4-connected component of an (H, W) bool region, at the maximum
    of its distance transform (the point farthest from its border, ties: first in raster
    order); None when the region is empty. The image border counts as border."""
    if not region.any():
        return None
    n, lab, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=4)
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = np.pad(lab == big, 1).astype(np.uint8)
    dist = cv2.distanceTransform(comp, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def largest_area(region: np.ndarray) -> int:
    if not region.any():
        return 0
    n, _, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=4)
    return int(stats[1:, cv2.CC_STAT_AREA].max())


def next_clicks(pred: np.ndarray, gt: np.ndarray, min_area: int = 1) -> list[tuple[int, int, int]]:
    """The simulated annotator's clicks on one frame: a positive click at the centre of the
    largest missed region (gt & ~pred) and a negative one at the centre of the largest wrong
    region (pred & ~gt), each only where that region has >= min_area pixels.
    Returns [(x, y, label), ...] with label 1 (object) or 0 (background)."""
    out = []
    for region, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        if largest_area(region) >= min_area:
            c = region_centre(region)
            if c is not None:
                out.append((c[0], c[1], label))
    return out
