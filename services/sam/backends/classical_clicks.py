"""Corrections of an existing mask by clicks (classical backend), and GrabCut at a bounded
working resolution. OpenCV only, deterministic.

Usage:
    m = refine_with_clicks(img, prior, points=np.array([[x, y]]), labels=np.array([1]))
    if is_lost(prior, points, labels, ref): m = redetect(feat, ref, points, labels, prior)
    out = grabcut_scaled(feat, gc, crop, iters=3, max_side=360)   # (H, W) bool

A click corrects the mask NEAR it, and only in its own direction: a positive click may only
add pixels, a negative one only remove them. A click's reach is CLICK_REACH x its distance to
the earlier mask's boundary (an annotator clicks at the centre of an error region, so that
distance tells the region's size: a click in a sliver of background between two legs edits a
few pixels, one in the middle of a missed half edits that half), at least REACH_MIN and at
most a fraction of the object's size. Within a positive click's reach, pixels outside the
earlier mask may join it; within a negative click's reach, pixels of the mask may leave it;
a thin band along the earlier boundary may move either way; everything else keeps the
earlier mask. GrabCut decides, its colour models learnt from the whole surrounding object
and background; the clicked pixels themselves are sure object / sure background. So one
click removes a wrong blob or adds a missed part without disturbing the rest of the mask
(before, one reach for every click re-decided up to 160 px around both, and a negative click
in a small wrong region could wipe half of a correct mask).

When the mask lost the object (no mask, or a positive click far from it: is_lost), a local
edit cannot help: redetect() finds the object again around the click, from the object's
shape on its nearest keyframe moved onto the click, and the wrong mask is dropped.
"""

from __future__ import annotations

import cv2
import numpy as np

from services.sam.backends.classical_ops import bbox, largest_components, pad_box

REACH_FRAC = 0.35  # reach of a click, fraction of the object's size (bbox side)
REACH_MIN, REACH_MAX = 12, 160  # px
EDGE_BAND = 2  # px each side of the earlier boundary that GrabCut may also move
CLICK_REACH = 4.0  # a click edits up to this x its distance to the mask boundary (the annotator
# clicks at the centre of an error region: that distance tells the region's size)


