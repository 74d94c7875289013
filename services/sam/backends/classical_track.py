"""The classical backend's per-object tracker: optical-flow warping, then a decision of the
band around the warped boundary from a shape prior, colour models, motion evidence, an
edge-aware (guided) filter and a minimum cut, with occluded parts carried by the object's
motion and thin straight parts tracked as lines.
numpy + OpenCV (+ the cut's max-flow: C, or scipy's), deterministic.

Usage:
    tr = ObjectTracker.start(feat_key, mask_key, params, lum_key)   # at a keyframe
    tracked = tr.step(feat_t, lum_t, prev_mask, mx, my)  # Tracked(.mask (H, W) bool, .sd, .roi)

Per frame, in a region around the object (all figures in pixels of the frame):
1. shape prior: the previous mask warped by the dense flow (mx, my: for each pixel of this
   frame, its position in the previous one); its signed distance sd to the warped boundary
   gives a prior log-odds sd / sigma, clipped, and only pixels within a band around that
   boundary (band px inside, grow px outside; wider for larger objects with band_frac,
   grow_frac) may change. The mask the warp brings in from beyond the image edge (an object
   entering the picture; or leaving it as the camera pans: then the border's mask would
   smear over the background coming in) joins the band, its prior capped at edge_prior;
2. colour: P(object | colour) from histograms over quantised shading-robust features
   (classical_ops.features): a global model adapted slowly (colour_rate), optionally
   blended with the keyframe's fixed model (key_weight) and with local models per image
   tile (local_weight; each tile pooled with its 3x3 tile neighbourhood, learnt on the
   previous frame's result, used where a tile saw both object and background);
3. motion: the flow is fitted by an affine motion deep inside the warped mask (the
   object's) and another on a ring outside the band (the background's); a pixel whose flow
   is like the object's scores up to +motion_weight, like the background's down to
   -motion_weight (none where the two motions are under 2 px apart, faded out within 4 px
   of the warped boundary, where the flow blurs the two): a leak onto background that moves
   unlike the object is pulled back even where the colours agree (dancer vs audience, camel
   vs a second camel). Pixels deeper inside than the band whose evidence is at most
   -motion_gate (a leak left on the background) are re-decided too, their prior capped at
   motion_prior;
4. occlusion: while the visible mask has under amodal_gate x the area of the whole object
   (an occluder such as a tree trunk hides part of it) and the object moves unlike the
   background, the whole object's mask is carried by the object's median motion (for at
   most amodal_frames frames); its parts outside the band whose motion evidence is at
   least amodal_motion are decided like the band with prior amodal_prior, so the part that
   comes out on the far side of the occluder is taken again;
5. decision: the object probability sigmoid(prior + colour + motion evidence) is
   smoothed by a guided filter with the frame's lightness as guide (boundaries snap to
   image edges), then decided jointly by a minimum cut that makes label changes cheap
   across image edges (cut_weight > 0, the default: classical_cut) or thresholded at 0.5
   (cut_weight 0, about 1.5x faster); small holes
   filled, components touching neither the warped core nor the carried occluded parts
   dropped, and so are strays: components under stray_area x the largest one's area
   farther than max(stray_near, stray_near_frac x size) from it (a leak that split off
   the object, e.g. a kite line's mask smeared over the sky at the image border; parts cut
   off by an occluder lie closer);
6. recovery (recover_frac): on a frame where the mask shrank (an occluder sweeping over the
   object wipes the part it passed: that part's pixels are then too far outside the warped
   mask to join again), components of strongly object-coloured pixels within recover_frac
   x the object's size of the mask are added back;
7. lines (option lines): the keyframe mask's thin straight parts (what an opening removes,
   Hough segments: a kite's or a paraglider's lines) are kept out of steps 1-6 and tracked
   as line segments on their own (classical_lines: moved by the object's median motion,
   then searched across for the most line-like segment of the lightness), then drawn into
   the mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from services.sam.backends.classical_cut import band_cut
from services.sam.backends.classical_lines import LineSet, thin_parts
from services.sam.backends.classical_maxflow import SOLVERS
from services.sam.backends.classical_motion import (
    apart,
    beyond,
    motion_evidence,
    motion_fits,
    warp_affine,
)
from services.sam.backends.classical_ops import (
    Tracked,
    bbox,
    disk,
    drop_strays,
    fill_holes,
    keep_touching,
    pad_box,
)

G_BITS = 4  # global histograms: bins per feature channel = 2**G_BITS
L_BITS = 3  # local (per tile) histograms
TILE = 40  # px, local colour model tiles
EPS = 1e-4


def qbins(feat: np.ndarray, bits: int) -> np.ndarray:
    """(H, W, 3) uint8 features -> (H, W) int32 bin index with 2**bits levels per channel."""
    q = (feat >> (8 - bits)).astype(np.int32)
    return (q[..., 0] << (2 * bits)) | (q[..., 1] << bits) | q[..., 2]


def _masks_for_learning(mask: np.ndarray, ring: int) -> tuple[np.ndarray, np.ndarray]:
    """(inner object pixels, background ring 2..ring px around it), both (h, w) bool."""
    m = mask.astype(np.uint8)
    inner = cv2.erode(m, disk(1)).astype(bool)
    if not inner.any():
        inner = mask
    d_out = cv2.distanceTransform(1 - m, cv2.DIST_L2, 3)
    return inner, (d_out > 2) & (d_out <= ring)


@dataclass
class GlobalColour:
    fg: np.ndarray  # (NB,) float32, normalised
    bg: np.ndarray

    @classmethod
    def learn(cls, qg: np.ndarray, inner: np.ndarray, ring: np.ndarray) -> GlobalColour:
        nb = 1 << (3 * G_BITS)
        fg = np.bincount(qg[inner], minlength=nb).astype(np.float32)
        bg = np.bincount(qg[ring], minlength=nb).astype(np.float32)
        return cls(fg / max(1.0, fg.sum()), bg / max(1.0, bg.sum()))

    def blend(self, other: GlobalColour, rate: float) -> GlobalColour:
        return GlobalColour((1 - rate) * self.fg + rate * other.fg,
                            (1 - rate) * self.bg + rate * other.bg)  # fmt: skip


def _local_hists(ql, inner, ring, ty, tx, nty, ntx):
    """Per-tile fg/bg histograms pooled over 3x3 tile neighbourhoods: (nty, ntx, NB) each."""
    nb = 1 << (3 * L_BITS)
    tile = ty * ntx + tx  # (h, w) tile index of every ROI pixel
    out = []
    for sel in (inner, ring):
        h = np.bincount(tile[sel] * nb + ql[sel], minlength=nty * ntx * nb).astype(np.float32)
        h = h.reshape(nty, ntx, nb)
        p = np.pad(h, ((1, 1), (1, 1), (0, 0)))
        pooled = sum(p[i : i + nty, j : j + ntx] for i in range(3) for j in range(3))
        out.append(pooled)
    return out[0], out[1]


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter, gray guide; (h, w) float32 each -> (h, w) float32."""
    k = (2 * r + 1, 2 * r + 1)

    def box(x):
        return cv2.boxFilter(x, -1, k, borderType=cv2.BORDER_REFLECT)

    mi, mp = box(guide), box(src)
    var = box(guide * guide) - mi * mi
    cov = box(guide * src) - mi * mp
    a = cov / (var + eps)
    b = mp - a * mi
    return box(a) * guide + box(b)


