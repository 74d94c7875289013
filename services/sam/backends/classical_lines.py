"""Thin straight parts of an object (kite and paraglider lines, cables, rods), tracked as
line segments by the classical tracker (classical_track.py, option `track.lines`). OpenCV +
numpy, deterministic.

Usage:
    lines = LineSet.find(mask, lum)                  # on a keyframe: its mask, lightness
    lines = lines.step(lum, shift)                   # next frame: the object's motion (dx, dy)
    full = body | lines.render(shape)                # (H, W) bool

Why: the tracker decides pixels in a band with colour and motion models and opens its mask
(classical_track.py); a line 1-3 px wide has too few pixels for either, so the tracker drops
it on the first frame (on DAVIS, the lines are 27% of kite-surf's ground truth and 33% of
paragliding-launch's). Pixel-wise ridge detection does not help: the town, grass and waves
make ridges too (services/sam/README.md). A whole line, though, is evidence summed over
hundreds of pixels: each line found on the keyframe's mask (the parts an opening removes,
Hough segments) is moved by the object's motion, then each end is searched +-SEARCH px
across the line for the segment along which the image is most line-like (the keyframe's
polarity of the black or white top-hat of the lightness, averaged along the segment). A
line whose best evidence falls under KEEP x its keyframe evidence is dropped (occluded, out
of view, or never a line).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

OPEN_R = 2  # px: parts of the mask an opening with a disk of this radius removes are "thin"
MIN_LEN = 40  # px: shortest line kept
SEARCH = 5  # px: a line is searched this far across itself, per frame ...
FINE = 2  # ... then each of its ends this far around the best
KEEP = 0.35  # a line is dropped when its evidence falls under this x its keyframe evidence
SAMPLES = 32  # points sampled along a segment
HAT = 7  # px: the top-hat's kernel side


@dataclass(frozen=True)
class Line:
    a: np.ndarray  # (2,) float32 x, y: the end nearer the object's body
    b: np.ndarray  # (2,) float32: the far end
    width: int  # px, drawn thickness
    ref: float  # evidence on the keyframe (mean top-hat along the line)


def thin_parts(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the mask's pixels an opening (disk OPEN_R) removes."""
    m = mask.astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * OPEN_R + 1,) * 2)
    return mask & ~cv2.morphologyEx(m, cv2.MORPH_OPEN, k).astype(bool)


def evidence(lum: np.ndarray, dark: bool) -> np.ndarray:
    """(H, W) float32 line evidence: black (dark lines) or white top-hat of lightness."""
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (HAT, HAT))
    op = cv2.MORPH_BLACKHAT if dark else cv2.MORPH_TOPHAT
    u8 = np.clip(lum * 255.0 + 0.5, 0, 255).astype(np.uint8)  # uint8 morphology: 5x faster
    return cv2.morphologyEx(u8, op, k).astype(np.float32) / 255.0


