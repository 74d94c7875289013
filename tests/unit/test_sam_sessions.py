"""Session management and request validation of the sam service (real classical backend).

Usage: python3 -m pytest tests/unit/test_sam_sessions.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from protocol.errors import BadRequest, NotFound, Overloaded, Unsupported
from protocol.masks import unpack
from services.sam.backends.classical import ClassicalBackend
from services.sam.sessions import SessionManager
from services.sam.validation import check_box, check_points

H, W, T = 40, 56, 6


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def square_frames(n: int = T) -> np.ndarray:
    """A bright square moving right by 1 px per frame on a dark textured background."""
    rng = np.random.default_rng(0)
    f = rng.integers(20, 60, (n, H, W, 3)).astype(np.uint8)  # (T, H, W, 3)
    for t in range(n):
        f[t, 10:26, 8 + t : 24 + t] = (230, 220, 40)
    return f


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def mgr(clock) -> SessionManager:
    b = ClassicalBackend()
    b.setup()
    return SessionManager(b, max_sessions=2, idle_timeout_s=60.0, clock=clock)


@pytest.fixture()
def sid(mgr) -> str:
    s = mgr.start(H, W, T)
    mgr.put_frames(s, 0, square_frames())
    return s


def test_unknown_session_message(mgr):
    with pytest.raises(NotFound, match="Cannot find session nope; it might have expired"):
        mgr.put_frames("nope", 0, square_frames(1))
    for call in (
        lambda: mgr.add_prompt("nope", 0, 1, box=[1, 1, 5, 5]),
        lambda: mgr.propagate("nope"),
        lambda: mgr.masks("nope"),
        lambda: mgr.remove_object("nope", 1),
        lambda: mgr.reset("nope"),
    ):
        with pytest.raises(NotFound, match="might have expired"):
            call()


def test_frames_stored_once_and_counted(mgr):
    s = mgr.start(H, W, T)
    f = square_frames()
    assert mgr.put_frames(s, 0, f[:4]) == 4
    assert mgr.put_frames(s, 2, f[2:]) == T  # overlapping chunk: counted once
    store = mgr.get(s).frames
    assert store.shape == (T, H, W, 3) and np.array_equal(store, f)
    ro = f.copy()
    ro.flags.writeable = False  # received arrays are read-only views: accepted, copied in
    mgr.put_frames(s, 0, ro[:1])
    assert mgr.get(s).frames is store  # preallocated store, never replaced


@pytest.mark.parametrize(
    ("frames", "start", "match"),
    [
        (np.zeros((2, H, W + 1, 3), np.uint8), 0, r"frames: expected shape \(n, 40, 56, 3\)"),
        (np.zeros((2, H, W), np.uint8), 0, "frames: expected shape"),
        (np.zeros((2, H, W, 3), np.float32), 0, "frames: expected dtype uint8"),
        (np.zeros((2, H, W, 3), np.uint8), T - 1, r"start: frames \[5, 7\) fall outside"),
        (np.zeros((2, H, W, 3), np.uint8), -1, "start:"),
    ],
)
def test_put_frames_validation(mgr, sid, frames, start, match):
    with pytest.raises(BadRequest, match=match):
        mgr.put_frames(sid, start, frames)


def test_start_validation_and_cap(mgr):
    with pytest.raises(BadRequest, match="height"):
        mgr.start(0, W, T)
    with pytest.raises(BadRequest, match="n_frames"):
        mgr.start(H, W, 0)
    with pytest.raises(BadRequest, match="session: 'a b' is not a valid id"):
        mgr.start(H, W, T, session="a b")
    mgr.start(H, W, T, session="ep-1")
    with pytest.raises(BadRequest, match="already open"):
        mgr.start(H, W, T, session="ep-1")
    mgr.start(H, W, T)
    with pytest.raises(Overloaded, match="max_sessions=2"):
        mgr.start(H, W, T)
    assert mgr.close("ep-1") is True
    mgr.start(H, W, T)  # room again


def test_session_memory_cap(clock):
    mgr = SessionManager(ClassicalBackend(), max_session_bytes=1000, clock=clock)
    with pytest.raises(BadRequest, match="max_session_bytes"):
        mgr.start(H, W, T)


def test_idle_sessions_expire_and_free(mgr, sid, clock):
    mgr.add_prompt(sid, 0, 1, box=[8, 10, 24, 26])
    s = mgr.get(sid)
    clock.t += 59
    mgr.expire()
    assert mgr.get(sid) is s  # touched by get(): still alive
    clock.t += 61
    assert mgr.expire() == [sid]
    assert s.frames.size == 0 and s.state is None and not s.results  # memory released
    with pytest.raises(NotFound, match=f"Cannot find session {sid}"):
        mgr.masks(sid)
    assert mgr.describe() == []


def test_close_is_idempotent(mgr, sid):
    assert mgr.close(sid) is True
    assert mgr.close(sid) is False
    assert mgr.close("never-existed") is False


def test_prompt_validation(mgr, sid):
    def bad(match, **kw):
        with pytest.raises(BadRequest, match=match):
            mgr.add_prompt(sid, kw.pop("frame", 0), kw.pop("obj_id", 1), **kw)

    bad("frame: frame 6 is outside", frame=6, box=[1, 1, 9, 9])
    bad("frame: frame -1 is outside", frame=-1, box=[1, 1, 9, 9])
    bad("at least one of", points=None)
    bad("labels: required with points", points=[[3, 3]])
    bad("labels: given without points", labels=[1])
    bad("labels: 2 labels for 1 points", points=[[3, 3]], labels=[1, 0])
    bad(r"labels: must be 0 \(background\) or 1", points=[[3, 3]], labels=[2])
    bad(r"points: point 0 \[56.0, 3.0\] is outside the 56x40 image", points=[[56, 3]], labels=[1])
    bad("points: point 1 .* is outside", points=[[3, 3], [3, -1]], labels=[1, 1])
    bad(
        r"points: point 0 \[1.5, 0.5\] is outside \[0, 1\]",
        points=[[1.5, 0.5]],
        labels=[1],
        rel=True,
    )
    bad("x0 < x1", box=[9, 1, 1, 9])
    bad("lies outside", box=[100, 100, 120, 120])
    bad("box: must be 4 finite numbers", box=[1, 2, 3])
    bad(r"mask: expected an \(40, 56\) array", mask=np.ones((4, 4), bool))
    bad("mask: expected dtype bool or uint8", mask=np.ones((H, W), np.float32))
    bad("mask: is empty", mask=np.zeros((H, W), bool))
    bad("obj_id: must be in", obj_id=-3, box=[1, 1, 9, 9])
    with pytest.raises(
        Unsupported, match="prompt kind 'text' is not supported by backend 'classical'"
    ):
        mgr.add_prompt(sid, 0, 1, text="the yellow square")


def test_frame_must_be_received(mgr):
    s = mgr.start(H, W, T)
    mgr.put_frames(s, 0, square_frames(2))
    with pytest.raises(BadRequest, match="frame 3 not received yet"):
        mgr.add_prompt(s, 3, 1, box=[1, 1, 9, 9])
    mgr.add_prompt(s, 0, 1, box=[7, 9, 25, 27])
    with pytest.raises(
        BadRequest, match=r"frames: frame 2 \(and 3 more in \[0, 5\]\) not received"
    ):
        mgr.propagate(s, "forward")
    assert mgr.propagate(s, "forward", max_frames=2).frames == 2  # the received part is fine


def test_rel_points_become_pixels_once(mgr):
    pts, lab = check_points([[0.5, 0.25], [1.0, 1.0]], [1, 0], True, H, W)
    assert pts.dtype == np.float32 and lab.dtype == np.int32
    assert np.allclose(pts[0], [28.0, 10.0]) and (pts[1] < [W, H]).all()
    box = check_box([0.0, 0.0, 0.5, 0.5], True, H, W)
    assert np.allclose(box, [0, 0, 28, 20])
    assert np.allclose(check_box([-5, -5, 20, 20], False, H, W), [0, 0, 20, 20])  # clipped


def test_prompt_propagate_masks_roundtrip(mgr, sid):
    frame, ids, stack = mgr.add_prompt(sid, 0, 3, box=[7, 9, 25, 27])
    assert (frame, ids, stack.shape, stack.dtype) == (0, [3], (1, H, W), np.dtype(bool))
    r = mgr.propagate(sid, "both")
    assert (r.frames, r.obj_ids, r.recomputed, r.spans) == (T, [3], T, [[3, 0, T]])
    got_ids, start, stop, packed = mgr.masks(sid, 0, T)
    assert (got_ids, start, stop, packed.shape) == ([3], 0, T, (1, T, H, (W + 7) // 8))
    masks = unpack(packed, W)  # (1, T, H, W)
    for t in range(T):
        truth = np.zeros((H, W), bool)
        truth[10:26, 8 + t : 24 + t] = True
        assert (masks[0, t] & truth).sum() / (masks[0, t] | truth).sum() > 0.9, t


def test_masks_chunking_absent_and_unknown(mgr, sid):
    mgr.add_prompt(sid, 2, 1, box=[9, 9, 27, 27])
    mgr.add_prompt(sid, 2, 2, points=[[0.3, 0.4]], labels=[1], rel=True)
    one_frame = 2 * H * ((W + 7) // 8)
    ids, start, stop, packed = mgr.masks(sid, 0, T, max_bytes=2 * one_frame + 1)
    assert (ids, start, stop, packed.shape[:2]) == ([1, 2], 0, 2, (2, 2))
    assert not packed.any()  # frames 0 and 1 have no result yet: all zero
    ids, _, _, packed = mgr.masks(sid, 2, 3, obj_ids=[2])
    assert ids == [2] and packed.any()
    with pytest.raises(NotFound, match="obj_ids: object 9 is not in session"):
        mgr.masks(sid, 0, 1, obj_ids=[9])
    with pytest.raises(BadRequest, match="stop: 9 must be in"):
        mgr.masks(sid, 0, 9)


def test_new_objects_after_propagation_remove_and_reset(mgr, sid):
    mgr.add_prompt(sid, 0, 1, box=[7, 9, 25, 27])
    mgr.propagate(sid)
    frame, ids, stack = mgr.add_prompt(sid, 4, 5, points=[[3, 35]], labels=[1])
    assert ids == [1, 5] and stack[0].any()  # the propagated object is reported on frame 4 too
    r = mgr.propagate(sid)
    assert r.obj_ids == [1, 5] and r.frames == T
    assert mgr.remove_object(sid, 1) == [5]
    with pytest.raises(NotFound, match="obj_id: object 1 is not in session"):
        mgr.remove_object(sid, 1)
    mgr.reset(sid)
    assert mgr.masks(sid, 0, 1)[0] == []
    with pytest.raises(BadRequest, match="no prompts in this session yet"):
        mgr.propagate(sid)
    with pytest.raises(BadRequest, match="direction: 'sideways'"):
        mgr.propagate(sid, "sideways")


def test_describe_reports_memory(mgr, sid):
    mgr.add_prompt(sid, 0, 1, box=[7, 9, 25, 27])
    (d,) = mgr.describe()
    assert d["session"] == sid and d["received"] == T and d["obj_ids"] == [1]
    assert d["bytes"] == T * H * W * 3 + T * H * ((W + 7) // 8)