def grabcut_scaled(
    feat: np.ndarray, gc: np.ndarray, crop: tuple[int, int, int, int], iters: int,
    max_side: int = 360,
) -> np.ndarray:  # fmt: skip
    """GrabCut (mask init) on `crop` of the (H, W, 3) uint8 image `feat`, run at a scale where
    the crop's longer side is at most max_side px; sure labels of `gc` stay as given at full
    resolution, the undecided ones take the upsampled result. Returns (H, W) bool."""
    x0, y0, x1, y1 = crop
    sub = np.ascontiguousarray(gc[y0:y1, x0:x1])
    part = np.ascontiguousarray(feat[y0:y1, x0:x1])
    ch, cw = sub.shape
    s = min(1.0, max_side / max(ch, cw))
    out = np.zeros(gc.shape, bool)
    if s < 1.0:
        size = (max(8, round(cw * s)), max(8, round(ch * s)))
        small = cv2.resize(sub, size, interpolation=cv2.INTER_NEAREST)
        img = cv2.resize(part, size, interpolation=cv2.INTER_AREA)
    else:
        small, img = sub.copy(), part
    fg_any = np.isin(small, (cv2.GC_FGD, cv2.GC_PR_FGD)).any()
    bg_any = np.isin(small, (cv2.GC_BGD, cv2.GC_PR_BGD)).any()
    if fg_any and bg_any:
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's k-means init draws from OpenCV's (thread) RNG
        try:
            cv2.grabCut(img, small, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
        except cv2.error:  # too few samples for a GMM: keep the seeded labels
            pass
    res = ((small == cv2.GC_FGD) | (small == cv2.GC_PR_FGD)).astype(np.float32)
    if s < 1.0:
        res = cv2.resize(res, (cw, ch), interpolation=cv2.INTER_LINEAR)
    dec = res > 0.5
    dec[sub == cv2.GC_FGD] = True
    dec[sub == cv2.GC_BGD] = False
    out[y0:y1, x0:x1] = dec
    return out


def refine_with_clicks(
    feat: np.ndarray,  # (H, W, 3) uint8 features of the frame
    prior: np.ndarray,  # (H, W) bool, the earlier mask on this frame
    points: np.ndarray,  # (N, 2) abs px
    labels: np.ndarray,  # (N,) 0/1
    seed_radius: int = 4,
    iters: int = 3,
    ref_size: int = 0,  # px: the object's size on its nearest keyframe (0: unknown)
) -> np.ndarray:
    """Correct `prior` near the clicks (module docstring); a click's reach is CLICK_REACH x
    its distance to the prior's boundary, capped by a fraction of the larger of the prior's
    and the keyframe object's size (a mask that missed half of the object understates it).
    Returns (H, W) bool."""
    h, w = prior.shape
    b = bbox(prior)
    pos = [(int(x), int(y)) for (x, y), lb in zip(points, labels, strict=True) if lb == 1]
    if b is None:
        b = (min(p[0] for p in pos), min(p[1] for p in pos),
             max(p[0] for p in pos) + 1, max(p[1] for p in pos) + 1) if pos else None  # fmt: skip
        if b is None:
            raise ValueError("add_prompt: only background clicks and no mask to correct")
    size = max(b[2] - b[0], b[3] - b[1], ref_size)
    reach = int(np.clip(REACH_FRAC * size, REACH_MIN, REACH_MAX))
    pm = prior.astype(np.uint8)
    edge = cv2.dilate(pm, np.ones((3, 3), np.uint8), iterations=EDGE_BAND) != cv2.erode(
        pm, np.ones((3, 3), np.uint8), iterations=EDGE_BAND
    )
    near_pos = np.zeros((h, w), np.uint8)
    near_neg = np.zeros((h, w), np.uint8)
    d_out = d_in = None  # px to the prior / to its boundary, computed once a click needs it
    for (x, y), lb in zip(points.astype(int), labels, strict=True):
        if not pm.any():
            d = reach
        elif lb == 1:
            d_out = cv2.distanceTransform(1 - pm, cv2.DIST_L2, 5) if d_out is None else d_out
            d = float(d_out[y, x])
        else:
            if d_in is None:
                d_in = cv2.distanceTransform(np.pad(pm, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
            d = float(d_in[y, x])
        r = int(np.clip(CLICK_REACH * d, REACH_MIN, reach))
        cv2.circle(near_pos if lb == 1 else near_neg, (int(x), int(y)), r, 1, -1)
    near_pos, near_neg = near_pos.astype(bool), near_neg.astype(bool)
    near = near_pos | near_neg
    gc = np.where(prior, cv2.GC_FGD, cv2.GC_BGD).astype(np.uint8)
    # a positive click only adds near it, a negative one only removes: the rest of the mask,
    # which the annotator did not mark as wrong, stays
    gc[edge & prior] = cv2.GC_PR_FGD
    gc[edge & ~prior] = cv2.GC_PR_BGD
    gc[near_pos & ~prior] = cv2.GC_PR_BGD
    gc[near_neg & prior] = cv2.GC_PR_FGD
    for (x, y), lb in zip(points.astype(int), labels, strict=True):
        cv2.circle(gc, (int(x), int(y)), seed_radius, cv2.GC_FGD if lb == 1 else cv2.GC_BGD, -1)
    region = b
    for x, y in points.astype(int):
        region = (
            min(region[0], x),
            min(region[1], y),
            max(region[2], x + 1),
            max(region[3], y + 1),
        )
    crop = pad_box(region, reach + 16, h, w)
    out = grabcut_scaled(feat, gc, crop, iters)
    keep = np.zeros((h, w), bool)
    for x, y in pos:
        keep[y, x] = True
    # kept: the parts at a positive click and those holding the prior's pixels beyond the
    # clicks' reach (when the reach covers the whole prior: its pixels anywhere, so a far click
    # that opens the whole object to GrabCut does not leave only what grew around the click)
    anchor = prior & ~near & out
    anchor = anchor if anchor.any() else prior & out
    return largest_components(out, keep | anchor) if out.any() else out


LOST_FRAC = 0.5  # a positive click farther than this x the reference size from the mask: lost
REDETECT_AREA = 4.0  # a found object's area is within this factor of the keyframe's
REDETECT_PAD = 0.3  # context around the moved reference shape, fraction of its size


def deepest_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of a mask's pixel farthest from its boundary (ties: first in raster order)."""
    d = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    return int(x), int(y)


def is_lost(prior: np.ndarray, points: np.ndarray, labels: np.ndarray, ref: np.ndarray) -> bool:
    """Whether a correction's first positive click says the object is somewhere else than the
    earlier mask: no mask, or the click is far (LOST_FRAC of the reference shape's size) from
    it. `ref` is the object's mask on its nearest keyframe."""
    pos = [(int(x), int(y)) for (x, y), lb in zip(points, labels, strict=True) if lb == 1]
    b = bbox(ref)
    if not pos or b is None:
        return False
    if not prior.any():
        return True
    gap = cv2.distanceTransform((~prior).astype(np.uint8), cv2.DIST_L2, 5)
    x, y = pos[0]
    bp = bbox(prior)  # the object may have grown since the keyframe: the larger of the two
    size = max(b[2] - b[0], b[3] - b[1], bp[2] - bp[0], bp[3] - bp[1])
    return float(gap[y, x]) > LOST_FRAC * size


def redetect(
    feat: np.ndarray,  # (H, W, 3) uint8 features of the frame
    ref: np.ndarray,  # (H, W) bool: the object's mask on its nearest keyframe
    points: np.ndarray,  # (N, 2) abs px
    labels: np.ndarray,  # (N,) 0/1, at least one positive
    prior: np.ndarray | None = None,  # (H, W) bool: the earlier (wrong) mask on this frame
    seed_radius: int = 4,
    iters: int = 4,
) -> np.ndarray | None:
    """Find an object the mask lost, from a positive click: the reference shape (the object on
    its nearest keyframe) moved so that its deepest point lies on the click is the probable
    object, the context around it probable background, the earlier mask too (it tracked
    something else); GrabCut decides, the component at the positive click(s) is kept.
    Returns (H, W) bool, or None when the result's area is not within REDETECT_AREA times
    the reference's either way (not the object: the caller corrects locally instead)."""
    h, w = ref.shape
    pos = [(int(x), int(y)) for (x, y), lb in zip(points, labels, strict=True) if lb == 1]
    cx, cy = deepest_point(ref)
    shift = np.float32([[1, 0, pos[0][0] - cx], [0, 1, pos[0][1] - cy]])
    moved = cv2.warpAffine(ref.astype(np.uint8), shift, (w, h), flags=cv2.INTER_NEAREST) > 0
    b = bbox(moved) or (pos[0][0], pos[0][1], pos[0][0] + 1, pos[0][1] + 1)
    size = max(b[2] - b[0], b[3] - b[1])
    region = pad_box(b, max(REACH_MIN, int(REDETECT_PAD * size)), h, w)
    gc = np.full((h, w), cv2.GC_BGD, np.uint8)
    gc[region[1] : region[3], region[0] : region[2]] = cv2.GC_PR_BGD
    gc[moved] = cv2.GC_PR_FGD
    if prior is not None:
        gc[prior & (gc == cv2.GC_PR_FGD)] = cv2.GC_PR_BGD
    for (x, y), lb in zip(points.astype(int), labels, strict=True):
        cv2.circle(gc, (int(x), int(y)), seed_radius, cv2.GC_FGD if lb == 1 else cv2.GC_BGD, -1)
    out = grabcut_scaled(feat, gc, region, iters)
    keep = np.zeros((h, w), bool)
    for x, y in pos:
        keep[y, x] = True
    out = largest_components(out, keep) if out.any() else out
    ratio = np.count_nonzero(out) / max(1, np.count_nonzero(ref))
    return out if 1 / REDETECT_AREA <= ratio <= REDETECT_AREA else None
