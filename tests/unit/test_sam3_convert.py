"""Every conversion the sam3 backend does, without sam3 or torch: coordinates, boxes, object id
mapping, output dicts -> full-resolution masks, and the propagation plan.

Usage: python3 -m pytest tests/unit/test_sam3_convert.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.sam.backends.base import propagation_windows
from services.sam.backends.sam3_convert import (
    Sam3Call,
    Sam3IdMap,
    call_frames,
    outputs_to_masks,
    pick_instance,
    plan_calls,
    points_abs_to_rel,
    points_rel_to_abs,
    resize_mask,
    xywh_norm_to_xyxy,
    xyxy_to_xywh_norm,
)


# ---- boxes and points ---------------------------------------------------------------------
def test_box_abs_xyxy_to_normalised_xywh() -> None:
    assert xyxy_to_xywh_norm([64, 48, 320, 240], width=640, height=480) == [
        pytest.approx([0.1, 0.1, 0.4, 0.4])
    ]


def test_box_is_clipped_to_the_image_and_stays_in_unit_range() -> None:
    (x, y, w, h) = xyxy_to_xywh_norm([-10, -5, 700, 500], width=640, height=480)[0]
    assert (x, y, w, h) == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("box", [[10, 10, 10, 50], [50, 10, 20, 40], [700, 10, 800, 40]])
def test_empty_box_is_refused_with_the_field_name(box) -> None:
    with pytest.raises(ValueError, match="box"):
        xyxy_to_xywh_norm(box, width=640, height=480)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(8, 2000),
    st.integers(8, 2000),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0.01, 1),
    st.floats(0.01, 1),
)
def test_box_round_trip(w, h, fx, fy, fw, fh) -> None:
    x0, y0 = fx * w * 0.9, fy * h * 0.9
    x1, y1 = min(w, x0 + fw * w * 0.1 + 1), min(h, y0 + fh * h * 0.1 + 1)
    xywh = xyxy_to_xywh_norm([x0, y0, x1, y1], w, h)[0]
    assert all(0 <= v <= 1 for v in xywh)
    assert xywh_norm_to_xyxy(xywh, w, h) == pytest.approx([x0, y0, x1, y1], abs=1e-6)


def test_points_abs_rel_round_trip_and_clip() -> None:
    pts = np.array([[0, 0], [320, 240], [639.5, 479.5]], np.float32)
    rel = points_abs_to_rel(pts, width=640, height=480)
    assert rel == [[0.0, 0.0], [0.5, 0.5], pytest.approx([639.5 / 640, 479.5 / 480])]
    np.testing.assert_allclose(points_rel_to_abs(rel, 640, 480), pts, atol=1e-4)
    assert points_abs_to_rel(np.array([[700.0, -3.0]]), 640, 480) == [[1.0, 0.0]]


# ---- masks -------------------------------------------------------------------------------
def test_resize_mask_nearest_keeps_blocks_and_accepts_1hw() -> None:
    low = np.zeros((1, 4, 4), bool)  # (1, h, w) as SAM3 keeps masks
    low[0, 1:3, 2:4] = True
    full = resize_mask(low, 8, 8)
    assert full.shape == (8, 8) and full.dtype == bool
    expect = np.zeros((8, 8), bool)
    expect[2:6, 4:8] = True
    np.testing.assert_array_equal(full, expect)
    same = np.eye(5, dtype=bool)
    assert resize_mask(same, 5, 5) is not None and (resize_mask(same, 5, 5) == same).all()


def test_resize_mask_non_integer_ratio_shape() -> None:
    m = np.ones((7, 9), bool)
    assert resize_mask(m, 480, 640).all()
    with pytest.raises(ValueError, match="mask"):
        resize_mask(np.ones((2, 3, 4), bool), 5, 5)


def _outputs(ids, masks):
    return {
        "out_obj_ids": np.asarray(ids, np.int64),
        "out_probs": np.ones(len(ids), np.float32),
        "out_boxes_xywh": np.zeros((len(ids), 4), np.float32),
        "out_binary_masks": np.asarray(masks, bool),
    }


def test_outputs_union_instances_into_the_concept_object() -> None:
    ids = Sam3IdMap("union")
    ids.start_concept(7)
    a = np.zeros((6, 8), bool)
    a[0, 0] = True
    b = np.zeros((6, 8), bool)
    b[5, 7] = True
    out = outputs_to_masks(_outputs([0, 3], [a, b]), ids, 6, 8, all_ids=[7])
    assert list(out) == [7]
    assert out[7][0, 0] and out[7][5, 7] and out[7].sum() == 2
    assert ids.sam3_ids(7) == [0, 3]


def test_outputs_separate_instances_take_fresh_ids_and_absent_objects_are_empty() -> None:
    ids = Sam3IdMap("separate")
    ids.start_concept(2)
    m = np.ones((1, 3, 4), bool)  # SAM3 low-res style (n, h, w) -> resized to full
    out = outputs_to_masks(_outputs([5, 9], [m[0], m[0]]), ids, 6, 8, all_ids=[2, 3])
    # 2 is the first instance; 3 is reserved (already known), so the second instance gets 4
    assert sorted(out) == [2, 3, 4]
    assert out[2].shape == (6, 8) and out[2].all() and out[4].all()
    assert not out[3].any()  # a known object absent on this frame: all False
    assert ids.external(5) == 2 and ids.external(9) == 4  # stable across frames


def test_outputs_none_or_empty_gives_empty_masks_for_known_ids() -> None:
    ids = Sam3IdMap()
    ids.start_concept(1)
    for outputs in (None, _outputs([], np.zeros((0, 4, 4)))):
        out = outputs_to_masks(outputs, ids, 4, 4, all_ids=[1])
        assert list(out) == [1] and not out[1].any()


def test_outputs_length_mismatch_is_an_error() -> None:
    ids = Sam3IdMap()
    ids.start_concept(1)
    bad = _outputs([1, 2], np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="out_obj_ids"):
        outputs_to_masks(bad, ids, 4, 4)


def test_id_map_point_objects_removal_and_dropped_ids() -> None:
    ids = Sam3IdMap("union")
    ids.start_concept(1)
    assert ids.external(0) == 1 and ids.external(1) == 1
    sid = ids.new_point_object(3, max_obj_id=4)  # above SAM3's max id and every known id
    assert sid == 5 and ids.external(sid) == 3
    with pytest.raises(ValueError, match="obj_id"):
        ids.new_point_object(3, max_obj_id=4)
    assert ids.remove(1) == [0, 1]
    assert ids.owner is None and ids.external_ids() == [3]
    assert ids.external(0) is None  # a removed instance re-detected later stays dropped
    assert ids.external(11) is None  # no concept owner any more: new detections ignored
    assert ids.new_point_object(4, max_obj_id=0) == 6  # never reuses dropped ids
    ids.start_concept(9)
    assert ids.external_ids() == [] and ids.external(0) == 9
    with pytest.raises(ValueError, match="text_instances"):
        Sam3IdMap("each")


def test_pick_instance_under_first_foreground_point() -> None:
    a = np.zeros((10, 10), bool)
    a[:, :5] = True
    b = np.zeros((10, 10), bool)
    b[:, 5:] = True
    cands = {4: a, 8: b}
    pts = np.array([[1, 1], [7, 2]], np.float32)
    assert pick_instance(cands, pts, np.array([0, 1])) == 8  # background point skipped
    assert pick_instance(cands, pts, np.array([1, 1])) == 4
    assert pick_instance(cands, pts, np.array([0, 0])) is None
    assert pick_instance({4: np.zeros((10, 10), bool)}, pts, np.array([1, 0])) is None


# ---- propagation plan ------------------------------------------------------------------------
def test_plan_both_from_one_keyframe_is_the_official_pattern() -> None:
    calls = plan_calls(propagation_windows({10}, 30, "both", None, None))
    assert calls == [Sam3Call(False, 10, 19, 10, 29), Sam3Call(True, 10, 10, 0, 9)]
    assert call_frames(calls[0]) == list(range(10, 30))
    assert call_frames(calls[1]) == list(range(9, -1, -1))


def test_plan_both_from_frame_zero_skips_the_empty_backward_pass() -> None:
    assert plan_calls(propagation_windows({0}, 5, "both", None, None)) == [
        Sam3Call(False, 0, 4, 0, 4)
    ]


def test_plan_backward_alone_includes_the_last_frame() -> None:
    (call,) = plan_calls(propagation_windows({4, 9}, 10, "backward", None, None))
    assert call.reverse and call_frames(call) == list(range(9, -1, -1))


def test_plan_keeps_a_backward_pass_that_starts_above_a_capped_forward_pass() -> None:
    windows = propagation_windows({0, 3}, 4, "both", None, 3)  # fwd [0, 2], bwd [1, 3]
    calls = plan_calls(windows)
    assert [call_frames(c) for c in calls] == [[0, 1, 2], [3, 2, 1]]


def test_plan_windows_errors() -> None:
    with pytest.raises(ValueError, match="direction"):
        plan_calls([("sideways", 0, 3)])
    with pytest.raises(ValueError, match="empty"):
        plan_calls([("forward", 3, 1)])


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.sets(st.integers(0, n - 1), min_size=1, max_size=4),
            st.sampled_from(["forward", "backward", "both"]),
            st.one_of(st.none(), st.integers(0, n - 1)),
            st.one_of(st.none(), st.integers(1, n + 2)),
        )
    )
)
def test_plan_covers_every_window_frame(args) -> None:
    n, keys, direction, start, max_frames = args
    windows = propagation_windows(keys, n, direction, start, max_frames)
    want = set()
    for _, lo, hi in windows:
        want |= set(range(lo, hi + 1))
    got = [t for c in plan_calls(windows) for t in call_frames(c)]
    assert set(got) == want and all(0 <= t < n for t in got)
    fwd = [(lo, hi) for d, lo, hi in windows if d == "forward"]
    bwd = [(lo, hi) for d, lo, hi in windows if d == "backward"]
    if not (fwd and bwd and bwd[0][1] > fwd[0][1]):
        # no frame computed twice unless a capped forward pass stops below the backward
        # start (then the backward pass must run through it to carry its memory)
        assert len(got) == len(set(got))
    for c in plan_calls(windows):
        frames = call_frames(c)
        assert (min(frames), max(frames)) == (c.first, c.last)
