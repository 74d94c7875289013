"""The both-direction merge rule in the sam session layer (services/sam/merge.py), for every
backend: a test double backend yields conflicting forward and backward results and the
SessionManager must keep, per (object, frame), the pass nearer to a keyframe, ties forward.
The real classical backend through the session keeps its cross-pass non-overlap updates.
Also: info's describe() during a propagation, backend ValueErrors of remove/reset.

Usage: python3 -m pytest tests/unit/test_sam_merge.py -q
"""

from __future__ import annotations

import sys
import threading

import cv2
import numpy as np
import pytest

from protocol.errors import BadRequest
from protocol.masks import unpack
from services.sam.backends.base import (
    PassMasks,
    SamBackend,
    forward_owns,
    pass_distances,
)
from services.sam.backends.classical import ClassicalBackend
from services.sam.sessions import SessionManager

H, W, T = 4, 8, 12
ROW = {"forward": 0, "backward": 1, "prompt": 2}  # the row a mask lights up says who made it


def mark(who: str) -> np.ndarray:
    m = np.zeros((H, W), bool)  # (H, W)
    m[ROW[who]] = True
    return m


class PassesTestDouble(SamBackend):
    """TEST DOUBLE, not a segmenter: every pass yields every object on every frame of its
    window, with a mask that says which pass made it (row 0 forward, row 1 backward), so the
    two passes of `both` conflict on every frame they share.

    order: "windows" (the contract: propagation_windows order) or "reversed" (backward
    first: the rule must not depend on order). backward_below: the backward pass only yields
    frames below it (like SAM3's `both`). untagged: yield plain dicts (a contract breach).
    fail: remove_object / reset raise ValueError. new_objects: new ids added per frame.
    on_yield: called (frame) before each yield, while the session lock is held.
    """

    name = "passes-test-double"
    prompt_kinds = frozenset({"mask"})

    def __init__(
        self,
        order: str = "windows",
        backward_below: int | None = None,
        untagged: bool = False,
        fail: bool = False,
        new_objects: int = 0,
        on_yield=None,
    ) -> None:
        self.order = order
        self.backward_below = backward_below
        self.untagged = untagged
        self.fail = fail
        self.new_objects = new_objects
        self.on_yield = on_yield

    def init_state(self, frames):
        return {"n": frames.shape[0], "keys": set()}

    def add_prompt(self, state, prompt):
        state["keys"].add(prompt.obj_id)  # which objects exist (keyframes: the session's)
        return {prompt.obj_id: mark("prompt")}

    def propagate(self, state, windows):
        if self.order == "reversed":
            windows = windows[::-1]
        extra = iter(range(1000, 10**6))  # new ids, `new_objects` more on every frame
        for w in windows:
            d = w.direction
            for t in w.frames:
                if d == "backward" and self.backward_below is not None and t >= self.backward_below:
                    continue
                masks = {oid: mark(d) for oid in state["keys"]}
                masks.update({next(extra): mark(d) for _ in range(self.new_objects)})
                if self.on_yield is not None:
                    self.on_yield(t)
                yield t, masks if self.untagged else PassMasks(d, masks)

    def remove_object(self, state, obj_id):
        if self.fail:
            raise ValueError(f"obj_id: {obj_id} is tracked jointly; reset_session instead")
        state["keys"].discard(obj_id)

    def reset(self, state):
        if self.fail:
            raise ValueError("reset: not while exporting")
        state["keys"].clear()

    def segment_image(self, image, boxes, points, labels):
        raise ValueError("segment_image: not in this test double")


def session(backend: SamBackend, keyframes: dict[int, list[int]]) -> tuple[SessionManager, str]:
    mgr = SessionManager(backend)
    sid = mgr.start(H, W, T)
    mgr.put_frames(sid, 0, np.zeros((T, H, W, 3), np.uint8))  # (T, H, W, 3)
    for oid, frames in keyframes.items():
        for f in frames:
            mgr.add_prompt(sid, f, oid, mask=mark("prompt"))
    return mgr, sid


