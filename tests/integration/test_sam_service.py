"""The sam service as a real process on a real socket, classical backend.

Usage: python3 -m pytest tests/integration/test_sam_service.py -q
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from protocol.errors import RemoteError
from protocol.masks import unpack
from protocol.wire import decode, encode
from tests.helpers import spawn_service, start_service, stop_process
from tests.unit.test_sam_classical import box_of, iou, moving_scene

T, H, W = 24, 96, 128


@pytest.fixture(scope="module")
def svc():
    opts = {"max_sessions": 2, "idle_timeout_s": 1.5, "max_chunk_bytes": 4000}
    with start_service("sam", backend="classical", options=opts, timeout=30.0) as s:
        yield s


@pytest.fixture(scope="module")
def scene():
    return moving_scene(T, H, W)


def code_of(call) -> RemoteError:
    with pytest.raises(RemoteError) as ei:
        call()
    return ei.value


def test_info_reports_backend_and_sessions(svc):
    info = svc.client.call("info", {})
    assert info["backend"] == "classical" and info["device"] == "cpu"
    assert info["prompt_kinds"] == ["box", "mask", "points"]
    assert info["capabilities"]["directions"] == ["forward", "backward", "both"]
    assert {"start_session", "put_frames", "add_prompt", "propagate", "masks", "segment_image",
            "remove_object", "reset_session", "close_session"} <= set(info["ops"])  # fmt: skip
    assert isinstance(info["sessions"], list)


def test_video_session_end_to_end(svc, scene):
    frames, gt = scene
    c = svc.client
    sid = c.call("start_session", {"height": H, "width": W, "n_frames": T})["session"]
    futs = [c.submit("put_frames", {"session": sid, "start": s, "frames": frames[s : s + 10]})
            for s in range(0, T, 10)]  # chunks, pipelined  # fmt: skip
    assert sorted(f.result()["received"] for f in futs)[-1] == T
    out = c.call("add_prompt", {"session": sid, "frame": 0, "obj_id": 1, "box": box_of(gt[2, 0]).tolist()})  # fmt: skip
    assert out["frame"] == 0 and out["obj_ids"] == [1] and out["width"] == W
    assert out["masks"].dtype == np.uint8 and out["masks"].shape == (1, H, (W + 7) // 8)
    assert iou(unpack(out["masks"], W)[0], gt[2, 0]) > 0.8
    # a second object from relative points, on a later frame (the grey 'arm')
    ys, xs = np.nonzero(gt[0, 12])
    k = len(ys) // 2
    out = c.call("add_prompt", {"session": sid, "frame": 12, "obj_id": 2, "rel": True,
                                "points": [[xs[k] / W, ys[k] / H]], "labels": [1]})  # fmt: skip
    assert out["obj_ids"] == [1, 2]
    prop = c.call("propagate", {"session": sid, "direction": "both"})
    assert prop == {"frames": T, "obj_ids": [1, 2], "recomputed": T,
                    "spans": [[1, 0, T], [2, 0, T]]}  # fmt: skip
    # bounded chunks: 4000 bytes hold 2 frames of 2 objects at 96x16 bytes
    got, start = [], 0
    while start < T:
        r = c.call("masks", {"session": sid, "start": start})
        assert r["obj_ids"] == [1, 2] and r["stop"] - r["start"] <= 2 and r["width"] == W
        got.append(unpack(r["masks"], W))  # (2, n, H, W)
        start = r["stop"]
    masks = np.concatenate(got, axis=1)
    assert masks.shape == (2, T, H, W)
    assert np.mean([iou(masks[0, t], gt[2, t]) for t in range(T)]) > 0.85
    assert c.call("remove_object", {"session": sid, "obj_id": 2}) == {"obj_ids": [1]}
    assert c.call("reset_session", {"session": sid}) == {}
    assert c.call("close_session", {"session": sid}) == {"closed": True}
    assert c.call("close_session", {"session": sid}) == {"closed": False}


def test_errors_over_the_wire(svc, scene):
    frames, _ = scene
    c = svc.client
    e = code_of(lambda: c.call("masks", {"session": "gone"}))
    assert e.code == "not_found" and e.message == "Cannot find session gone; it might have expired"
    sid = c.call("start_session", {"height": H, "width": W, "n_frames": T})["session"]
    try:
        e = code_of(
            lambda: c.call("put_frames", {"session": sid, "start": 0, "frames": frames[:2, :, :-1]})
        )
        assert e.code == "bad_request" and "frames: expected shape (n, 96, 128, 3)" in e.message
        c.call("put_frames", {"session": sid, "start": 0, "frames": frames})
        e = code_of(lambda: c.call("add_prompt", {"session": sid, "frame": 0, "obj_id": 1, "text": "arm"}))  # fmt: skip
        assert e.code == "unsupported" and "'text'" in e.message
        e = code_of(lambda: c.call("add_prompt", {"session": sid, "frame": 0, "obj_id": 1,
                                                  "points": [[500, 5]], "labels": [1]}))  # fmt: skip
        assert e.code == "bad_request" and e.message.startswith("points: point 0")
        e = code_of(lambda: c.call("add_prompt", {"session": sid, "frame": 0, "obj_id": 1, "boxx": [1, 2, 3, 4]}))  # fmt: skip
        assert e.code == "bad_request" and "boxx" in e.message
        e = code_of(lambda: c.call("propagate", {"session": sid}))
        assert e.code == "bad_request" and "add_prompt first" in e.message
        other = c.call("start_session", {"height": H, "width": W, "n_frames": 2})["session"]
        # the Client retries `overloaded` with backoff; a plain REQ socket sees the first reply
        req = zmq.Context.instance().socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.setsockopt(zmq.RCVTIMEO, 10000)
        req.connect(svc.endpoint)
        req.send_multipart(encode({"op": "start_session", "id": 1,
                                   "body": {"height": H, "width": W, "n_frames": 2}}))  # fmt: skip
        reply = decode(req.recv_multipart())
        req.close()
        assert reply["ok"] is False and reply["error"]["code"] == "overloaded"
        assert reply["error"]["retryable"] is True and "max_sessions=2" in reply["error"]["message"]
        c.call("close_session", {"session": other})
    finally:
        c.call("close_session", {"session": sid})


def test_segment_image(svc, scene):
    frames, gt = scene
    r = svc.client.call("segment_image", {"image": frames[5], "boxes": [box_of(gt[2, 5]).tolist(),
                                                                       box_of(gt[1, 5]).tolist()]})  # fmt: skip
    m = unpack(r["masks"], r["width"])
    assert m.shape == (2, H, W) and iou(m[0], gt[2, 5]) > 0.8 and iou(m[1], gt[1, 5]) > 0.7
    e = code_of(lambda: svc.client.call("segment_image", {"image": frames[5, :, :, 0]}))
    assert e.code == "bad_request" and "image: expected (H, W, 3) uint8" in e.message


def test_idle_session_expires(svc):
    c = svc.client
    sid = c.call("start_session", {"height": H, "width": W, "n_frames": 4})["session"]
    assert sid in [s["session"] for s in c.call("info", {})["sessions"]]
    deadline = time.monotonic() + 10
    while sid in [s["session"] for s in c.call("info", {})["sessions"]]:
        assert time.monotonic() < deadline, "session did not expire"
        time.sleep(0.2)
    assert code_of(lambda: c.call("reset_session", {"session": sid})).code == "not_found"


def test_unknown_option_refuses_to_start():
    with pytest.raises(RuntimeError, match="before printing READY|did not become ready") as ei:
        proc, _, _ = spawn_service("sam", backend="classical", options={"max_sesions": 3},
                                   ready_timeout=30)  # fmt: skip
        stop_process(proc)
    assert "max_sesions" in str(ei.value) and "max_sessions" in str(ei.value)


def test_bounded_progress_drift_and_close_sessions_over_the_wire(svc, scene):
    frames, gt = scene
    c = svc.client
    sid = c.call("start_session", {"height": H, "width": W, "n_frames": T,
                                   "session": "wiretest-run1-ep0"})["session"]  # fmt: skip
    other = c.call("start_session", {"height": H, "width": W, "n_frames": 2,
                                     "session": "wiretest-run1-ep1"})["session"]  # fmt: skip
    c.call("put_frames", {"session": sid, "start": 0, "frames": frames})
    c.call("add_prompt", {"session": sid, "frame": 0, "obj_id": 1, "box": box_of(gt[2, 0]).tolist()})  # fmt: skip
    assert c.call("propagate", {"session": sid})["recomputed"] == T
    c.call("add_prompt", {"session": sid, "frame": 12, "obj_id": 1, "mask": gt[2, 12]})  # fmt: skip
    r = c.call("propagate", {"session": sid, "bounded": True})
    assert (r["recomputed"], r["spans"]) == (16, [[1, 7, 12], [1, 13, T]])
    p = c.call("progress", {"session": sid})
    assert p == {"propagating": False, "done": 16, "total": 16, "direction": "both"}
    m = c.call("masks", {"session": sid, "start": 10})
    assert m["computed"].dtype == bool and m["computed"].shape == (1, m["stop"] - 10)
    assert m["computed"].all()
    d = c.call("drift", {"session": sid})
    assert d["obj_ids"] == [1] and d["scores"].shape == (1, T) and d["scores"].dtype == np.float32
    assert d["scores"][0, 0] == 0 and d["scores"][0, 12] == 0  # keyframes
    e = code_of(lambda: c.call("close_sessions", {"prefix": "wire"}))
    assert e.code == "bad_request" and "prefix" in e.message
    closed = c.call("close_sessions", {"prefix": "wiretest-run1"})["closed"]
    assert closed == [sid, other]
    assert code_of(lambda: c.call("progress", {"session": sid})).code == "not_found"


def test_masks_and_progress_answer_during_a_propagation(svc):
    from protocol.client import Client

    n = 160
    frames, gt = moving_scene(n, H, W, seed=3)
    c = svc.client
    sid = c.call("start_session", {"height": H, "width": W, "n_frames": n})["session"]
    try:
        for s in range(0, n, 40):
            c.call("put_frames", {"session": sid, "start": s, "frames": frames[s : s + 40]})
        c.call("add_prompt", {"session": sid, "frame": 0, "obj_id": 1, "box": box_of(gt[2, 0]).tolist()})  # fmt: skip
        done: list[dict] = []  # the propagate reply, from its own thread (result() pumps)
        th = threading.Thread(
            target=lambda: done.append(
                c.call("propagate", {"session": sid, "direction": "forward"})
            )
        )
        th.start()
        seen_progress, seen_partial = [], False
        with Client(svc.endpoint, timeout=10) as poll:
            while th.is_alive():
                p = poll.call("progress", {"session": sid})
                if p["propagating"] and 0 < p["done"] < p["total"]:
                    seen_progress.append(p["done"])
                    m = poll.call("masks", {"session": sid, "start": 0})
                    seen_partial |= bool(m["computed"][0, 0])
                time.sleep(0.02)
        th.join()
        assert done[0]["recomputed"] == n
        assert len(seen_progress) >= 2 and seen_progress == sorted(seen_progress), seen_progress
        assert seen_partial  # masks answered with the frames computed so far
    finally:
        c.call("close_session", {"session": sid})
