"""Load: many clients against one SAM service with a tiny queue; nothing may be lost.

Usage:
    pytest -m reliability tests/reliability/test_load.py

SAM runs with --queue-size 2 and one worker, so concurrent clients are answered `overloaded`;
the protocol client retries those with backoff (the service did no work). Every request must
complete and every result must equal the one computed without load.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from protocol.client import Client
from services.sam.api import CONTRACT as SAM
from tests.reliability.mesh import Mesh, pipeline_yaml
from tests.reliability.outputs import done_markers, tree_diff
from tests.reliability.procs import spawn
from tests.reliability.proxy import CountingProxy

log = logging.getLogger(__name__)
pytestmark = pytest.mark.reliability

N_CLIENTS = 8
SMALL_QUEUE = ["--queue-size", "2", "--workers", "1"]
BOX = [94, 43, 116, 62]  # the red mug in demo episode 0


def _session_masks(c: Client, frames: np.ndarray, futures: list) -> bytes:
    """A whole SAM session, pipelined where the contract allows; returns the packed masks."""

    def go(op: str, body: dict) -> dict:
        f = c.submit(op, body)
        futures.append(f)
        return f.result()

    t, h, w, _ = frames.shape  # (T, H, W, 3) uint8
    sid = go("start_session", {"height": h, "width": w, "n_frames": t})["session"]
    puts = [c.submit("put_frames", {"session": sid, "start": s, "frames": frames[s : s + 5]})
            for s in range(0, t, 5)]  # fmt: skip
    futures.extend(puts)
    assert max(f.result()["received"] for f in puts) == t
    go("add_prompt", {"session": sid, "frame": 0, "obj_id": 1, "box": BOX})
    go("add_prompt", {"session": sid, "frame": 0, "obj_id": 2, "points": [[40, 100]],
                      "labels": [1]})  # fmt: skip
    assert go("propagate", {"session": sid, "direction": "both"})["frames"] >= t
    chunks = [c.submit("masks", {"session": sid, "start": s, "stop": min(s + 4, t)})
              for s in range(0, t, 4)]  # fmt: skip
    futures.extend(chunks)
    packed = np.concatenate([f.result()["masks"] for f in chunks], axis=1)  # (2, T, H, W8)
    assert go("close_session", {"session": sid})["closed"] is True
    return packed.tobytes()


def test_eight_clients_pipelining_sessions_lose_nothing(demo_data: Path, tmp_path: Path) -> None:
    g = zarr.open_group(str(demo_data / "demo.zarr"), mode="r")
    frames = np.ascontiguousarray(g["data/head_cam_img"][:20])  # (20, 120, 160, 3) uint8
    sam = spawn("sam", cwd=tmp_path, extra_args=SMALL_QUEUE, options={"max_sessions": N_CLIENTS})
    try:
        with Client(sam.endpoint, timeout=60, contract=SAM) as c:
            want = _session_masks(c, frames, [])
        results: dict[int, bytes] = {}
        futures: dict[int, list] = {i: [] for i in range(N_CLIENTS)}
        errors: list[str] = []

        def worker(i: int) -> None:
            try:
                with Client(sam.endpoint, timeout=60, retries=0, contract=SAM) as c:
                    for _ in range(2):  # two sessions each, back to back
                        results[i] = _session_masks(c, frames, futures[i])
            except Exception as e:  # reported below with the client's number
                errors.append(f"client {i}: {type(e).__name__}: {e}")

        t0 = time.monotonic()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(N_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        requests = sum(len(f) for f in futures.values())
        overloads = sum(f.overloads for fs in futures.values() for f in fs)
        log.warning("load (threads): %d clients, %d requests, %d overloaded replies retried, "
                    "%.1fs", N_CLIENTS, requests, overloads, time.monotonic() - t0)  # fmt: skip
        assert not errors, errors
        assert all(not t.is_alive() for t in threads), "a client is still waiting"
        assert sorted(results) == list(range(N_CLIENTS))
        assert all(r == want for r in results.values()), "masks under load differ"
        assert all(f.done() for fs in futures.values() for f in fs)
        assert overloads > 0, "no `overloaded` reply: the load did not exceed the queue"
        assert sam.alive()
    finally:
        sam.stop()


def test_eight_orchestrators_against_one_small_queue_sam(
    demo_data: Path, tmp_path: Path, reference
) -> None:
    mesh = Mesh(tmp_path, demo_data).start(sam_args=SMALL_QUEUE)
    try:
        with CountingProxy(mesh.endpoint("sam")) as px:
            services = mesh.services_yaml(endpoints={"sam": px.endpoint})
            cfg = pipeline_yaml(tmp_path / "arm_only.yaml", mesh.prompts)
            t0 = time.monotonic()
            procs = [mesh.orchestrator(cfg, tmp_path / f"out{i}", services,
                                       log_name=f"orchestrator{i}.log") for i in range(N_CLIENTS)]  # fmt: skip
            rcs = [p.wait(300) for p in procs]
            wall = time.monotonic() - t0
            time.sleep(0.2)  # let the last replies pass the proxy
        assert px.error is None, px.error
        log.warning("load (orchestrators): %d runs in %.1fs; SAM saw %d requests, %d replies %s",
                    N_CLIENTS, wall, px.requests, px.replies, dict(px.codes))  # fmt: skip
        assert rcs == [0] * N_CLIENTS, [(i, rc, mesh.log(f"orchestrator{i}.log")[-1500:])
                                        for i, rc in enumerate(rcs) if rc]  # fmt: skip
        ref = reference("arm_only", demo_data)
        for i in range(N_CLIENTS):
            out = tmp_path / f"out{i}"
            assert done_markers(out) == [0, 1], f"run {i}"
            rep = json.loads((out / "report.json").read_text())
            assert rep["totals"]["failed"] == 0, rep["totals"]
            diff = tree_diff(ref, out)
            assert not diff, f"run {i} differs from the unloaded run: {diff[:10]}"
        assert px.requests == px.replies, f"{px.requests} requests but {px.replies} replies"
        assert px.codes["overloaded"] > 0, f"no overload reached SAM's queue: {dict(px.codes)}"
        assert not {"internal", "timeout"} & set(px.codes), dict(px.codes)
        assert mesh.procs["sam"].alive()
    finally:
        mesh.stop()
