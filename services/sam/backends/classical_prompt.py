"""Prompt segmentation of the classical backend: boxes, clicks and earlier masks to an object
mask with GrabCut on shading-robust features. OpenCV only.

Usage:
    m = segment_prompt(img, box=np.array([x0, y0, x1, y1], np.float32))          # (H, W) bool
    m = segment_prompt(img, points=np.array([[x, y]], np.float32), labels=np.array([1]))

Images are (H, W, 3) uint8 RGB; boxes xyxy and points (x, y) in absolute pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from services.sam.backends.classical_clicks import grabcut_scaled
from services.sam.backends.classical_geodesic import box_core
from services.sam.backends.classical_ops import (
    NBINS,
    ColourModel,
    bbox,
    disk,
    features,
    largest_components,
    pad_box,
    quantise,
    smooth3,
)

SEED_DIST = 25.0  # feature distance to a click's colour for 'probably object'
GRABCUT_SIDE = 400  # px: GrabCut runs with the crop's longer side at most this
FIT_ENOUGH = 3  # box sides an attempt's mask must reach to be kept without trying others
CROP_PAD, CROP_PAD_MIN = 0.5, 24  # GrabCut context around the prompt region (fraction, px)


def _seed_radius(h: int, w: int) -> int:
    return max(2, min(h, w) // 120)


def _connected_at(mask: np.ndarray, x: int, y: int) -> np.ndarray:
    """The 8-connected component of `mask` that contains (x, y) (empty if (x, y) is not set)."""
    if not mask[y, x]:
        return np.zeros_like(mask)
    _, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return lab == lab[y, x]


def segment_prompt(
    img: np.ndarray,  # (H, W, 3) uint8 RGB
    box: np.ndarray | None = None,  # (4,) xyxy abs px
    points: np.ndarray | None = None,  # (N, 2) abs px
    labels: np.ndarray | None = None,  # (N,) 0/1
    prior: np.ndarray | None = None,  # (H, W) bool: an earlier mask on this frame to refine
    appearance: ColourModel | None = None,  # the object's colours from another keyframe
    exclude: np.ndarray | None = None,  # (H, W) bool: other objects' pixels on this frame
    iters: int = 4,
) -> np.ndarray:
    """GrabCut from a box and/or point seeds (and/or an earlier mask). Returns (H, W) bool.

    Initial labels: inside a box, 'probably object' is (in order of preference) the pixels
    whose colour the object had on another keyframe, else the similar-colour regions around
    the positive clicks, else the box pixels that the background outside the box reaches
    least cheaply (classical_geodesic.box_core), else the whole box. Negative clicks cut
    their similar-colour region.
    """
    h, w = img.shape[:2]
    r = _seed_radius(h, w)
    pts = [] if points is None else [(int(x), int(y), int(lb)) for (x, y), lb in zip(points, labels, strict=True)]  # fmt: skip
    feat = features(img)
    pos = np.zeros((h, w), bool)
    neg = np.zeros((h, w), bool)
    lab = features(img, 1.0, 1.0) if any(lb == 0 for _, _, lb in pts) else None
    for x, y, lb in pts:  # similar-colour region around each click
        if lb == 1 and box is None:
            pos |= _connected_at(_click_colours(feat, [(x, y, 1)], r, SEED_DIST), x, y)
        elif lb == 0:  # full lightness: the user clicked to split things that look alike
            others = [(px, py, 0) for px, py, plb in pts if plb == 1]
            near = _click_colours(lab, [(x, y, 1), *others], r, SEED_DIST)
            neg |= _connected_at(near, x, y)
    gc = np.full((h, w), cv2.GC_BGD, np.uint8)
    if box is not None:
        x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
        x1, y1 = min(w, int(np.ceil(box[2])) + 1), min(h, int(np.ceil(box[3])) + 1)
        inbox = np.zeros((h, w), bool)
        inbox[y0:y1, x0:x1] = True
        seed = veto = None
        if appearance is not None:
            support = appearance.support(quantise(img))
            seed = support & inbox
            seed = seed if seed.sum() >= 0.05 * inbox.sum() else None
            if seed is not None:  # colours the object never showed cannot join it
                veto = ~cv2.dilate(support.astype(np.uint8), disk(2)).astype(bool)
        if seed is None and any(lb == 1 for _, _, lb in pts):
            seed = _click_colours(feat, pts, r, SEED_DIST) & inbox
        region = (x0, y0, x1, y1)
        size = max(x1 - x0, y1 - y0)
        crop = pad_box(region, max(CROP_PAD_MIN, int(CROP_PAD * size)), h, w)
        if seed is None and prior is None:  # what the outside cannot reach is the object
            core = box_core(img, region, crop)
            seed = core if core.sum() >= 0.05 * inbox.sum() else None
        gc[inbox] = cv2.GC_PR_FGD if seed is None else cv2.GC_PR_BGD
        if seed is not None:
            gc[seed] = cv2.GC_PR_FGD
        if prior is not None:
            gc[prior & inbox] = cv2.GC_PR_FGD
    else:
        obj = pos if prior is None else pos | prior
        region = bbox(obj)
        if region is None:
            raise ValueError("add_prompt: points with only background labels need a box or mask")
        pad = max(8, int(0.25 * max(region[2] - region[0], region[3] - region[1])))
        region = pad_box(region, pad, h, w)
        gc[region[1] : region[3], region[0] : region[2]] = cv2.GC_PR_BGD
        gc[obj] = cv2.GC_PR_FGD
    gc[neg & (gc != cv2.GC_BGD)] = cv2.GC_BGD
    fg_seed = np.zeros((h, w), np.uint8)
    for x, y, lb in pts:
        cv2.circle(gc, (x, y), r, cv2.GC_FGD if lb == 1 else cv2.GC_BGD, -1)
        if lb == 1:
            cv2.circle(fg_seed, (x, y), r, 1, -1)
    size = max(region[2] - region[0], region[3] - region[1])
    crop = pad_box(region, max(CROP_PAD_MIN, int(CROP_PAD * size)), h, w)
    if box is None:
        out = _grabcut(feat, gc, crop, iters)
    else:
        out = _box_grabcut(img, feat, gc, crop, region, inbox, iters, veto, exclude, bool(pts))
    if not out.any():  # nothing better: the seeded labels
        out = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    out = cv2.morphologyEx(out.astype(np.uint8), cv2.MORPH_OPEN, disk(1)).astype(bool)
    return largest_components(out, fg_seed.astype(bool) if fg_seed.any() else None)


def _box_grabcut(img, feat, gc, crop, region, inbox, iters, veto, exclude, clicked) -> np.ndarray:
    """GrabCut for a box prompt. A box is tight, so the object should reach its four sides:
    attempts run until one reaches FIT_ENOUGH of them (else the best is kept): shading-robust features, then full
    lightness contrast; first with other objects' pixels starting as background (unless
    clicks say otherwise), then without (those masks may be wrong). If every attempt empties
    the box, a colour-contrast fallback is used."""
    gcs = [gc]
    if exclude is not None and not clicked and (exclude & inbox).any():
        gx = gc.copy()
        gx[exclude & inbox & (gc == cv2.GC_PR_FGD)] = cv2.GC_PR_BGD
        gcs.insert(0, gx)
    lab = None
    best, best_fit = np.zeros_like(inbox), -1
    for g in gcs:
        for space in ("robust", "lab"):
            if space == "lab":
                lab = features(img, 1.0, 1.0) if lab is None else lab
            out = _grabcut(feat if space == "robust" else lab, g.copy(), crop, iters) & inbox
            if veto is not None:
                out &= ~veto
            fit = _box_fit(out, region)
            if fit > best_fit:
                best, best_fit = out, fit
            if fit >= FIT_ENOUGH:
                return best
    if not best.any():  # GrabCut emptied the box
        q = quantise(img)
        best = _contrast(q, inbox, crop, exclude)
        if not best.any() and exclude is not None:
            best = _contrast(q, inbox, crop, None)
    return best


def _click_colours(
    feat: np.ndarray, pts: list[tuple[int, int, int]], r: int, dist: float
) -> np.ndarray:
    """(H, W) bool: pixels whose features are within `dist` of a positive click's and nearer
    to it than to every negative click's."""

    def mean_at(x: int, y: int) -> np.ndarray:
        return feat[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1].reshape(-1, 3).mean(0)

    f = feat.astype(np.float32)
    d_pos = np.full(feat.shape[:2], np.inf, np.float32)
    d_neg = np.full(feat.shape[:2], np.inf, np.float32)
    for x, y, lb in pts:
        d = np.linalg.norm(f - mean_at(x, y), axis=-1)
        if lb == 1:
            np.minimum(d_pos, d, out=d_pos)
        else:
            np.minimum(d_neg, d, out=d_neg)
    return (d_pos < dist) & (d_pos < d_neg)


