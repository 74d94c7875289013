"""Image operations of the classical backend's tracker: colour quantisation, dense optical
flow, colour models, mask warping with refinement, and overlap resolution between objects.
Pure functions on numpy arrays, OpenCV only (prompt segmentation: classical_prompt.py).

Usage:
    flow = Flow(scale=0.5); mx, my = flow.maps(gray_t, gray_prev)   # pixel t <- pixel prev
    model = ColourModel.learn(quantise(img_prev), mask_prev)
    tracked = track_step(mask_prev, mx, my, quantise(img_t), model)  # .mask (H, W) bool

Images are (H, W, 3) uint8 RGB; masks (H, W) bool; `q` is the quantised colour index image
(H, W) uint16 from quantise(), computed once per frame and shared by all objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BITS = 4  # colour histogram: 2**BITS bins per channel
NBINS = 1 << (3 * BITS)
L_WEIGHT = 0.25  # shading-robust features: lightness weight
AB_GAIN = 2.0  # shading-robust features: chroma gain


def quantise(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint16 colour bin index."""
    q = (img >> (8 - BITS)).astype(np.uint16)
    return (q[..., 0] << (2 * BITS)) | (q[..., 1] << BITS) | q[..., 2]


def gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)  # (H, W) uint8


def lightness(g: np.ndarray) -> np.ndarray:
    """(H, W) float32 in [0, 1] from gray() (H, W) uint8: the local tracker's lightness."""
    return g.astype(np.float32) / 255.0