def who(mgr: SessionManager, sid: str) -> dict[int, str]:
    """obj_id -> one letter per frame: F forward, B backward, P prompt, . nothing."""
    ids, _, _, packed = mgr.masks(sid)
    masks = unpack(packed, W)  # (n_obj, T, H, W) bool
    letters = {0: "F", 1: "B", 2: "P"}
    out = {}
    for oid, per in zip(ids, masks, strict=True):
        rows = [np.flatnonzero(m.any(axis=1)) for m in per]
        out[oid] = "".join(letters[int(r[0])] if len(r) else "." for r in rows)
    return out


# obj 1: keyframes 2 and 8; obj 2: keyframe 5. Windows of `both`: forward [2, 11], backward
# [0, 8]. Frame 5 of obj 1 is 3 from each keyframe (tie: forward); 6-7 are nearer to 8.
KEYS = {1: [2, 8], 2: [5]}
BOTH = {1: "BBFFFFBBFFFF", 2: "BBBBBFFFFFFF"}


@pytest.mark.parametrize("order", ["windows", "reversed"])
def test_both_keeps_each_objects_nearest_keyframes_pass(order):
    mgr, sid = session(PassesTestDouble(order=order), KEYS)
    r = mgr.propagate(sid, "both")
    assert (r.frames, r.obj_ids, r.recomputed) == (T, [1, 2], T)
    assert r.spans == [[1, 0, T], [2, 0, T]]
    assert who(mgr, sid) == BOTH


@pytest.mark.parametrize(
    ("direction", "expect"),
    [  # one pass: every yield stands; frames outside its window keep what they had
        ("forward", {1: "..FFFFFFFFFF", 2: "..FFFFFFFFFF"}),
        ("backward", {1: "BBBBBBBBB...", 2: "BBBBBBBBB..."}),
    ],
)
def test_one_direction_keeps_every_yield(direction, expect):
    mgr, sid = session(PassesTestDouble(), KEYS)
    mgr.propagate(sid, direction)
    assert who(mgr, sid) == expect


def test_a_frame_only_the_other_pass_reached_keeps_its_result():
    # like SAM3's `both`: the backward pass runs only below the forward window (frames 0-1),
    # so frames the rule gives to backward (obj 1: 6-7, obj 2: 2-4) keep the forward result
    mgr, sid = session(PassesTestDouble(backward_below=2), KEYS)
    mgr.propagate(sid, "both")
    assert who(mgr, sid) == {1: "BBFFFFFFFFFF", 2: "BBFFFFFFFFFF"}


def test_each_propagate_call_replaces_the_earlier_results():
    mgr, sid = session(PassesTestDouble(), KEYS)
    mgr.propagate(sid, "backward")
    mgr.propagate(sid, "both")  # a rank of the earlier call does not protect its results
    assert who(mgr, sid) == BOTH


def test_untagged_yields_are_a_backend_error():
    mgr, sid = session(PassesTestDouble(untagged=True), KEYS)
    with pytest.raises(RuntimeError, match=r"yield base.PassMasks\(direction, masks\)"):
        mgr.propagate(sid, "both")


def test_pass_distances_match_a_frame_by_frame_walk():
    def walk(keys, n, d, lo, hi, cont):  # the reference: walk the window in processing order
        step = 1 if d == "forward" else -1
        first, last = (lo, hi) if step == 1 else (hi, lo)
        out = np.full(n, -1, np.int64)
        src, off = (first - step, n) if cont else (None, 0)
        for t in range(first, last + step, step):
            if t in keys:
                src, off = t, 0
            if src is not None:
                out[t] = abs(t - src) + off
        return out

    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 20))
        keys = set(rng.integers(0, n, int(rng.integers(0, 4))).tolist())
        lo, hi = sorted(rng.integers(0, n, 2).tolist())
        for d in ("forward", "backward"):
            for cont in (False, True):
                got = pass_distances(keys, n, d, lo, hi, cont)
                assert np.array_equal(got, walk(keys, n, d, lo, hi, cont)), (keys, n, d, lo, hi)
    f = pass_distances({2, 8}, T, "forward", 2, 11)
    b = pass_distances({2, 8}, T, "backward", 0, 8)
    owner = np.where(forward_owns(f, b), "F", np.where(b >= 0, "B", "."))
    assert "".join(owner) == BOTH[1]
    with pytest.raises(ValueError, match="'forward' or 'backward'"):
        PassMasks("both")


