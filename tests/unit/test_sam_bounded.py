"""Bounded re-propagation, progress, masks during a propagation and the keyframe ownership of
the sam session layer (services/sam/sessions.py + merge.plan_propagation), with the real
classical backend and a recording test double.

Usage: python3 -m pytest tests/unit/test_sam_bounded.py -q
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from protocol.errors import BadRequest, Unsupported
from protocol.masks import unpack
from services.sam.backends.base import PassMasks, SamBackend
from services.sam.backends.classical import ClassicalBackend
from services.sam.merge import plan_propagation
from services.sam.sessions import SessionManager
from tests.unit.test_sam_classical import box_of, moving_scene

T = 24


@pytest.fixture(scope="module")
def scene():
    return moving_scene(T)


def session(backend, frames) -> tuple[SessionManager, str]:
    mgr = SessionManager(backend)
    n, h, w = frames.shape[:3]
    sid = mgr.start(h, w, n)
    mgr.put_frames(sid, 0, frames)
    return mgr, sid


def all_masks(mgr: SessionManager, sid: str) -> np.ndarray:
    ids, _, _, packed = mgr.masks(sid)
    return unpack(packed, mgr.get(sid).width)  # (n_obj, T, H, W) bool


def test_plan_of_a_correction_covers_only_the_frames_it_is_nearest_to():
    # keyframes 0 and 12 (new, serial 2); frames 0-23 made by the prompt on 0 (serial 1)
    keys = {1: {0: 1, 12: 2}}
    present = {1: np.ones(T, bool)}
    made_by = {1: np.ones(T, np.int64)}
    made_by[1][12] = 2  # the prompt frame itself holds the new prompt's mask
    plan = plan_propagation(keys, present, T, "both", None, None, made_by, bounded=True)
    got = [(w.direction, w.lo, w.hi) for w in plan.windows]
    # 7-11 are nearer to 12 (backward pass), 13-23 follow 12 (forward); 6 is a tie: forward
    # from 0, unchanged; 12 itself holds its prompt mask already
    assert got == [("forward", 13, 23), ("backward", 7, 11)]
    assert np.flatnonzero(plan.recompute[1]).tolist() == [*range(7, 12), *range(13, 24)]
    assert plan.windows[1].sources[1][7:12].tolist() == [5, 4, 3, 2, 1]  # distance to 12
    assert plan.windows[0].sources[1][13] == 1 and plan.windows[0].sources[1][12] == -1
    # a later keyframe re-prompted (serial 3): its whole reach, not the other keyframe's
    keys = {1: {0: 1, 12: 3}}
    made_by[1][7:] = 2
    made_by[1][12] = 3
    plan = plan_propagation(keys, present, T, "both", None, None, made_by, bounded=True)
    assert [(w.direction, w.lo, w.hi) for w in plan.windows] == [
        ("forward", 13, 23),
        ("backward", 7, 11),
    ]
    unbounded = plan_propagation(keys, present, T, "both", None, None)
    assert [(w.lo, w.hi) for w in unbounded.windows] == [(0, 23), (0, 12)]
    with pytest.raises(ValueError, match="made_by"):
        plan_propagation(keys, present, T, "both", None, None, None, bounded=True)


def test_bounded_correction_recomputes_its_span_and_matches_a_full_run(scene):
    """Classical without non-overlap is deterministic per object: a bounded re-propagation after
    a correction must give exactly what a fresh full propagation with both prompts gives, while
    recomputing only the frames nearer to the correction (the tracker keeps the object here,
    so the lost_area stop of the tests below does not fire)."""
    frames, gt = scene
    backend = ClassicalBackend(non_overlap=False)
    mgr, sid = session(backend, frames)
    mgr.add_prompt(sid, 0, 1, box=box_of(gt[2, 0]).tolist())
    first = mgr.propagate(sid, "both")
    assert (first.recomputed, first.spans) == (T, [[1, 0, T]])
    before = all_masks(mgr, sid)[0]
    mgr.add_prompt(sid, 12, 1, mask=gt[2, 12])  # the correction: a new keyframe
    r = mgr.propagate(sid, "both", bounded=True)
    assert (r.recomputed, r.spans) == (16, [[1, 7, 12], [1, 13, T]])
    after = all_masks(mgr, sid)[0]
    assert np.array_equal(after[:7], before[:7])  # frames nearer to frame 0: untouched
    assert np.array_equal(after[12], gt[2, 12])
    fresh, fsid = session(ClassicalBackend(non_overlap=False), frames)
    fresh.add_prompt(fsid, 0, 1, box=box_of(gt[2, 0]).tolist())
    fresh.add_prompt(fsid, 12, 1, mask=gt[2, 12])
    fresh.propagate(fsid, "both")
    assert np.array_equal(all_masks(fresh, fsid)[0], after)  # the same result, less work
    again = mgr.propagate(sid, "both", bounded=True)
    assert (again.recomputed, again.spans) == (0, [])  # nothing changed since


def test_bounded_with_non_overlap_lets_the_stored_objects_compete(scene):
    frames, gt = scene
    mgr, sid = session(ClassicalBackend(), frames)
    mgr.add_prompt(sid, 0, 1, box=box_of(gt[0, 0]).tolist())  # arm
    mgr.add_prompt(sid, 0, 2, box=box_of(gt[1, 0]).tolist())  # gripper
    mgr.propagate(sid, "both")
    before = all_masks(mgr, sid)
    grown = gt[0, 16] | np.roll(gt[1, 16], 2, axis=1)  # a correction that claims gripper pixels
    mgr.add_prompt(sid, 16, 1, mask=grown)
    s = mgr.get(sid)
    assert sorted(s.keyframes[1]) == [0, 16] and sorted(s.keyframes[2]) == [0]
    assert sorted(s.keyframes[2]) == sorted(s.state.objects[2].keymasks)  # one owner, agreeing
    r = mgr.propagate(sid, "both", bounded=True)
    spans = {(o, a, b) for o, a, b in r.spans}
    assert (1, 9, 16) in spans and (1, 17, T) in spans
    assert all(9 <= a and b <= T for _, a, b in spans)  # object 2 only where 1 was redone
    after = all_masks(mgr, sid)
    assert np.array_equal(after[:, :8], before[:, :8])
    assert not (after[0] & after[1]).any()  # one object per pixel, also on the redone frames


class WindowsDouble(SamBackend):
    """TEST DOUBLE: yields every object on every frame of each window (like SAM2, it ignores
    `sources`), a mask whose row 0 is lit; records the windows; may block at one frame."""

    name = "windows-test-double"
    prompt_kinds = frozenset({"mask"})
    capabilities = frozenset({"bounded"})

    def __init__(self, pause_at: int | None = None) -> None:
        self.windows: list = []
        self.pause_at = pause_at
        self.reached = threading.Event()
        self.go = threading.Event()

    def init_state(self, frames):
        return {"objs": set()}

    def add_prompt(self, state, prompt):
        state["objs"].add(prompt.obj_id)
        return {prompt.obj_id: prompt.mask}

    def propagate(self, state, windows):
        self.windows.append([(w.direction, w.lo, w.hi) for w in windows])
        for w in windows:
            for t in w.frames:
                if t == self.pause_at:
                    self.reached.set()
                    assert self.go.wait(10)
                m = np.zeros((4, 8), bool)
                m[0] = True
                yield t, PassMasks(w.direction, {o: m for o in state["objs"]})

    def remove_object(self, state, obj_id):
        state["objs"].discard(obj_id)

    def reset(self, state):
        state["objs"].clear()


def prompt_mask() -> np.ndarray:
    m = np.zeros((4, 8), bool)
    m[3] = True
    return m


def test_a_backend_computing_everything_only_stores_the_planned_frames():
    b = WindowsDouble()
    mgr, sid = session(b, np.zeros((12, 4, 8, 3), np.uint8))
    mgr.add_prompt(sid, 0, 1, mask=prompt_mask())
    mgr.add_prompt(sid, 0, 2, mask=prompt_mask())
    mgr.propagate(sid, "forward")
    mgr.add_prompt(sid, 8, 1, mask=prompt_mask())
    r = mgr.propagate(sid, "both", bounded=True)
    assert b.windows[-1] == [("forward", 9, 11), ("backward", 5, 7)]  # runs of the plan
    assert r.recomputed == 6 and r.spans == [[1, 5, 8], [1, 9, 12], [2, 5, 8], [2, 9, 12]]
    with pytest.raises(Unsupported, match="bounded: backend 'classical' has no 'bounded'"):
        nob = ClassicalBackend()
        nob.capabilities = frozenset()
        m2, s2 = session(nob, np.zeros((3, 4, 8, 3), np.uint8))
        m2.add_prompt(s2, 0, 1, mask=prompt_mask())
        m2.propagate(s2, bounded=True)


def test_masks_and_progress_answer_while_a_propagation_runs():
    b = WindowsDouble(pause_at=5)
    mgr, sid = session(b, np.zeros((12, 4, 8, 3), np.uint8))
    mgr.add_prompt(sid, 0, 1, mask=prompt_mask())
    calls: list[tuple[int, int]] = []
    th = threading.Thread(
        target=lambda: mgr.propagate(sid, "forward", on_progress=lambda d, t: calls.append((d, t)))
    )
    assert mgr.progress(sid) == {"propagating": False, "done": 0, "total": 0, "direction": None}
    th.start()
    try:
        assert b.reached.wait(10)
        p = mgr.progress(sid)  # the session lock is held by the propagation
        assert p == {"propagating": True, "done": 5, "total": 12, "direction": "forward"}
        ids, start, stop, packed, computed = mgr.read_masks(sid)
        assert ids == [1] and computed[0].tolist() == [True] * 5 + [False] * 7
        m = unpack(packed, 8)[0]
        assert m[1:5, 0].all() and not m[5:].any()  # stored so far; the rest still empty
    finally:
        b.go.set()
        th.join(10)
    assert mgr.progress(sid) == {
        "propagating": False,
        "done": 12,
        "total": 12,
        "direction": "forward",
    }
    assert calls == [(d, 12) for d in range(1, 13)]  # after each frame, then all done
    assert mgr.read_masks(sid)[4].all()


def test_close_sessions_by_prefix():
    mgr = SessionManager(WindowsDouble())
    for name in ("run-abc123-ep0", "run-abc123-ep1", "run-xyz999-ep0"):
        mgr.start(4, 8, 2, session=name)
    with pytest.raises(BadRequest, match="prefix: 'run-' is shorter than 8"):
        mgr.close_sessions("run-")
    assert mgr.close_sessions("run-abc123") == ["run-abc123-ep0", "run-abc123-ep1"]
    assert [d["session"] for d in mgr.describe()] == ["run-xyz999-ep0"]
    assert mgr.close_sessions("run-abc123") == []


class TextWithoutCapability(WindowsDouble):
    """TEST DOUBLE with a contradiction: the text prompt kind but no text_prompts capability."""

    prompt_kinds = frozenset({"mask", "text"})


def test_capabilities_are_declared_consistently(monkeypatch):
    from services.sam.backends import BACKENDS, create_backend
    from services.sam.backends.base import Prompt, Window

    monkeypatch.setitem(BACKENDS, "bad-caps", f"{__name__}:TextWithoutCapability")
    with pytest.raises(TypeError, match="text_prompts exactly when 'text' is a prompt kind"):
        create_backend("bad-caps")
    mgr = SessionManager(WindowsDouble())
    with pytest.raises(Unsupported, match="segment_image: backend 'windows-test-double' has no"):
        mgr.check_capability("segment_image", "segment_image", "use backend sam2 or classical")
    assert Prompt(0, 1, box=np.zeros(4, np.float32), text="arm").kinds == ["box", "text"]
    w = Window("backward", 2, 5)
    assert list(w.frames) == [5, 4, 3, 2] and len(w) == 4
    with pytest.raises(ValueError, match="'forward' or 'backward'"):
        Window("both", 0, 1)


class RestartingDouble(WindowsDouble):
    """TEST DOUBLE of SAM3's concept prompts: a text prompt restarts the model's session and
    finds two instances (the caller's id and the next one)."""

    prompt_kinds = frozenset({"mask", "text"})
    capabilities = frozenset({"text_prompts"})

    def restarts(self, prompt):
        return prompt.text is not None

    def add_prompt(self, state, prompt):
        if prompt.text is None:
            return super().add_prompt(state, prompt)
        m = np.zeros((4, 8), bool)
        m[2] = True
        state["objs"] = {prompt.obj_id, prompt.obj_id + 1}
        return {prompt.obj_id: m, prompt.obj_id + 1: m}


def test_a_restarting_prompt_replaces_the_keyframes_and_new_instances_get_one():
    mgr, sid = session(RestartingDouble(), np.zeros((6, 4, 8, 3), np.uint8))
    mgr.add_prompt(sid, 0, 1, mask=prompt_mask())
    mgr.add_prompt(sid, 1, 1, mask=prompt_mask())
    mgr.add_prompt(sid, 3, 1, text="robot arm")
    kf = mgr.get(sid).keyframes
    assert {o: sorted(k) for o, k in kf.items()} == {1: [3], 2: [3]}
    assert mgr.propagate(sid, "forward").spans == [[1, 3, 6], [2, 3, 6]]  # from frame 3 on


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / u if u else 1.0


def test_where_a_correction_loses_the_object_its_re_propagation_stops(scene):
    """Frames 18-22 are re-sent without the target (painted over with the table), so the
    tracker started from the correction on frame 23 finds nothing there: from the first frame
    where its mask falls under lost_area x the stored one, the stored masks stay."""
    frames, gt = scene
    bare = frames.copy()
    bare[18:23][gt[2, 18:23]] = frames[0][~gt[:, 0].any(0)].mean(0).astype(np.uint8)
    results = {}
    for lost_area in (0.5, 0.0):  # the default, and off
        mgr, sid = session(ClassicalBackend(non_overlap=False, lost_area=lost_area), frames)
        mgr.add_prompt(sid, 0, 1, mask=gt[2, 0])
        mgr.propagate(sid, "forward")
        before = all_masks(mgr, sid)[0]
        mgr.put_frames(sid, 18, bare[18:23])
        mgr.add_prompt(sid, 23, 1, mask=gt[2, 23])  # the correction: a new keyframe
        mgr.propagate(sid, "both", bounded=True)
        results[lost_area] = before, all_masks(mgr, sid)[0]
    before, kept = results[0.5]
    _, lost = results[0.0]
    assert min(_iou(before[t], gt[2, t]) for t in range(12, 23)) > 0.8  # the stored masks
    assert lost[20:23].sum() < 0.2 * gt[2, 20:23].sum()  # unguarded: the object is lost
    assert np.array_equal(kept[12:23], before[12:23])  # guarded: the stored masks stay
    assert np.array_equal(kept[23], gt[2, 23])


def test_a_correction_that_shrinks_the_mask_carries_on(scene):
    """The stored masks hold the target and the arm (one prompt on both); the correction on
    frame 12 keeps the target alone, a quarter of the area. Its re-propagation is compared
    with the stored masks scaled by that change, so it is not taken for a lost object: the
    same masks as with the stop off, the arm gone."""
    frames, gt = scene
    out = {}
    for lost_area in (0.5, 0.0):
        mgr, sid = session(ClassicalBackend(non_overlap=False, lost_area=lost_area), frames)
        both = gt[2, 0] | gt[0, 0] | gt[1, 0]
        mgr.add_prompt(sid, 0, 1, mask=both)
        mgr.propagate(sid, "forward")
        before = all_masks(mgr, sid)[0]
        mgr.add_prompt(sid, 12, 1, mask=gt[2, 12])
        mgr.propagate(sid, "both", bounded=True)
        out[lost_area] = before, all_masks(mgr, sid)[0]
    before, after = out[0.5]
    assert gt[2, 12].sum() < 0.5 * before[12].sum()  # a big change on the keyframe
    assert np.array_equal(after, out[0.0][1])  # the stop did not fire
    assert min(_iou(after[t], gt[2, t]) for t in range(7, 24)) > 0.7  # the target alone