def _along(ev: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean of ev along segments a -> b ((n, 2) each), sampled at SAMPLES points; points
    outside the image do not count (a segment wholly outside scores 0)."""
    h, w = ev.shape
    t = np.linspace(0.0, 1.0, SAMPLES, dtype=np.float32)[None, :, None]
    p = a[:, None] * (1 - t) + b[:, None] * t  # (n, S, 2)
    inside = (p[..., 0] >= 0) & (p[..., 0] <= w - 1) & (p[..., 1] >= 0) & (p[..., 1] <= h - 1)
    v = cv2.remap(ev, p[..., 0].astype(np.float32), p[..., 1].astype(np.float32),
                  cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # fmt: skip
    return (v * inside).sum(1) / np.maximum(inside.sum(1), 1)


@dataclass(frozen=True)
class LineSet:
    lines: tuple[Line, ...]
    dark: bool  # the lines are darker than their surroundings

    @classmethod
    def find(cls, mask: np.ndarray, lum: np.ndarray) -> LineSet:
        """The straight thin parts of a keyframe mask (H, W) bool, lightness lum (H, W)."""
        thin = thin_parts(mask)
        if thin.sum() < MIN_LEN:
            return cls((), True)
        segs = cv2.HoughLinesP(thin.astype(np.uint8) * 255, 1, np.pi / 360, MIN_LEN // 2,
                               minLineLength=MIN_LEN, maxLineGap=4)  # fmt: skip
        if segs is None:
            return cls((), True)
        segs = segs.reshape(-1, 4).astype(np.float32)
        segs = segs[np.argsort(-np.hypot(segs[:, 2] - segs[:, 0], segs[:, 3] - segs[:, 1]))]
        body = mask & ~thin
        d_body = cv2.distanceTransform((~body).astype(np.uint8), cv2.DIST_L2, 3)
        covered = np.zeros(mask.shape, bool)
        picked = []
        for x0, y0, x1, y1 in segs:  # the longest first; each must cover new thin pixels
            draw = np.zeros(mask.shape, np.uint8)
            cv2.line(draw, (int(x0), int(y0)), (int(x1), int(y1)), 1, 3)
            own = draw.astype(bool) & thin
            new = own & ~covered
            length = float(np.hypot(x1 - x0, y1 - y0))
            if new.sum() < 0.5 * length:
                continue
            covered |= own
            a, b = np.array([x0, y0], np.float32), np.array([x1, y1], np.float32)
            if d_body[int(y1), int(x1)] < d_body[int(y0), int(x0)]:
                a, b = b, a
            picked.append((a, b, max(1, round(own.sum() / max(length, 1.0)))))
        if not picked:
            return cls((), True)
        a = np.stack([p[0] for p in picked])
        b = np.stack([p[1] for p in picked])
        scores = {d: _along(evidence(lum, d), a, b) for d in (True, False)}
        dark = bool(scores[True].mean() >= scores[False].mean())
        lines = tuple(Line(a[i], b[i], picked[i][2], float(scores[dark][i])) for i in range(len(a)))
        return cls(lines, dark)

    def step(self, lum: np.ndarray, shift: tuple[float, float]) -> LineSet:
        """Move the lines by the object's motion `shift` (dx, dy, previous -> this frame), then
        search each end across its line; drop the lines whose evidence fell under KEEP x ref."""
        if not self.lines:
            return self
        ev = evidence(lum, self.dark)
        d = np.asarray(shift, np.float32)
        a = np.stack([ln.a for ln in self.lines]) + d  # (L, 2)
        b = np.stack([ln.b for ln in self.lines]) + d
        u = b - a
        n = np.stack([-u[:, 1], u[:, 0]], 1) / np.maximum(np.hypot(u[:, 0], u[:, 1]), 1e-6)[:, None]
        # the whole line across (+-SEARCH), then each end on its own (+-FINE) around the best
        par = np.arange(-SEARCH, SEARCH + 1, dtype=np.float32)
        fine = np.arange(-FINE, FINE + 1, dtype=np.float32)
        fa, fb = (g.ravel() for g in np.meshgrid(fine, fine, indexing="ij"))
        s, ca, cb = self._best(ev, a, b, n, par, par)
        s, ca, cb = self._best(ev, ca, cb, n, fa, fb)
        out = [
            replace(ln, a=ca[i], b=cb[i])
            for i, ln in enumerate(self.lines)
            if s[i] >= KEEP * ln.ref
        ]
        return replace(self, lines=tuple(out))

    @staticmethod
    def _best(ev, a, b, n, oa, ob):
        """Per line (ends a, b, unit normal n: (L, 2) each), the best of the candidates that
        move end a by oa and end b by ob (C,) along n: (score (L,), a (L, 2), b (L, 2))."""
        ca = a[:, None] + oa[None, :, None] * n[:, None]  # (L, C, 2)
        cb = b[:, None] + ob[None, :, None] * n[:, None]
        s = _along(ev, ca.reshape(-1, 2), cb.reshape(-1, 2)).reshape(len(a), -1)
        i = np.argmax(s, 1)
        r = np.arange(len(a))
        return s[r, i], ca[r, i], cb[r, i]

    def render(self, shape: tuple[int, int]) -> np.ndarray:
        """(H, W) bool: the lines drawn with their widths."""
        img = np.zeros(shape, np.uint8)
        for ln in self.lines:
            p0 = (int(round(float(ln.a[0]))), int(round(float(ln.a[1]))))
            p1 = (int(round(float(ln.b[0]))), int(round(float(ln.b[1]))))
            cv2.line(img, p0, p1, 1, ln.width)
        return img.astype(bool)