def test_backend_value_errors_of_remove_and_reset_are_bad_requests():
    mgr, sid = session(PassesTestDouble(fail=True), KEYS)
    with pytest.raises(BadRequest, match="remove_object: obj_id: 1 is tracked jointly"):
        mgr.remove_object(sid, 1)
    with pytest.raises(BadRequest, match="reset_session: reset: not while exporting"):
        mgr.reset(sid)
    assert mgr.get(sid).obj_ids == [1, 2]  # nothing was dropped


def test_describe_during_a_propagation_adding_objects():
    """info's describe() runs on another worker while a propagation adds result stores; it
    must neither wait for the session lock nor trip over a table changing under it."""
    seen: list[list[int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def info_loop() -> None:
        try:
            while not stop.is_set():
                mgr.describe()
        except BaseException as e:  # noqa: BLE001 - the failure under test
            errors.append(e)

    def on_yield(t: int) -> None:
        if t == 5:  # the lock is held here: describe from another thread must not block
            th = threading.Thread(target=lambda: seen.append(mgr.describe()[0]["obj_ids"]))
            th.start()
            th.join(5.0)
            assert not th.is_alive(), "describe() blocked on the session lock"

    backend = PassesTestDouble(new_objects=20, on_yield=on_yield)
    mgr, sid = session(backend, KEYS)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so a racy read shows up
    loop = threading.Thread(target=info_loop)
    loop.start()
    try:
        for _ in range(5):
            mgr.propagate(sid, "both")
            mgr.reset(sid)
            for oid, frames in KEYS.items():
                for f in frames:
                    mgr.add_prompt(sid, f, oid, mask=mark("prompt"))
    finally:
        stop.set()
        loop.join()
        sys.setswitchinterval(old)
    assert not errors, errors
    assert seen and all(ids[:2] == [1, 2] and len(ids) > 2 for ids in seen)
    (d,) = mgr.describe()
    assert (d["obj_ids"], d["received"]) == ([1, 2], T)
    assert d["bytes"] == T * H * W * 3 + 2 * T * H * ((W + 7) // 8)


def test_classical_through_the_session_keeps_what_the_backend_settled_on():
    """classical resolves overlaps with the other pass's objects and re-yields those it
    carved, tagged with the pass that owns them: the session must keep those updates."""
    from tests.unit.test_sam_classical import moving_scene

    frames, gt = moving_scene()
    n, h, w = frames.shape[:3]
    backend = ClassicalBackend()
    counts: dict[tuple[str, int, int], int] = {}
    inner = backend.propagate

    def counting(state, windows):
        for t, masks in inner(state, windows):
            for oid in masks:
                key = (masks.direction, t, oid)
                counts[key] = counts.get(key, 0) + 1
            yield t, masks

    backend.propagate = counting
    mgr = SessionManager(backend)
    sid = mgr.start(h, w, n)
    mgr.put_frames(sid, 0, frames)
    # mask prompts 6 px larger than the objects, so the objects compete for pixels (the
    # local tracker and the box prompts hug the objects tightly: nothing would overlap)
    grow = np.ones((13, 13), np.uint8)
    for oid, role, keys in ((1, 0, (0, 12)), (2, 1, (6,)), (3, 2, (0, 20))):
        for k in keys:
            mgr.add_prompt(sid, k, oid, mask=cv2.dilate(gt[role, k].astype(np.uint8), grow) > 0)
    mgr.propagate(sid, "both")
    assert max(counts.values()) == 2  # some objects were carved by the other pass
    ids, _, _, packed = mgr.masks(sid)
    kept = unpack(packed, w)  # (n_obj, T, H, W) bool
    objects = mgr.get(sid).state.objects
    for i, oid in enumerate(ids):
        for t in range(n):
            final = np.unpackbits(objects[oid].results[t], axis=-1, count=w).astype(bool)
            assert np.array_equal(kept[i, t], final), (oid, t)
