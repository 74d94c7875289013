"""The classical sam backend on small synthetic moving scenes (real OpenCV, IoU asserted).

Usage: python3 -m pytest tests/unit/test_sam_classical.py -q
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.sam.backends import create_backend, propagation_windows
from services.sam.backends.base import Prompt
from services.sam.backends.classical import ClassicalBackend
from services.sam.backends.classical_ops import bbox
from services.sam.merge import plan_propagation

# What the session layer owns, per backend state (keyed by id): the tests play that layer.
KEYS: dict[int, dict[int, set[int]]] = {}  # obj_id -> prompted frames
HAVE: dict[int, dict[int, set[int]]] = {}  # obj_id -> frames with a result


def moving_scene(t_len: int = 24, h: int = 96, w: int = 128, seed: int = 0):
    """A textured table, a light-grey swinging 'arm' ending in a dark 'gripper', a red ellipse
    moving above it. Returns frames (T, H, W, 3) uint8 and GT masks (3, T, H, W) bool for
    [arm, gripper, target] (each object's visible pixels)."""
    rng = np.random.default_rng(seed)
    tex = cv2.resize(rng.integers(90, 170, (h // 6, w // 6, 3)).astype(np.uint8), (w, h))
    tex = (tex * np.array([1.0, 0.8, 0.6])).astype(np.uint8)  # wood-ish tint
    frames = np.zeros((t_len, h, w, 3), np.uint8)
    gt = np.zeros((3, t_len, h, w), bool)
    for t in range(t_len):
        img = tex.copy()
        target = np.zeros((h, w), np.uint8)
        cv2.ellipse(
            target, (int(20 + 1.5 * t), int(0.3 * h + 0.5 * t)), (11, 8), 5 * t, 0, 360, 1, -1
        )
        ang = np.deg2rad(-60 + 2.0 * t)
        base = np.array([w * 0.75, h + 5.0])
        tip = base + 0.8 * h * np.array([np.sin(ang), -np.cos(ang)])
        arm = np.zeros((h, w), np.uint8)
        cv2.line(arm, tuple(base.astype(int)), tuple(tip.astype(int)), 1, 9)
        grip = np.zeros((h, w), np.uint8)
        cv2.circle(grip, tuple(tip.astype(int)), 8, 1, -1)
        img[target > 0] = (200, 40, 35)
        img[arm > 0] = (190, 194, 202)
        img[grip > 0] = (60, 62, 70)
        noise = rng.normal(0, 4, img.shape)
        frames[t] = np.clip(img + noise, 0, 255).astype(np.uint8)
        gt[1, t] = grip > 0
        gt[0, t] = (arm > 0) & ~gt[1, t]
        gt[2, t] = (target > 0) & ~(arm > 0) & ~gt[1, t]
    return frames, gt


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def prompt(backend, state, frame, obj_id, points, labels, box, mask, text) -> dict:
    """add_prompt as the session layer sends it, recording the keyframe (of obj_id only)."""
    out = backend.add_prompt(state, Prompt(frame, obj_id, points, labels, box, mask, text))
    KEYS.setdefault(id(state), {}).setdefault(obj_id, set()).add(frame)
    for oid in out:
        HAVE.setdefault(id(state), {}).setdefault(oid, set()).add(frame)
    return out


def windows_of(backend, state, direction="both", start=None, max_frames=None):
    """The session layer's plan for this state (merge.plan_propagation)."""
    n = state.frames.shape[0]
    keys = KEYS.get(id(state), {})
    keys = {oid: k for oid, k in keys.items() if oid in state.objects}  # removed: gone
    present = {
        oid: np.isin(np.arange(n), sorted(f))
        for oid, f in HAVE.get(id(state), {}).items()
        if oid in state.objects
    }
    return plan_propagation(keys, present, n, direction, start, max_frames).windows


def run(backend, state, direction="both", start=None, max_frames=None) -> dict:
    out: dict[tuple[int, int], np.ndarray] = {}
    windows = windows_of(backend, state, direction, start, max_frames)
    for t, per in backend.propagate(state, windows):
        for oid, m in per.items():
            out[(oid, t)] = m
            HAVE.setdefault(id(state), {}).setdefault(oid, set()).add(t)
    return out


def box_of(m: np.ndarray, pad: int = 2) -> np.ndarray:
    x0, y0, x1, y1 = bbox(m)
    return np.array([x0 - pad, y0 - pad, x1 + pad, y1 + pad], np.float32).clip(0, None)


@pytest.fixture(autouse=True)
def _fresh_session_tables():
    KEYS.clear()  # keyed by id(state): ids of dead states may come back
    HAVE.clear()


@pytest.fixture(scope="module")
def scene():
    return moving_scene()


@pytest.fixture()
def backend():
    b = ClassicalBackend()
    b.setup()
    return b


def test_box_prompts_track_moving_objects(scene, backend):
    frames, gt = scene
    st = backend.init_state(frames)
    for i in range(3):
        m = prompt(backend, st, 0, i + 1, None, None, box_of(gt[i, 0]), None, None)[i + 1]
        assert iou(m, gt[i, 0]) > 0.8, f"object {i} init"
    res = run(backend, st, "forward")
    assert {t for _, t in res} == set(range(len(frames)))
    for i in range(3):
        ious = [iou(res[(i + 1, t)], gt[i, t]) for t in range(len(frames))]
        assert np.mean(ious) >= 0.85, (i, np.round(ious, 2))


def test_point_prompts_segment(scene, backend):
    frames, gt = scene
    st = backend.init_state(frames)
    ys, xs = np.nonzero(cv2.erode(gt[2, 0].astype(np.uint8), np.ones((5, 5))))
    pts = np.array([[xs[len(xs) // 2], ys[len(ys) // 2]]], np.float32)
    m = prompt(backend, st, 0, 7, pts, np.array([1], np.int32), None, None, None)[7]
    assert iou(m, gt[2, 0]) > 0.8


def test_negative_point_cuts_region(scene, backend):
    frames, gt = scene
    st = backend.init_state(frames)
    both = gt[0, 0] | gt[1, 0]
    m0 = prompt(backend, st, 0, 1, None, None, box_of(both), None, None)[1]
    ys, xs = np.nonzero(cv2.erode(gt[1, 0].astype(np.uint8), np.ones((3, 3))))
    neg = np.array([[xs[0], ys[0]]], np.float32)
    m1 = prompt(backend, st, 0, 1, neg, np.array([0], np.int32), None, None, None)[1]
    assert (m1 & gt[1, 0]).sum() < (m0 & gt[1, 0]).sum()
    assert iou(m1, gt[0, 0]) > 0.7


def _two_squares(n: int = 16):
    """A static video with two identical grey squares; masks A (left) and B (right)."""
    img = np.full((48, 64, 3), (120, 90, 60), np.uint8)
    img[10:26, 6:22] = (220, 220, 220)
    img[10:26, 40:56] = (220, 220, 220)
    a = np.zeros((48, 64), bool)
    a[10:26, 6:22] = True
    b = np.zeros((48, 64), bool)
    b[10:26, 40:56] = True
    return np.repeat(img[None], n, axis=0), a, b


@pytest.mark.parametrize(
    ("direction", "expect"),
    [
        # frame -> which keyframe's mask (0 -> A, 10 -> B); the rule: nearest, ties forward
        ("both", {**{t: "A" for t in range(0, 6)}, **{t: "B" for t in range(6, 16)}}),
        ("forward", {**{t: "A" for t in range(0, 10)}, **{t: "B" for t in range(10, 16)}}),
        ("backward", {0: "A", **{t: "B" for t in range(1, 11)}}),
    ],
)
def test_nearest_keyframe_rule(backend, direction, expect):
    frames, a, b = _two_squares()
    st = backend.init_state(frames)
    prompt(backend, st, 0, 1, None, None, None, a, None)
    prompt(backend, st, 10, 1, None, None, None, b, None)
    res = run(backend, st, direction)
    got = {
        t: ("A" if iou(m, a) > 0.9 else "B" if iou(m, b) > 0.9 else "?")
        for (_, t), m in res.items()
    }
    assert got == expect


def test_new_object_after_propagation_keeps_old_results(scene):
    frames, gt = scene
    backend = ClassicalBackend(non_overlap=False)  # objects independent: results reproducible
    st = backend.init_state(frames)
    prompt(backend, st, 0, 1, None, None, box_of(gt[2, 0]), None, None)
    first = run(backend, st)
    mid = len(frames) // 2
    prompt(backend, st, mid, 2, None, None, box_of(gt[1, mid]), None, None)
    second = run(backend, st)
    assert {o for o, _ in second} == {2}  # independent objects: the unchanged one is kept
    for t in range(len(frames)):
        kept = np.unpackbits(st.objects[1].results[t], axis=-1, count=frames.shape[2])
        assert np.array_equal(first[(1, t)], kept.astype(bool))
    st2 = backend.init_state(frames)  # deterministic: a fresh session computes the same masks
    prompt(backend, st2, 0, 1, None, None, box_of(gt[2, 0]), None, None)
    assert all(np.array_equal(m, first[k]) for k, m in run(backend, st2).items())
    ious = [iou(second[(2, t)], gt[1, t]) for t in range(len(frames))]
    assert np.mean(ious) >= 0.8, np.round(ious, 2)


def test_repeated_propagation_is_skipped_but_reprompt_recomputes(scene, backend):
    frames, gt = scene
    st = backend.init_state(frames)
    prompt(backend, st, 0, 1, None, None, box_of(gt[2, 0]), None, None)
    prompt(backend, st, 0, 2, None, None, box_of(gt[1, 0]), None, None)
    first = run(backend, st)
    assert run(backend, st) == {}  # a retried call: nothing changed, stored results stand
    prompt(backend, st, 5, 2, None, None, box_of(gt[1, 5]), None, None)
    again = run(backend, st)
    assert {o for o, _ in again} == {1, 2}  # objects are tracked jointly: both recomputed
    assert np.array_equal(again[(1, 0)], first[(1, 0)])


def test_windows_limit_frames(scene, backend):
    frames, gt = scene
    st = backend.init_state(frames)
    prompt(backend, st, 0, 1, None, None, None, None if False else gt[2, 0], None)
    res = run(backend, st, "forward", start=None, max_frames=5)
    assert sorted(t for _, t in res) == [0, 1, 2, 3, 4]
    # continue from where it stopped: the earlier result on frame 4 seeds frame 5
    res2 = run(backend, st, "forward", start=5, max_frames=3)
    assert sorted(t for _, t in res2) == [5, 6, 7]
    assert iou(res2[(1, 7)], gt[2, 7]) > 0.8
    assert propagation_windows({3, 9}, 20, "both", None, None) == [
        ("forward", 3, 19),
        ("backward", 0, 9),
    ]
    assert propagation_windows({3}, 20, "both", 10, 4) == [("forward", 10, 13), ("backward", 7, 10)]


def test_remove_and_reset(scene, backend):
    frames, gt = scene
    st = backend.init_state(frames)
    prompt(backend, st, 0, 1, None, None, box_of(gt[2, 0]), None, None)
    prompt(backend, st, 0, 2, None, None, box_of(gt[0, 0]), None, None)
    backend.remove_object(st, 1)
    assert {o for o, _ in run(backend, st, max_frames=2)} == {2}
    backend.reset(st)
    KEYS.pop(id(st))  # the session layer forgets the prompts with the backend
    with pytest.raises(ValueError, match="add_prompt first"):
        run(backend, st)


def test_segment_image_boxes_and_points(scene, backend):
    frames, gt = scene
    out = backend.segment_image(
        frames[3], np.stack([box_of(gt[2, 3]), box_of(gt[1, 3])]), None, None
    )
    assert out.shape == (2, 96, 128) and out.dtype == bool
    assert iou(out[0], gt[2, 3]) > 0.8 and iou(out[1], gt[1, 3]) > 0.7


def test_options_are_checked():
    with pytest.raises(ValueError, match="flow_scal: unknown field; valid fields are .*flow_scale"):
        create_backend("classical", {"flow_scal": 0.5})
    with pytest.raises(ValueError, match="cpu"):
        create_backend("classical", {"device": "cuda"})
    with pytest.raises(ValueError, match="unknown 'nope'"):
        create_backend("nope")