def features(img: np.ndarray, l_weight: float = L_WEIGHT, ab_gain: float = AB_GAIN) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) uint8 Lab with lightness down-weighted and chroma
    amplified: shading and cast shadows move pixels less than a change of material does."""
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2Lab)
    return cv2.LUT(lab, _feature_lut(float(l_weight), float(ab_gain)))


_LUTS: dict[tuple[float, float], np.ndarray] = {}


def _feature_lut(l_weight: float, ab_gain: float) -> np.ndarray:
    """(1, 256, 3) uint8: the per-channel map of features() (a table: no float image)."""
    key = (l_weight, ab_gain)
    if key not in _LUTS:
        v = np.arange(256, dtype=np.float32)
        chans = [v * l_weight, (v - 128.0) * ab_gain + 128.0, (v - 128.0) * ab_gain + 128.0]
        _LUTS[key] = np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)[None]
    return _LUTS[key]


def disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive-exclusive (x0, y0, x1, y1) of a mask's pixels, or None when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if len(ys) == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def pad_box(b: tuple[int, int, int, int], pad: int, h: int, w: int) -> tuple[int, int, int, int]:
    return max(0, b[0] - pad), max(0, b[1] - pad), min(w, b[2] + pad), min(h, b[3] + pad)


def largest_components(mask: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Keep the components touching `keep` (seed pixels), else the largest one."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    if keep is not None and keep.any():
        ids = np.unique(lab[keep & mask])
        ids = ids[ids > 0]
        if len(ids):
            return np.isin(lab, ids)
    return lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def fill_holes(mask: np.ndarray, frac: float) -> np.ndarray:
    """Fill background components enclosed by the mask smaller than frac of its area."""
    if frac <= 0:  # nothing is smaller than 0
        return mask
    inv = (~mask).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    if n <= 2:
        return mask
    h, w = mask.shape
    area = max(1, int(mask.sum()))
    x, y, bw, bh, a = (stats[:, i] for i in range(5))
    inner = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h) & (a < frac * area)
    inner[0] = False
    return mask | inner[lab]


def keep_touching(mask: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Components of mask that overlap core (else the largest)."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    keep = np.bincount(lab[core & mask], minlength=n) > 0  # a table: no sort of the pixels
    keep[0] = False
    if not keep.any():
        return lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return keep[lab]


def drop_strays(mask: np.ndarray, area_frac: float, near: float) -> np.ndarray:
    """Drop components smaller than area_frac x the largest one that lie more than `near` px
    from it (a leak that split off the object; pieces cut by an occluder stay near it)."""
    if area_frac <= 0:
        return mask
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    area = stats[:, cv2.CC_STAT_AREA]
    main = 1 + int(np.argmax(area[1:]))
    d = cv2.distanceTransform((lab != main).astype(np.uint8), cv2.DIST_L2, 3)
    close = np.bincount(lab[d <= near], minlength=n) > 0  # some pixel within `near` of main
    keep = (area >= area_frac * area[main]) | close
    keep[0] = False
    return keep[lab]


def flow_roi(masks: list[np.ndarray], margin: float | None) -> tuple[int, int, int, int] | None:
    """The region the flow of a frame pair is computed on: the masks' joint box grown by
    max(32, margin * its larger side) px (objects move; the flow needs context), or None (the
    whole frame) when margin is None or no mask has pixels."""
    boxes = [b for b in (bbox(m) for m in masks) if b is not None]
    if margin is None or not boxes:
        return None
    h, w = masks[0].shape
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    pad = int(max(32, margin * max(x1 - x0, y1 - y0)))
    return pad_box((x0, y0, x1, y1), pad, h, w)


class Flow:
    """Dense optical flow (OpenCV DIS) at a reduced scale, as remap maps at full scale."""

    def __init__(self, scale: float = 0.5, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM):
        self.scale = scale
        self.dis = cv2.DISOpticalFlow_create(preset)
        self._grid: tuple[np.ndarray, np.ndarray] | None = None

    def maps(
        self, dst: np.ndarray, src: np.ndarray, roi: tuple[int, int, int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each pixel of gray frame `dst` its position in gray frame `src`: ((H, W), (H, W))
        float32, ready for cv2.remap(mask_src, mx, my) -> mask on dst. With `roi` (x0, y0, x1,
        y1) the flow is computed on that crop only (zero flow outside it): the cost follows
        the objects' size, not the frame's."""
        h, w = dst.shape
        x0, y0, x1, y1 = roi if roi is not None else (0, 0, w, h)
        a, b = dst[y0:y1, x0:x1], src[y0:y1, x0:x1]
        ch, cw = a.shape
        if self.scale != 1.0:
            size = (max(8, int(cw * self.scale)), max(8, int(ch * self.scale)))
            a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
            b = cv2.resize(b, size, interpolation=cv2.INTER_AREA)
        else:
            a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
        f = self.dis.calc(a, b, None)
        if self.scale != 1.0:
            sh, sw = f.shape[:2]
            f = cv2.resize(f, (cw, ch), interpolation=cv2.INTER_LINEAR)
            f[..., 0] *= cw / sw
            f[..., 1] *= ch / sh
        if self._grid is None or self._grid[0].shape != (h, w):
            gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            self._grid = gx, gy
        mx, my = self._grid[0].copy(), self._grid[1].copy()
        mx[y0:y1, x0:x1] += f[..., 0]
        my[y0:y1, x0:x1] += f[..., 1]
        return mx, my


