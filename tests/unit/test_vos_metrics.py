"""DAVIS metrics and the click simulation, on tiny masks whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bench.vos_metrics import (
    bound_pixels,
    boundary_f,
    disk,
    next_clicks,
    region_centre,
    region_j,
    seg2bmap,
    sequence_scores,
)


def box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_region_j_by_hand():
    pred = box(4, 4, 0, 2, 0, 2)  # 4 px
    gt = box(4, 4, 0, 2, 0, 3)  # 6 px, contains pred
    assert region_j(pred, gt) == pytest.approx(4 / 6)
    assert region_j(box(4, 4, 0, 1, 0, 1), box(4, 4, 3, 4, 3, 4)) == 0.0
    empty = np.zeros((4, 4), bool)
    assert region_j(empty, empty) == 1.0  # DAVIS: both empty counts as perfect
    assert region_j(empty, gt) == 0.0


def test_seg2bmap_single_pixel():
    # pixel (1, 1): it differs from its right/lower/lower-right neighbours, and (0,0), (0,1),
    # (1,0) differ from theirs, so the boundary is the 2x2 block at the top left
    seg = box(4, 4, 1, 2, 1, 2)
    assert np.array_equal(seg2bmap(seg), box(4, 4, 0, 2, 0, 2))
    # the last row/column only compare along the border
    full = np.ones((3, 3), bool)
    assert not seg2bmap(full).any()


def test_disk_and_tolerance():
    want = np.array(
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]],
        np.uint8,
    )
    assert np.array_equal(disk(2), want)
    # 854x480: diagonal 979.65 px * 0.008 = 7.84 -> 8 px; 640x480: 800 * 0.008 = 6.4 -> 7
    assert bound_pixels((480, 854)) == 8
    assert bound_pixels((480, 640)) == 7
    assert bound_pixels((480, 640), 3) == 3  # >= 1: pixels


def test_boundary_f_by_hand():
    # single pixels at (2, 2) and (2, 4), tolerance 1 px (a plus-shaped disk):
    # boundaries {(1,1),(1,2),(2,1),(2,2)} and {(1,3),(1,4),(2,3),(2,4)}; dilating either by
    # one pixel reaches exactly two of the other's four pixels -> P = R = 0.5 -> F = 0.5
    a = box(8, 8, 2, 3, 2, 3)
    b = box(8, 8, 2, 3, 4, 5)
    assert boundary_f(a, b, bound_th=1) == pytest.approx(0.5)
    # three columns apart: nothing within 1 px -> F = 0
    assert boundary_f(a, box(8, 8, 2, 3, 5, 6), bound_th=1) == 0.0
    assert boundary_f(a, a, bound_th=1) == 1.0
    empty = np.zeros((8, 8), bool)
    assert boundary_f(empty, a) == 0.0 and boundary_f(a, empty) == 0.0
    assert boundary_f(empty, empty) == 1.0
    # default tolerance on a 480x854 frame is 8 px: a 5 px shift of a big square is perfect
    big = box(480, 854, 100, 300, 100, 400)
    assert boundary_f(np.roll(big, 5, axis=1), big) == 1.0
    assert boundary_f(np.roll(big, 20, axis=1), big) < 1.0


def test_sequence_scores_skip_first_and_last():
    gt = np.stack([box(4, 4, 0, 2, 0, 2)] * 4)
    pred = gt.copy()
    pred[1] = box(4, 4, 0, 1, 0, 2)  # J = 2/4
    pred[2] = box(4, 4, 0, 2, 0, 2)  # J = 1
    pred[3] = False  # last frame: not counted
    pred[0] = False  # first frame: not counted
    s = sequence_scores(pred, gt)
    assert s["J"] == pytest.approx(0.75)
    assert s["J_per_frame"] == pytest.approx([0.0, 0.5, 1.0, 0.0])
    assert s["JF"] == pytest.approx((s["J"] + s["F"]) / 2)
    with pytest.raises(ValueError, match="preds"):
        sequence_scores(pred[:3], gt)


def test_region_centre_largest_component():
    r = box(12, 12, 1, 6, 1, 6)  # 5x5 square: farthest from its border at (x=3, y=3)
    r |= box(12, 12, 9, 11, 9, 11)  # smaller 2x2 square elsewhere
    assert region_centre(r) == (3, 3)
    assert region_centre(np.zeros((4, 4), bool)) is None


def test_next_clicks():
    gt = box(12, 12, 1, 6, 1, 6)
    empty = np.zeros_like(gt)
    assert next_clicks(empty, gt) == [(3, 3, 1)]  # only missed pixels: one positive click
    wrong = gt | box(12, 12, 6, 11, 6, 11)  # a 5x5 wrong square whose centre is (8, 8)
    assert next_clicks(wrong, gt) == [(8, 8, 0)]
    both = box(12, 12, 1, 6, 1, 3) | box(12, 12, 7, 12, 7, 12)
    clicks = next_clicks(both, gt)
    assert [c[2] for c in clicks] == [1, 0]
    assert next_clicks(gt, gt) == []