class ObjectTracker:
    """One object's appearance models along one propagation pass (see module docstring)."""

    def __init__(self, key: GlobalColour, params: dict) -> None:
        self.key = key  # the keyframe's global model (fixed)
        self.run = key  # adapted global model
        self.local: tuple | None = None  # (fg, bg, counts...) learnt on the last frame
        self.p = params
        self.amodal: np.ndarray | None = None  # (H, W) bool: the whole object, occluded parts
        self.hidden = 0  # ... carried this many frames by the object's motion
        self.lines: LineSet | None = None  # its thin straight parts (option lines)
        self.drawn: np.ndarray | None = None  # (H, W) bool: their pixels in the last mask

    @classmethod
    def start(
        cls, feat: np.ndarray, mask: np.ndarray, params: dict, lum: np.ndarray | None = None
    ) -> ObjectTracker:
        """The tracker of an object from its mask on one frame (features feat; lightness
        lum (H, W) float32 in [0, 1], needed to find its lines when option lines is on)."""
        tr = cls(GlobalColour(np.zeros(1), np.zeros(1)), params)
        if lum is not None and params["lines"]:
            tr.lines = LineSet.find(mask, lum)
            if tr.lines.lines:  # the colour models and the band see the body only
                tr.drawn = thin_parts(mask)
                mask = mask & ~tr.drawn
        tr.key = tr.run = tr._learn(feat, mask, first=True)
        return tr

    # ---- learning -------------------------------------------------------------------
    def _learn(self, feat: np.ndarray, mask: np.ndarray, first: bool = False) -> GlobalColour:
        """Learn the local models (and return a global model) from a frame's final mask."""
        h, w = mask.shape
        b = bbox(mask)
        if b is None:
            self.local = None
            return self.run
        size = max(b[2] - b[0], b[3] - b[1])
        ring = int(max(8, min(60, size // 3)))
        x0, y0, x1, y1 = pad_box(b, ring + 2, h, w)
        sub = mask[y0:y1, x0:x1]
        inner, bgr = _masks_for_learning(sub, ring)
        f = feat[y0:y1, x0:x1]
        g = GlobalColour.learn(qbins(f, G_BITS), inner, bgr)
        if self.p["local_weight"] <= 0:  # local models unused: not learnt
            self.local = None
            return g
        ql = qbins(f, L_BITS)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        nty, ntx = (h + TILE - 1) // TILE, (w + TILE - 1) // TILE
        lf, lb = _local_hists(ql, inner, bgr, yy // TILE, xx // TILE, nty, ntx)
        self.local = (lf, lb, lf.sum(-1), lb.sum(-1), nty, ntx)
        return g

    def body(self, mask: np.ndarray) -> np.ndarray:
        """The mask without the lines this tracker drew into it (option lines)."""
        if self.drawn is None or self.drawn.shape != mask.shape:
            return mask
        return mask & ~self.drawn

    def update(self, feat: np.ndarray, mask: np.ndarray) -> None:
        g = self._learn(feat, self.body(mask))
        if g is not self.run:
            self.run = self.run.blend(g, self.p["colour_rate"])

    # ---- one frame ------------------------------------------------------------------
    def colour_logit(self, feat_roi: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """(n,) log-odds of object vs background for pixels (yy, xx) of features feat_roi."""
        qg = qbins(feat_roi, G_BITS)
        a = self.p["key_weight"]
        fg = a * self.key.fg + (1 - a) * self.run.fg
        bg = a * self.key.bg + (1 - a) * self.run.bg
        # densities per local bin (global bins are 8x finer), with or without local models
        s = 1 << (3 * (G_BITS - L_BITS))
        if self.local is None:  # one table lookup per pixel
            return np.log((fg * s + EPS) / (bg * s + EPS)).astype(np.float32)[qg]
        pf, pb = fg[qg], bg[qg]
        if self.local is not None:
            lf, lb, nf, nbk, nty, ntx = self.local
            ty = np.minimum(yy // TILE, nty - 1)
            tx = np.minimum(xx // TILE, ntx - 1)
            ql = qbins(feat_roi, L_BITS)
            cf, cb = nf[ty, tx], nbk[ty, tx]
            ok = (cf >= 30) & (cb >= 30)
            lpf = lf[ty, tx, ql] / np.maximum(cf, 1)
            lpb = lb[ty, tx, ql] / np.maximum(cb, 1)
            wl = self.p["local_weight"] * ok
            pf = (1 - wl) * pf * s + wl * lpf
            pb = (1 - wl) * pb * s + wl * lpb
        return np.log((pf + EPS) / (pb + EPS))

    def step(self, feat: np.ndarray, lum: np.ndarray, prev: np.ndarray, mx, my) -> Tracked:
        """Track from the previous frame's mask `prev` to this frame (features `feat`,
        lightness `lum` (H, W) float32 in [0, 1])."""
        p = self.p
        h, w = prev.shape
        prev = self.body(prev)  # the lines are tracked on their own, below
        b = bbox(prev)
        if b is None:
            return Tracked(prev.copy())
        size = max(b[2] - b[0], b[3] - b[1])
        if self.amodal is None or self.amodal.shape != prev.shape or p["amodal_prior"] is None:
            self.amodal, self.hidden = prev, 0
        ba = bbox(self.amodal)  # the region covers the occluded parts too
        if ba is not None:
            b = (min(b[0], ba[0]), min(b[1], ba[1]), max(b[2], ba[2]), max(b[3], ba[3]))
        band = int(np.clip(p["band_frac"] * size, p["band"], p["band_max"]))
        grow = int(np.clip(p["grow_frac"] * size, p["grow"], p["band_max"]))
        x0, y0, x1, y1 = pad_box(b, band + 2, h, w)
        dx = mx[y0:y1, x0:x1] - np.arange(x0, x1, dtype=np.float32)[None]
        dy = my[y0:y1, x0:x1] - np.arange(y0, y1, dtype=np.float32)[:, None]
        rec = int(p["recover_frac"] * size)
        reach = int(np.ceil(max(np.abs(dx).max(), np.abs(dy).max()))) + band + grow + rec + 4
        x0, y0, x1, y1 = pad_box(b, reach, h, w)
        soft = cv2.remap(prev.astype(np.float32), mx[y0:y1, x0:x1], my[y0:y1, x0:x1],
                         cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        core = (soft > 0.5).astype(np.uint8)
        if not core.any():
            return Tracked(np.zeros((h, w), bool))
        core_b = core.astype(bool)
        mxr, myr = mx[y0:y1, x0:x1], my[y0:y1, x0:x1]
        d_in = cv2.distanceTransform(core, cv2.DIST_L2, 3)
        d_out = cv2.distanceTransform(1 - core, cv2.DIST_L2, 3)
        sd = d_in - d_out  # > 0 inside the warped mask
        inband = (sd <= band) & (sd >= -grow)
        prior = np.clip(sd / p["sigma"], -p["prior_clip"], p["prior_clip"])
        if p["edge_prior"] is not None:  # mask extrapolated from beyond the image edge
            ext = core_b & beyond(mxr, myr, w, h, 1.0)
            inband |= ext
            prior[ext] = np.minimum(prior[ext], p["edge_prior"])
        mot, fit, hid, sep = None, None, None, False
        if p["motion_weight"] > 0:  # (h, w) motion evidence on the warped mask and band
            fit = motion_fits(mxr, myr, (x0, y0), sd, band, grow)
            # the object moves unlike the background (sd > 0 is the warped mask, core)
            sep = bool(fit) and apart(fit[2:], core_b, p["amodal_sep"])
            mot = np.zeros(sd.shape, np.float32)
            iy, ix = np.nonzero(sd >= -grow)
            mot[iy, ix] = motion_evidence(mxr, myr, (x0, y0), sd, iy, ix, fit)
            if sep and self.hidden > 0:
                # occluded parts, moved like the object (which moves unlike the background)
                hid = warp_affine(self.amodal[y0:y1, x0:x1], fit[2]) & (sd < -grow)
                hy, hx = np.nonzero(hid)
                mot[hy, hx] = motion_evidence(mxr, myr, (x0, y0), sd, hy, hx, fit)
                hid &= mot >= p["amodal_motion"]  # seen again: moving like the object
                inband |= hid
                prior[hid] = p["amodal_prior"]
            if p["motion_prior"] is not None:  # deep inside but moving like the background
                bgm = (sd > band) & (mot <= -p["motion_gate"])
                inband |= bgm
                prior[bgm] = np.minimum(prior[bgm], p["motion_prior"])
        score = prior.copy()
        ys, xs = np.nonzero(inband)
        feat_roi = feat[y0:y1, x0:x1]
        cl = self.colour_logit(feat_roi[ys, xs], ys + y0, xs + x0)
        score[ys, xs] += p["colour_weight"] * np.clip(cl, -6.0, 6.0)
        if mot is not None:
            score[ys, xs] += p["motion_weight"] * mot[ys, xs]
        prob = 1.0 / (1.0 + np.exp(-score))
        if p["gf_radius"] > 0 and len(ys):
            # only the band's probabilities are used: filter the band's box, grown by the
            # filter's reach (2 radii), the same figures there as filtering the whole region
            m = 2 * p["gf_radius"] + 1
            by0, by1 = max(0, int(ys.min()) - m), min(prob.shape[0], int(ys.max()) + 1 + m)
            bx0, bx1 = max(0, int(xs.min()) - m), min(prob.shape[1], int(xs.max()) + 1 + m)
            prob = prob.astype(np.float32, copy=False)
            prob[by0:by1, bx0:bx1] = guided_filter(
                lum[y0 + by0 : y0 + by1, x0 + bx0 : x0 + bx1], prob[by0:by1, bx0:bx1],
                p["gf_radius"], p["gf_eps"],
            )  # fmt: skip
        # thresholded at 0.5, or (cut_weight > 0) an edge-aware minimum cut of the band
        out = band_cut(prob, inband, core_b, feat_roi, p["cut_weight"], solver=p["solver"])
        out = cv2.morphologyEx(out.astype(np.uint8), cv2.MORPH_OPEN, disk(1))
        out = fill_holes(out.astype(bool), p["hole_frac"])
        out = keep_touching(out, core_b if hid is None else core_b | hid)
        out = drop_strays(out, p["stray_area"], max(p["stray_near"], p["stray_near_frac"] * size))
        if rec > 0 and out.any() and out.sum() < p["recover_gate"] * prev.sum():
            out = self._recover(out, inband, feat_roi, (x0, y0), rec)
        full = np.zeros((h, w), bool)
        full[y0:y1, x0:x1] = out
        self._carry(full, fit[2] if fit else None, (x0, y0, x1, y1), sep)
        if self.lines is not None and self.lines.lines:
            self.lines = self.lines.step(lum, _shift(fit, prev, full))
            drawn = self.lines.render((h, w))
            self.drawn = drawn & ~full
            full = full | drawn
        return Tracked(full, sd, (x0, y0, x1, y1))

    def _carry(self, full: np.ndarray, fit, roi, sep: bool) -> None:
        """Update the whole-object mask: the visible mask `full` when it has (nearly) the
        whole object's area, else the whole object moved by the object's motion `fit` (3, 2)
        (a translation, flow convention, on roi) joined with the visible mask, for at most
        amodal_frames frames, while the object moves unlike the background (`sep`; else the
        flow carries the mask as it is)."""
        p = self.p
        if p["amodal_prior"] is None or fit is None or not full.any() or not sep:
            self.amodal, self.hidden = full, 0
            return
        x0, y0, x1, y1 = roi
        moved = np.zeros_like(full)
        moved[y0:y1, x0:x1] = warp_affine(self.amodal[y0:y1, x0:x1], fit)
        whole = moved | full
        if full.sum() >= p["amodal_gate"] * whole.sum() or self.hidden >= p["amodal_frames"]:
            self.amodal, self.hidden = full, 0
        else:
            self.amodal, self.hidden = whole, self.hidden + 1

    def _recover(self, out, done, feat_roi, origin, dist):
        """Add back object-coloured parts cut off from the mask (an occluder swept over it):
        components of strongly object-coloured pixels within `dist` px of the mask, outside
        the band already decided, each at least recover_min of the mask's area."""
        p = self.p
        d_out = cv2.distanceTransform((~out).astype(np.uint8), cv2.DIST_L2, 3)
        zone = (d_out > 0) & (d_out <= dist) & ~done
        ys, xs = np.nonzero(zone)
        if len(ys) == 0:
            return out
        cl = self.colour_logit(feat_roi[ys, xs], ys + origin[1], xs + origin[0])
        cand = np.zeros(out.shape, np.uint8)
        cand[ys, xs] = cl >= p["recover_logit"]
        cand = cv2.morphologyEx(cand, cv2.MORPH_OPEN, disk(1))
        n, lab, stats, _ = cv2.connectedComponentsWithStats(cand, connectivity=8)
        if n <= 1:
            return out
        big = stats[:, cv2.CC_STAT_AREA] >= p["recover_min"] * out.sum()
        big[0] = False
        return out | big[lab]


def _shift(fit, prev: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """(dx, dy): the object's motion from the previous frame to this one: minus its median
    flow (motion_fits, which points back to the previous frame), else its centroid's shift."""
    if fit is not None:
        return -float(fit[2][2, 0]), -float(fit[2][2, 1])
    (y0, x0), (y1, x1) = (np.argwhere(m).mean(0) if m.any() else (0.0, 0.0) for m in (prev, cur))
    return float(x1 - x0), float(y1 - y0)


@dataclass(frozen=True)
class TrackOptions:
    """The local tracker's settings: the backend option `track` (a map of these keys),
    parsed by protocol/options like every other option."""

    band: int = 10  # min px inside the warped boundary that are re-decided
    band_frac: float = 0.0  # ... as a fraction of the object's size (bbox side)
    band_max: int = 24
    grow: int = 6  # min px outside the warped boundary that may join the object
    grow_frac: float = 0.0
    sigma: float = 4.0  # px per unit of prior log-odds (2.5 was best without the cut)
    prior_clip: float = 6.0
    colour_weight: float = 1.0
    colour_rate: float = 0.05  # per-frame adaptation of the global colour model
    key_weight: float = 0.0  # share of the keyframe's fixed model in the global colour model
    local_weight: float = 0.0  # share of the per-tile colour models (0: global model only)
    gf_radius: int = 4  # guided filter radius (px; 0: off)
    gf_eps: float = 1e-3
    recover_frac: float = 0.15  # re-add object-coloured parts up to this x size away (0: off)
    recover_logit: float = 3.0  # ... whose colour log-odds are at least this
    recover_min: float = 0.01  # ... and whose area is at least this fraction of the mask's
    recover_gate: float = 0.98  # ... on frames where the mask shrank below this x the previous
    stray_area: float = 0.3  # drop components under this x the largest one's area (0: off)
    stray_near: float = 8.0  # ... that lie farther than this many px from it
    stray_near_frac: float = 0.5  # ... or this x the object's size, whichever is more
    motion_weight: float = 2.0  # weight of the motion evidence (flow like the object's or the
    # background's) in the band (0: off)
    motion_prior: float | None = 0.0  # prior log-odds (at most) of pixels deeper than the
    # band whose motion evidence is <= -motion_gate: re-decided like the band (None: kept)
    motion_gate: float = 0.5
    amodal_prior: float | None = 0.0  # prior log-odds of the object's occluded parts (carried
    # by its motion while the visible mask is under amodal_gate x the whole; None: off; needs
    # motion_weight > 0)
    amodal_gate: float = 0.85
    amodal_frames: int = 15
    amodal_motion: float = 0.0  # ... where the motion evidence is at least this
    amodal_sep: float = 2.0  # px: ... only while the object moves this much unlike the background
    edge_prior: float | None = 0.0  # prior log-odds (at most) of the mask the warp brings
    # in from beyond the image edge, re-decided like the band (None: kept as warped)
    lines: bool = True  # track the mask's thin straight parts (a kite's lines) as line
    # segments (classical_lines), else the band's opening drops them
    cut_weight: float = 3.0  # > 0: the band is decided by a minimum cut with this pairwise
    # weight (classical_cut.band_cut), 0: by thresholding at 0.5 (faster)
    solver: str = "auto"  # the cut's max-flow (classical_maxflow): bk (C, built on first use),
    # scipy (Dinic, the same cuts, slower), auto (bk when it builds here, else scipy)
    hole_frac: float = 0.0  # fill enclosed holes smaller than this fraction of the area
    l_weight: float = 0.25  # tracker features: lightness weight (classical_ops.features)
    ab_gain: float = 2.0  # tracker features: chroma gain

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(
                f"track.solver: {self.solver!r} is not one of {list(SOLVERS)} (auto: the C "
                "max-flow when it builds here, else scipy's)"
            )


DEFAULTS = asdict(TrackOptions())
