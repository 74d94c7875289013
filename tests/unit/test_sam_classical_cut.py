"""The classical tracker's minimum cut of the band (classical_cut.band_cut) on small
synthetic images with known answers, checked against an exhaustive search."""

from __future__ import annotations

import itertools

import numpy as np

from services.sam.backends.classical_cut import band_cut, contrast_beta
from services.sam.backends.classical_ops import Flow, features
from services.sam.backends.classical_track import DEFAULTS, ObjectTracker
from tests.unit.classical_scene import iou, scene


def _energy(lab, prob, inband, fixed, feat, weight):
    f = feat.astype(np.float32)
    beta = contrast_beta(f)
    wr = weight * np.exp(-beta * ((f[:, 1:] - f[:, :-1]) ** 2).sum(-1))
    wd = weight * np.exp(-beta * ((f[1:] - f[:-1]) ** 2).sum(-1))
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
        out = band_cut(prob, inband, fixed, feat, 1.5, reach=None)  # the whole band
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


def test_cut_moves_only_pixels_near_the_thresholds_label_changes():
    # a uniform, barely-background square inside fixed object pixels: the whole-band cut
    # makes all of it object (its border costs more than its unaries); with reach 2 only
    # the pixels within 2 px of the threshold's label change may move
    feat = np.full((40, 40, 3), 90, np.uint8)
    prob = np.full((40, 40), 0.48, np.float32)
    inband = np.zeros((40, 40), bool)
    inband[5:35, 5:35] = True
    fixed = ~inband
    whole = band_cut(prob, inband, fixed, feat, 3.0, reach=None)
    near = band_cut(prob, inband, fixed, feat, 3.0, reach=2)
    assert whole.all()
    assert near[5:7].all() and near[:, 33:35].all()  # the ring within reach moved
    assert not near[7:33, 7:33].any()  # the rest kept the threshold's label


def test_cut_near_the_label_changes_matches_cutting_the_whole_band():
    rng = np.random.default_rng(2)
    feat = rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:40, :40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 < 12**2
    prob = np.clip(np.where(disc, 0.7, 0.3) + rng.normal(0, 0.15, (40, 40)), 0.01, 0.99)
    inband = np.ones((40, 40), bool)
    fixed = np.zeros((40, 40), bool)
    thr = band_cut(prob, inband, fixed, feat, 0.0)
    whole = band_cut(prob, inband, fixed, feat, 3.0, reach=None)
    assert (whole != thr).sum() > 100  # the cut changes the noisy threshold
    assert (band_cut(prob, inband, fixed, feat, 3.0) == whole).all()


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
    # the default; thresholded: test_sam_classical_track.test_tracker_follows_a_moving_square
    img0, m0 = scene(x0=50)
    img1, m1 = scene(x0=56)  # moved 6 px right
    g0 = img0.mean(-1).astype(np.uint8)
    g1 = img1.mean(-1).astype(np.uint8)
    mx, my = Flow(0.5).maps(g1, g0)
    f0, f1 = features(img0, 0.25, 2.0), features(img1, 0.25, 2.0)
    assert DEFAULTS["cut_weight"] == 3.0 and DEFAULTS["sigma"] == 4.0
    tr = ObjectTracker.start(f0, m0, DEFAULTS)
    out = tr.step(f1, g1.astype(np.float32) / 255, m0, mx, my)
    assert iou(out.mask, m1) > 0.9
