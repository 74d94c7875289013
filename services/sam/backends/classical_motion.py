"""Motion evidence of the classical tracker (classical_track.py): the object's and the
background's motions fitted to the dense flow around the warped mask, and how much each
pixel's flow looks like one or the other. numpy + OpenCV only.

Usage:
    fit = motion_fits(mx, my, (x0, y0), sd, band, grow)       # None: too few pixels
    ev = motion_evidence(mx, my, (x0, y0), sd, ys, xs, fit)   # (n,) in [-1, 1]
    if fit and apart(fit[2:], core, 2.0): moved = warp_affine(mask, fit[2])

Flow maps (mx, my) give for each pixel of this frame its position in the previous one
(classical_ops.Flow); fits are (3, 2) affine motions, flow (u, v) = (x, y, 1) @ fit in ROI
coordinates.
"""

from __future__ import annotations

import cv2
import numpy as np


def beyond(mx: np.ndarray, my: np.ndarray, w: int, h: int, margin: float) -> np.ndarray:
    """Pixels whose source position (mx, my) lies more than margin px outside a w x h frame."""
    return (mx < -margin) | (my < -margin) | (mx > w - 1 + margin) | (my > h - 1 + margin)


def warp_affine(mask: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """(h, w) bool mask moved by the motion `fit` (3, 2): pixel (x, y) of the result takes
    the mask at (x, y) + (x, y, 1) @ fit (this frame -> previous frame, like the flow)."""
    m = np.array([[1 + fit[0, 0], fit[1, 0], fit[2, 0]],
                  [fit[0, 1], 1 + fit[1, 1], fit[2, 1]]], np.float64)  # fmt: skip
    h, w = mask.shape
    out = cv2.warpAffine(mask.astype(np.uint8), m, (w, h),
                         flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)  # fmt: skip
    return out.astype(bool)


def apart(fit: list, where: np.ndarray, sep: float) -> bool:
    """Whether the object's and the background's motions (fit[0], fit[1]) differ by more
    than sep px at the centre of `where` (ROI bool)."""
    ys, xs = np.nonzero(where)
    if len(ys) == 0:
        return False
    c = np.array([xs.mean(), ys.mean(), 1.0])
    return float(np.hypot(*(c @ fit[0] - c @ fit[1]))) > sep


def motion_fits(mx, my, origin, sd, band, grow) -> tuple | None:
    """The object's and the background's motions on an ROI (flow maps mx, my of the ROI at
    `origin`, signed distance sd to the warped boundary), from the flow deep inside the
    warped mask and on a ring outside the band: (object affine, background affine, object
    median translation, background median translation), (3, 2) each, flow (u, v) = (x, y,
    1) @ fit in ROI coordinates; None when either region has under 20 pixels."""
    fits = []
    for sel in (sd > min(band, 4), (sd < -grow - 2) & (sd >= -grow - 2 - max(8, band))):
        ys, xs = np.nonzero(sel)
        if len(ys) < 20:
            return None
        step = max(1, len(ys) // 2000)
        ys, xs = ys[::step], xs[::step]
        u = mx[ys, xs] - (xs + origin[0]).astype(np.float32)
        v = my[ys, xs] - (ys + origin[1]).astype(np.float32)
        a = np.stack([xs, ys, np.ones_like(xs)], 1).astype(np.float64)
        f = np.stack([u, v], 1).astype(np.float64)
        coef, *_ = np.linalg.lstsq(a, f, rcond=None)
        fits.append(coef)
        shift = np.zeros((3, 2))
        shift[2] = np.median(f, 0)  # the median motion, a translation
        fits.append(shift)
    return fits[0], fits[2], fits[1], fits[3]


def motion_evidence(mx, my, origin, sd, ys, xs, fits) -> np.ndarray:
    """(n,) motion evidence for ROI pixels (ys, xs) given motion_fits: +1 where the flow
    there matches the object's motion, -1 where it matches the background's, scaled down to
    0 where the two motions are less than 2 px apart (nothing to tell) and within 4 px of
    the warped boundary (the flow blurs the two there)."""
    if fits is None or len(ys) == 0:
        return np.zeros(len(ys), np.float32)
    x, y = xs.astype(np.float32), ys.astype(np.float32)
    u = mx[ys, xs] - (x + origin[0])
    v = my[ys, xs] - (y + origin[1])
    (ao, ab) = (f.astype(np.float32) for f in fits[:2])
    d = ao - ab  # the difference of the two motions, affine too
    su = d[0, 0] * x + d[1, 0] * y + d[2, 0]
    sv = d[0, 1] * x + d[1, 1] * y + d[2, 1]
    eu = u - (ab[0, 0] * x + ab[1, 0] * y + ab[2, 0])  # flow minus the background's
    ev = v - (ab[0, 1] * x + ab[1, 1] * y + ab[2, 1])
    sep2 = su * su + sv * sv
    # (|f - b|^2 - |f - o|^2) / |o - b|^2 with f - o = e - s
    r = (2 * (eu * su + ev * sv) - sep2) / np.maximum(sep2, 1e-6)
    conf = np.clip((np.sqrt(sep2) - 1.0) / 2.0, 0.0, 1.0)
    conf *= np.clip((np.abs(sd[ys, xs]) - 1.0) / 3.0, 0.0, 1.0)
    return np.clip(r, -1.0, 1.0) * conf
