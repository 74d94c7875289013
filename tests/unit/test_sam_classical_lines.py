"""The classical tracker's thin straight parts (classical_lines): found on a keyframe mask,
followed across a moving, turning line, dropped when the line is gone; and through the
tracker (option track.lines) on a synthetic scene."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from services.sam.backends.classical_lines import LineSet
from services.sam.backends.classical_ops import Flow, features
from services.sam.backends.classical_track import DEFAULTS, ObjectTracker

H, W = 160, 220


def _scene(cx: int, cy: int, tip: tuple[int, int], line: bool = True):
    """Textured bright background, a red disc (the body) at (cx, cy) and a dark line 1 px
    wide from it to `tip`: (H, W, 3) uint8 image, (H, W) bool mask, (H, W) bool line."""
    rng = np.random.default_rng(0)
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = 150 + rng.integers(0, 25, (H, W))
    img[..., 1] = 170 + rng.integers(0, 25, (H, W))
    img[..., 2] = 190 + rng.integers(0, 25, (H, W))
    disc = np.zeros((H, W), np.uint8)
    cv2.circle(disc, (cx, cy), 18, 1, -1)
    ln = np.zeros((H, W), np.uint8)
    if line:
        cv2.line(ln, (cx, cy), tip, 1, 1)
    ln = ln.astype(bool) & ~disc.astype(bool)
    img[disc.astype(bool)] = (200, 40, 40)
    img[ln] = (40, 40, 60)
    return img, disc.astype(bool) | ln, ln


def _lum(img):
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255


def test_finds_the_line_of_a_keyframe_mask():
    img, mask, _ = _scene(60, 110, (200, 10))
    ls = LineSet.find(mask, _lum(img))
    assert len(ls.lines) == 1 and ls.dark
    a, b = ls.lines[0].a, ls.lines[0].b
    assert np.hypot(*(a - (60, 110))) < np.hypot(*(b - (60, 110)))  # a: the end at the body


def test_a_body_without_thin_parts_has_no_lines():
    img, mask, _ = _scene(60, 110, (200, 10), line=False)
    assert LineSet.find(mask, _lum(img)).lines == ()


def test_follows_a_line_that_moves_and_turns():
    img0, mask0, _ = _scene(60, 110, (200, 10))
    img1, _, line1 = _scene(66, 113, (216, 13))  # body moved (6, 3), the far end 10 px more
    dist = cv2.distanceTransform((~line1).astype(np.uint8), cv2.DIST_L2, 3)  # to the new line
    found = LineSet.find(mask0, _lum(img0))
    tracked = found.step(_lum(img1), (6.0, 3.0)).render((H, W))
    assert dist[tracked].mean() < 1.0
    near = cv2.dilate(tracked.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert (near & line1).sum() > 0.8 * line1.sum()  # within 1 px of most of the new line
    # moved by the body's motion alone, the line's far part would be off the new line
    shifted = [replace(ln, a=ln.a + (6, 3), b=ln.b + (6, 3)) for ln in found.lines]
    off = replace(found, lines=tuple(shifted)).render((H, W))
    assert dist[off].mean() > 2.0


def test_drops_a_line_that_is_gone():
    img0, mask0, _ = _scene(60, 110, (200, 10))
    img1, _, _ = _scene(60, 110, (200, 10), line=False)
    assert LineSet.find(mask0, _lum(img0)).step(_lum(img1), (0.0, 0.0)).lines == ()


def test_tracker_keeps_the_line_only_with_the_option():
    img0, m0, _ = _scene(60, 110, (200, 10))
    img1, m1, line1 = _scene(66, 113, (206, 10))
    g0, g1 = (cv2.cvtColor(i, cv2.COLOR_RGB2GRAY) for i in (img0, img1))
    mx, my = Flow(0.5).maps(g1, g0)
    f0, f1 = features(img0, 0.25, 2.0), features(img1, 0.25, 2.0)
    got = {}
    for on in (True, False):
        tr = ObjectTracker.start(f0, m0, {**DEFAULTS, "lines": on}, _lum(img0))
        got[on] = tr.step(f1, _lum(img1), m0, mx, my).mask
    near = cv2.dilate(got[True].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert (near & line1).sum() > 0.8 * line1.sum()
    assert (got[False] & line1).sum() < 0.2 * line1.sum()  # the band's opening drops it
    body = m1 & ~line1
    for on in (True, False):
        assert (got[on] & body).sum() > 0.9 * body.sum()
