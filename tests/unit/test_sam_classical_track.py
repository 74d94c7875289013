"""The classical backend's tracker pieces (classical_track.py, classical_motion.py) and click
corrections (classical_clicks.py) on small synthetic images with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.sam.backends.classical import ClassicalBackend
from services.sam.backends.classical_clicks import grabcut_scaled, refine_with_clicks
from services.sam.backends.classical_motion import (
    beyond,
    motion_evidence,
    motion_fits,
    warp_affine,
)
from services.sam.backends.classical_ops import (
    Flow,
    drop_strays,
    features,
    fill_holes,
    flow_roi,
    keep_touching,
)
from services.sam.backends.classical_track import DEFAULTS, ObjectTracker, guided_filter
from tests.unit.classical_scene import iou, scene


def test_guided_filter_keeps_constant_and_edges():
    guide = np.zeros((20, 20), np.float32)
    guide[:, 10:] = 1.0
    src = guide.copy()
    out = guided_filter(guide, src, 3, 1e-4)
    assert np.allclose(out, src, atol=1e-2)  # an edge in both: kept
    flat = np.full((20, 20), 0.3, np.float32)
    assert np.allclose(guided_filter(guide, flat, 3, 1e-3), 0.3, atol=1e-5)


def test_fill_holes_and_keep_touching():
    m = np.zeros((20, 20), bool)
    m[2:12, 2:12] = True
    m[6, 6] = False  # 1-px hole: 1 < 0.02 * 99
    assert fill_holes(m, 0.02)[6, 6] and not fill_holes(m, 0.0)[6, 6]
    blob = m.copy()
    blob[15:18, 15:18] = True
    core = np.zeros_like(m)
    core[4, 4] = True
    kept = keep_touching(blob, core)
    assert kept[4, 4] and not kept[16, 16]


def test_drop_strays_keeps_near_pieces_and_large_ones():
    m = np.zeros((60, 60), bool)
    m[10:30, 10:30] = True  # the object: 400 px
    m[10:30, 33:36] = True  # a piece 3 px away (cut by an occluder): kept
    m[50:53, 50:53] = True  # a small far leak: dropped
    out = drop_strays(m, 0.3, 8.0)
    assert out[20, 34] and out[20, 20] and not out[51, 51]
    m[40:60, 0:20] = True  # a far piece as large as the object: kept
    assert drop_strays(m, 0.3, 8.0)[50, 10]
    assert drop_strays(m, 0.0, 8.0)[51, 51]  # off


def motion_logit(mx, my, origin, sd, ys, xs, band, grow) -> np.ndarray:
    """motion_evidence of pixels (ys, xs) with the motions fitted on this ROI."""
    return motion_evidence(mx, my, origin, sd, ys, xs, motion_fits(mx, my, origin, sd, band, grow))


def test_motion_logit_tells_object_motion_from_background_motion():
    h, w = 60, 60
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    sd = 20.0 - np.hypot(gx - 30, gy - 30)  # a disc of radius 20: > 0 inside
    inside = sd > 0
    mx = gx - np.where(inside, 5.0, 0.0)  # the object moved 5 px right, the background not
    my = gy.copy()
    ys, xs = np.array([30, 30, 30]), np.array([30, 58, 56])
    mx[30, 56] = 56 - 5.0  # a pixel outside the disc moving like the object
    r = motion_logit(mx, my, (0, 0), sd, ys, xs, band=10, grow=6)
    assert r[0] > 0.9 and r[1] < -0.9 and r[2] > 0.9
    still = motion_logit(gx, gy, (0, 0), sd, ys, xs, band=10, grow=6)
    assert np.allclose(still, 0.0)  # one motion everywhere: no evidence


def test_beyond_marks_sources_outside_the_frame():
    mx = np.array([[-2.0, 0.0, 5.0, 10.5]], np.float32)
    my = np.zeros_like(mx)
    assert beyond(mx, my, 10, 1, 1.0).tolist() == [[True, False, False, True]]


def test_warp_affine_moves_a_mask_like_the_flow():
    m = np.zeros((20, 20), bool)
    m[5:10, 5:10] = True
    fit = np.array([[0.0, 0.0], [0.0, 0.0], [-3.0, 0.0]])  # each pixel comes from 3 px left
    out = warp_affine(m, fit)
    assert out[5:10, 8:13].all() and out.sum() == m.sum()


def test_tracker_carries_the_whole_object_while_part_is_hidden():
    m = np.zeros((40, 60), bool)
    m[10:30, 10:30] = True
    tr = ObjectTracker.start(np.zeros((40, 60, 3), np.uint8), m, DEFAULTS)
    tr.amodal = m
    shift = np.zeros((3, 2))
    shift[2] = (-2.0, 0.0)  # the object moves 2 px right a frame
    visible = np.zeros_like(m)
    visible[10:30, 12:22] = True  # half of it behind an occluder
    tr._carry(visible, shift, (0, 0, 60, 40), sep=True)
    assert tr.hidden == 1 and tr.amodal[10:30, 12:32].all() and tr.amodal.sum() == 400
    whole = np.zeros_like(m)
    whole[10:30, 14:34] = True  # out again: the visible mask is the whole object
    tr._carry(whole, shift, (0, 0, 60, 40), sep=True)
    assert tr.hidden == 0 and (tr.amodal == whole).all()
    tr._carry(visible, shift, (0, 0, 60, 40), sep=False)  # moves like the background
    assert tr.hidden == 0 and (tr.amodal == visible).all()


def test_tracker_follows_a_moving_square():
    # the thresholded band (the former default); with the cut: test_sam_classical_cut
    img0, m0 = scene(x0=50)
    img1, m1 = scene(x0=56)  # moved 6 px right
    flow = Flow(0.5)
    g0 = img0.mean(-1).astype(np.uint8)
    g1 = img1.mean(-1).astype(np.uint8)
    mx, my = flow.maps(g1, g0)
    f0, f1 = features(img0, 0.25, 2.0), features(img1, 0.25, 2.0)
    tr = ObjectTracker.start(f0, m0, {**DEFAULTS, "cut_weight": 0.0, "sigma": 2.5})
    out = tr.step(f1, g1.astype(np.float32) / 255, m0, mx, my)
    assert iou(out.mask, m1) > 0.9


def test_grabcut_scaled_keeps_sure_labels():
    img, m = scene()
    gc = np.full(m.shape, 0, np.uint8)  # GC_BGD
    gc[30:90, 40:100] = 2  # GC_PR_BGD
    gc[m] = 3  # GC_PR_FGD
    gc[55:65, 65:75] = 1  # GC_FGD
    out = grabcut_scaled(features(img), gc, (30, 20, 120, 100), 3, max_side=40)
    assert out[55:65, 65:75].all() and not out[:20].any()
    assert iou(out, m) > 0.8


def test_click_adds_a_missed_part_and_removes_a_wrong_one():
    img, m = scene()
    prior = m.copy()
    prior[40:80, 70:90] = False  # right half missed
    prior[10:20, 10:20] = True  # a wrong blob on the background
    feat = features(img)
    add = refine_with_clicks(feat, prior, np.array([[80, 60]], np.float32), np.array([1]))
    assert iou(add, m | prior) > 0.9 and add[60, 85]
    cut = refine_with_clicks(feat, prior, np.array([[15, 15]], np.float32), np.array([0]))
    assert not cut[10:20, 10:20].any() and cut[50:70, 55:65].all()


def test_backend_options_are_checked():
    with pytest.raises(ValueError, match="tracker"):
        ClassicalBackend(tracker="nope")
    with pytest.raises(
        ValueError, match=r"options\.track\.sigmaa: unknown field; valid fields are \[.*'sigma'"
    ):
        ClassicalBackend(track={"sigmaa": 1})
    with pytest.raises(ValueError, match=r"options\.track\.band: expected int, got str '3'"):
        ClassicalBackend(track={"band": "3"})
    assert ClassicalBackend(track={"sigma": 3}).track["sigma"] == 3
    with pytest.raises(ValueError, match="flow_margin"):
        ClassicalBackend(flow_margin=-1)


def test_flow_on_a_region_matches_the_whole_frame_there():
    img0, m0 = scene(h=160, w=240, x0=100, y0=60)
    img1, _ = scene(h=160, w=240, x0=106, y0=60)  # moved 6 px right
    g0, g1 = (i.mean(-1).astype(np.uint8) for i in (img0, img1))
    roi = flow_roi([m0], 0.5)
    assert roi == (68, 28, 172, 132)  # the box grown by max(32, 0.5 * 40) px
    mx, my = Flow(1.0).maps(g1, g0, roi)
    x0, y0, x1, y1 = roi
    gx = np.arange(240, dtype=np.float32)[None].repeat(160, 0)
    assert np.array_equal(mx[:, :x0], gx[:, :x0]) and np.array_equal(mx[:, x1:], gx[:, x1:])
    dx = mx[m0.nonzero()] - gx[m0.nonzero()]  # inside the object: it came from 6 px left
    assert abs(float(np.median(dx)) + 6) < 1.0
    assert flow_roi([m0], None) is None and flow_roi([np.zeros_like(m0)], 0.5) is None


def test_features_table_matches_the_float_formula():
    img = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2Lab).astype(np.float32)
    lab[..., 0] *= 0.3
    lab[..., 1:] = (lab[..., 1:] - 128.0) * 1.5 + 128.0
    assert np.array_equal(features(img, 0.3, 1.5), np.clip(lab, 0, 255).astype(np.uint8))


def test_tracker_recovers_a_part_cut_off_by_an_occluder():
    """A grey bar crossed the object and the previous mask lost the part right of it: the
    object-coloured part beyond the bar is added back (recover_frac), not without recovery,
    and only on a frame where the mask shrank (recover_gate)."""
    img, m = scene(h=160, w=240, x0=60, y0=50, size=60)
    img[:, 98:104] = (128, 128, 128)  # the occluder, a 6 px bar across the object
    prev = m.copy()
    prev[:, 98:] = False  # lost from the bar on
    g = img.mean(-1).astype(np.uint8)
    mx, my = Flow(1.0).maps(g, g)  # a still frame: zero flow
    feat = features(img, 0.25, 2.0)
    lum = g.astype(np.float32) / 255
    base = {**DEFAULTS, "recover_logit": 1.0}
    for opts, recovered in (
        ({"recover_frac": 0.15, "recover_gate": 1.5}, True),
        ({"recover_frac": 0.0, "recover_gate": 1.5}, False),
        ({"recover_frac": 0.15, "recover_gate": 0.5}, False),  # it did not shrink that much
    ):
        tr = ObjectTracker.start(feat, prev, {**base, **opts})
        out = tr.step(feat, lum, prev, mx, my).mask
        assert out[70:100, 104:107].all() == recovered, opts  # within 0.15 x 60 px
        assert not out[60:100, 99:103].any()  # the bar is not the object
        assert not out[:, 125:].any() and not out[:40].any()  # nothing beyond the object