def _contrast(
    q: np.ndarray, inbox: np.ndarray, crop: tuple[int, int, int, int], exclude: np.ndarray | None
) -> np.ndarray:
    """Box pixels whose colour is at least 3x denser in the box than in the ring around it
    (other objects' pixels left out of the ring). (H, W) bool."""
    x0, y0, x1, y1 = crop
    ring = np.zeros_like(inbox)
    ring[y0:y1, x0:x1] = True
    ring &= ~inbox
    if exclude is not None:
        ring &= ~exclude
    d_in = smooth3(np.bincount(q[inbox], minlength=NBINS) / max(1, inbox.sum()))
    d_ring = smooth3(np.bincount(q[ring], minlength=NBINS) / max(1, ring.sum()))
    out = inbox & (d_in > 3 * d_ring)[q]
    if exclude is not None:
        out &= ~exclude
    out = cv2.morphologyEx(out.astype(np.uint8), cv2.MORPH_OPEN, disk(1)).astype(bool)
    return largest_components(out)


def _box_fit(mask: np.ndarray, box: tuple[int, int, int, int]) -> int:
    """How many sides of a (tight) box the mask reaches, within 15% of the box size."""
    b = bbox(mask)
    if b is None:
        return 0
    tx = max(2, int(0.15 * (box[2] - box[0])))
    ty = max(2, int(0.15 * (box[3] - box[1])))
    full = (b[0] - box[0] <= 1) + (b[1] - box[1] <= 1) + (box[2] - b[2] <= 1) + (box[3] - b[3] <= 1)
    if full == 4:  # the whole box: GrabCut found no object inside
        return 2
    return (
        int(b[0] - box[0] <= tx)
        + int(b[1] - box[1] <= ty)
        + int(box[2] - b[2] <= tx)
        + int(box[3] - b[3] <= ty)
    )


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _grabcut(
    img: np.ndarray, gc: np.ndarray, crop: tuple[int, int, int, int], iters: int
) -> np.ndarray:
    """Run GrabCut (mask init) on the crop, at a working resolution of at most
    GRABCUT_SIDE px (classical_clicks.grabcut_scaled); pixels outside the crop are
    background."""
    return grabcut_scaled(img, gc, crop, iters, GRABCUT_SIDE)