@dataclass
class ColourModel:
    """Foreground/background colour histograms; `lut[bin]` = P(foreground | colour)."""

    fg: np.ndarray  # (NBINS,) float32, normalised
    bg: np.ndarray  # (NBINS,) float32, normalised
    lut: np.ndarray  # (NBINS,) float32 posterior

    @staticmethod
    def _hists(q: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = mask.shape
        b = bbox(mask)
        if b is None:
            raise ValueError("mask: empty, cannot learn a colour model")
        size = max(b[2] - b[0], b[3] - b[1])
        r = max(6, min(40, size // 4))
        x0, y0, x1, y1 = pad_box(b, r + 2, h, w)
        m = mask[y0:y1, x0:x1].astype(np.uint8)
        qq = q[y0:y1, x0:x1]
        inner = cv2.erode(m, disk(1)).astype(bool)
        ring = cv2.dilate(m, disk(r)).astype(bool) & ~cv2.dilate(m, disk(2)).astype(bool)
        fg = np.bincount(qq[inner if inner.any() else m.astype(bool)], minlength=NBINS)
        bg = np.bincount(qq[ring], minlength=NBINS)
        return fg.astype(np.float32), bg.astype(np.float32)

    @classmethod
    def learn(cls, q: np.ndarray, mask: np.ndarray) -> ColourModel:
        fg, bg = cls._hists(q, mask)
        return cls._make(fg / max(fg.sum(), 1.0), bg / max(bg.sum(), 1.0))

    @classmethod
    def _make(cls, fg: np.ndarray, bg: np.ndarray) -> ColourModel:
        eps = 1e-4
        lut = (fg + eps) / (fg + bg + 2 * eps)
        return cls(fg, bg, lut.astype(np.float32))

    def support(self, q: np.ndarray) -> np.ndarray:
        """(H, W) bool: colours this object showed (histograms smoothed over neighbour bins)."""
        fg, bg = smooth3(self.fg), smooth3(self.bg)
        ok = (fg > 1e-4) & (fg > 0.5 * bg)
        return ok[q]

    def update(self, q: np.ndarray, mask: np.ndarray, rate: float) -> ColourModel:
        """Blend in the histograms of a new frame (slow adaptation to lighting/pose)."""
        if rate <= 0 or not mask.any():
            return self
        fg, bg = self._hists(q, mask)
        fg = fg / max(fg.sum(), 1.0)
        bg = bg / max(bg.sum(), 1.0)
        return self._make((1 - rate) * self.fg + rate * fg, (1 - rate) * self.bg + rate * bg)


def smooth3(hist: np.ndarray) -> np.ndarray:
    """Blur an (NBINS,) colour histogram with a [1, 2, 1] kernel along each colour axis."""
    n = 1 << BITS
    x = hist.reshape(n, n, n)
    for ax in range(3):
        p = np.pad(x, [(1, 1) if a == ax else (0, 0) for a in range(3)])
        lo = np.take(p, range(0, n), axis=ax)
        mid = np.take(p, range(1, n + 1), axis=ax)
        hi = np.take(p, range(2, n + 2), axis=ax)
        x = 0.25 * lo + 0.5 * mid + 0.25 * hi
    return x.reshape(-1)


@dataclass
class Tracked:
    """One object's mask on a frame, with the evidence used to settle overlaps: the signed
    distance to its warped boundary (tracked now), or none (prompted: it always wins, or
    computed earlier: its depth inside its own mask is used)."""

    mask: np.ndarray  # (H, W) bool
    sd: np.ndarray | None = None  # (y1-y0, x1-x0) float32 over roi
    roi: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1 of sd
    fixed: bool = False  # a prompted mask

    def score(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Evidence at pixels (ys, xs): larger = more surely this object's."""
        if self.fixed:
            return np.full(len(ys), np.inf, np.float32)
        if self.sd is None:  # depth inside the mask, computed once, on demand
            b = bbox(self.mask)
            if b is None:
                return np.full(len(ys), -np.inf, np.float32)
            self.roi = pad_box(b, 1, *self.mask.shape)
            x0, y0, x1, y1 = self.roi
            sub = self.mask[y0:y1, x0:x1].astype(np.uint8)
            self.sd = cv2.distanceTransform(sub, cv2.DIST_L2, 3)
        x0, y0, x1, y1 = self.roi
        inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
        out = np.full(len(ys), -np.inf, np.float32)
        out[inside] = self.sd[ys[inside] - y0, xs[inside] - x0]
        return out


def resolve_overlaps(tracks: dict[int, Tracked]) -> set[int]:
    """Give each pixel claimed by several objects to the one with the most evidence (prompted
    masks win; ties: lower id). Edits the masks in place; returns the ids that lost pixels."""
    changed: set[int] = set()
    ids = sorted(tracks)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            ma, mb = tracks[a].mask, tracks[b].mask
            ba, bb = bbox(ma), bbox(mb)
            if ba is None or bb is None:
                continue
            x0, y0 = max(ba[0], bb[0]), max(ba[1], bb[1])
            x1, y1 = min(ba[2], bb[2]), min(ba[3], bb[3])
            if x0 >= x1 or y0 >= y1:
                continue
            ys, xs = np.nonzero(ma[y0:y1, x0:x1] & mb[y0:y1, x0:x1])
            if len(ys) == 0:
                continue
            if tracks[a].fixed and tracks[b].fixed:
                continue  # two prompted masks: both stand as given
            ys, xs = ys + y0, xs + x0
            a_wins = tracks[a].score(ys, xs) >= tracks[b].score(ys, xs)
            mb[ys[a_wins], xs[a_wins]] = False
            ma[ys[~a_wins], xs[~a_wins]] = False
            changed.update(([b] if a_wins.any() else []) + ([a] if (~a_wins).any() else []))
    return changed


def track_step(
    prev: np.ndarray,  # (H, W) bool mask on the previous frame
    mx: np.ndarray,  # (H, W) float32 flow maps (this frame -> previous frame)
    my: np.ndarray,
    q: np.ndarray,  # (H, W) uint16 colour bins of this frame
    model: ColourModel,
    band: int = 6,
    grow: int = 3,
    sigma: float = 2.5,
    colour_weight: float = 1.0,
) -> Tracked:
    """Warp `prev` by the flow, then re-decide the pixels from `band` px inside to `grow` px
    outside the warped boundary from the colour model and the distance to that boundary.
    Mask parts that the flow brings in from beyond the image edge are extrapolated (an arm
    entering the picture keeps its mask)."""
    h, w = prev.shape
    b = bbox(prev)
    if b is None:
        return Tracked(prev.copy())
    # ROI: the previous box grown by the largest displacement inside it, plus the band
    x0, y0, x1, y1 = pad_box(b, band + 2, h, w)
    dx = mx[y0:y1, x0:x1] - np.arange(x0, x1, dtype=np.float32)[None]
    dy = my[y0:y1, x0:x1] - np.arange(y0, y1, dtype=np.float32)[:, None]
    reach = int(np.ceil(max(np.abs(dx).max(), np.abs(dy).max()))) + band + 2
    x0, y0, x1, y1 = pad_box(b, reach, h, w)
    soft = cv2.remap(
        prev.astype(np.float32), mx[y0:y1, x0:x1], my[y0:y1, x0:x1], cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip
    core = (soft > 0.5).astype(np.uint8)
    if not core.any():
        return Tracked(np.zeros((h, w), bool))
    # signed distance to the warped boundary: > 0 inside, < 0 outside (pixels)
    d_in = cv2.distanceTransform(core, cv2.DIST_L2, 3)
    d_out = cv2.distanceTransform(1 - core, cv2.DIST_L2, 3)
    sd = d_in - d_out
    inband = (sd <= band) & (sd >= -grow)
    pc = model.lut[q[y0:y1, x0:x1][inband]]
    logit_c = np.log(np.clip(pc, 1e-3, 1 - 1e-3) / np.clip(1 - pc, 1e-3, 1))
    score = colour_weight * logit_c + sd[inband] / sigma
    out = core.astype(bool)
    out[inband] = score > 0
    out = cv2.morphologyEx(out.astype(np.uint8), cv2.MORPH_OPEN, disk(1))
    out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, disk(2)).astype(bool)
    out = largest_components(out, core.astype(bool))
    full = np.zeros((h, w), bool)
    full[y0:y1, x0:x1] = out
    return Tracked(full, sd, (x0, y0, x1, y1))
