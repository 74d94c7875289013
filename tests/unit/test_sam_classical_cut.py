"""The classical tracker's minimum cut of the band (classical_cut.band_cut) on small
synthetic images with known answers, checked against an exhaustive search."""

from __future__ import annotations

import itertools

import numpy as np

from services.sam.backends.classical_cut import band_cut, pair_weights
from services.sam.backends.classical_ops import Flow, features
from services.sam.backends.classical_track import DEFAULTS, ObjectTracker
from tests.unit.classical_scene import iou, scene


def _energy(lab, prob, inband, fixed, feat, weight):
    wr, wd = pair_weights(feat, weight)
    x = np.where(inband, lab, fixed)
    p = np.clip(prob, 1e-3, 1 - 1e-3)
    e = np.where(x, -np.log(p), -np.log1p(-p))[inband].sum()
    return e + (wr * (x[:, 1:] != x[:, :-1])).sum() + (wd * (x[1:] != x[:-1])).sum()


def test_cut_is_the_least_energy_labelling():
    rng = np.random.default_rng(0)
    for _ in range(20):
        prob = rng.uniform(0.05, 0.95, (3, 4)).astype(np.float32)
        feat = rng.integers(0, 255, (3, 4, 3)).astype(np.uint8)
        inband = np.zeros((3, 4), bool)
        inband[:, 1:3] = True  # 6 free pixels, the sides fixed
        fixed = np.zeros((3, 4), bool)
        fixed[:, 0] = True
        out = band_cut(prob, inband, fixed, feat, 1.5)
        assert (out[~inband] == fixed[~inband]).all()
        best = min(
            _energy(_place(bits, inband), prob, inband, fixed, feat, 1.5)
            for bits in itertools.product((0, 1), repeat=6)
        )
        # integer capacities: the cut is optimal up to the rounding of SCALE
        assert _energy(out, prob, inband, fixed, feat, 1.5) <= best + 0.05


def _place(bits, inband):
    lab = np.zeros(inband.shape, bool)
    lab[inband] = np.array(bits, bool)
    return lab


def test_cut_snaps_an_uncertain_boundary_to_the_image_edge():
    # an edge at x = 20; the tracker's probability is a soft ramp centred 4 px off it
    feat = np.zeros((30, 40, 3), np.uint8)
    feat[:, 20:] = 200
    x = np.arange(40, dtype=np.float32)
    prob = np.broadcast_to(1.0 / (1.0 + np.exp((x - 16.0) / 3.0)), (30, 40)).astype(np.float32)
    prob = 1.0 - prob  # object on the right, P > 0.5 from x = 17
    inband = np.zeros((30, 40), bool)
    inband[:, 8:32] = True
    fixed = np.zeros((30, 40), bool)
    fixed[:, 32:] = True
    thresholded = band_cut(prob, inband, fixed, feat, 0.0)
    assert thresholded[:, 17:].all() and not thresholded[:, :17].any()  # off the edge
    cut = band_cut(prob, inband, fixed, feat, 3.0)
    assert cut[:, 20:].all() and not cut[:, :20].any()  # on it


def test_cut_removes_speckles_inside_a_uniform_region():
    rng = np.random.default_rng(1)
    feat = np.full((30, 30, 3), 100, np.uint8)
    prob = np.clip(0.8 + rng.normal(0, 0.25, (30, 30)), 0.01, 0.99).astype(np.float32)
    inband = np.ones((30, 30), bool)
    fixed = np.zeros((30, 30), bool)
    assert (band_cut(prob, inband, fixed, feat, 0.0) == 0).sum() > 20  # speckles
    assert band_cut(prob, inband, fixed, feat, 3.0).all()


def test_tracker_with_the_cut_follows_a_moving_square():
    # (without the cut: test_sam_classical_track.test_tracker_follows_a_moving_square)
    img0, m0 = scene(x0=50)
    img1, m1 = scene(x0=56)  # moved 6 px right
    g0 = img0.mean(-1).astype(np.uint8)
    g1 = img1.mean(-1).astype(np.uint8)
    mx, my = Flow(0.5).maps(g1, g0)
    f0, f1 = features(img0, 0.25, 2.0), features(img1, 0.25, 2.0)
    tr = ObjectTracker.start(f0, m0, {**DEFAULTS, "cut_weight": 3.0, "sigma": 4.0})
    out = tr.step(f1, g1.astype(np.float32) / 255, m0, mx, my)
    assert iou(out.mask, m1) > 0.9
