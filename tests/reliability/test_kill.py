"""Crashes: kill -9 SAM, the orchestrator or the exporter in the middle of a run.

Usage:
    pytest -m reliability tests/reliability/test_kill.py

Each run is the arm_only pipeline (four objects, two SAM stages, outputs arm_only + npz) over
5 episodes x 30 frames; its outputs are compared byte for byte with an uninterrupted run
(every file but report.json, logs and the lock file). A test fails if its fault did not land
mid-run (e.g. the run finished first), since it would then prove nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from protocol.client import Client
from protocol.masks import pack
from tests.reliability.mesh import Mesh, pipeline_yaml
from tests.reliability.outputs import (
    done_markers,
    episode_files,
    incomplete_done,
    marker,
    tree_diff,
    tree_digest,
)
from tests.reliability.procs import spawn, wait_until

log = logging.getLogger(__name__)
pytestmark = pytest.mark.reliability

N_EPISODES = 5
ALL = list(range(N_EPISODES))
RUN_TIMEOUT_S = 300.0


def _mesh(tmp_path: Path, data: Path) -> tuple[Mesh, Path]:
    mesh = Mesh(tmp_path, data).start()
    mesh.timeouts.update(sam=10, exporter=10)  # a killed peer is noticed in seconds
    return mesh, pipeline_yaml(tmp_path / "arm_only.yaml", mesh.prompts)


def _info(endpoint: str) -> dict | None:
    try:
        with Client(endpoint, timeout=1.0, retries=0) as c:
            return c.call("info")
    except Exception:  # a busy or dying service: just poll again
        return None


def _report(out: Path) -> dict[int, dict]:
    rep = json.loads((out / "report.json").read_text())
    return {e["episode"]: e for e in rep["episodes"]}


def _retried(out: Path) -> int:
    return sum(e["attempts"] - 1 + e.get("request_retries", 0) for e in _report(out).values())


def test_sam_killed_mid_run_finishes_identical(tmp_path: Path, kill_data: Path, reference) -> None:
    ref = reference("arm_only", kill_data)
    mesh, cfg = _mesh(tmp_path, kill_data)
    out = tmp_path / "out"
    try:
        proc = mesh.orchestrator(cfg, out)
        sam = mesh.endpoint("sam")
        wait_until(lambda: done_markers(out) and (_info(sam) or {}).get("sessions"),
                   RUN_TIMEOUT_S, 0.02, "an episode done and the next one's SAM session open")  # fmt: skip
        mesh.procs["sam"].kill9()
        at_kill = done_markers(out)
        time.sleep(1.0)  # SAM is gone for a while: calls in flight time out
        mesh.restart("sam")
        rc = proc.wait(RUN_TIMEOUT_S)
        log.warning("sam kill -9 after episodes %s; run exit %d, %d retries", at_kill, rc,
                    _retried(out) if (out / "report.json").exists() else -1)  # fmt: skip
        assert len(at_kill) < N_EPISODES, "the run finished before SAM was killed"
        assert rc == 0, mesh.log("orchestrator")
        assert done_markers(out) == ALL
        assert _retried(out) >= 1, "no episode or request was retried: the kill hit nothing"
        diff = tree_diff(ref, out)
        assert not diff, f"outputs differ from the uninterrupted run: {diff[:10]}"
    finally:
        mesh.stop()


def test_orchestrator_killed_rerun_processes_only_unfinished(
    tmp_path: Path, kill_data: Path, reference
) -> None:
    ref = reference("arm_only", kill_data)
    mesh, cfg = _mesh(tmp_path, kill_data)
    out = tmp_path / "out"
    try:
        proc = mesh.orchestrator(cfg, out, log_name="orchestrator-killed.log")
        sam = mesh.endpoint("sam")
        wait_until(lambda: done_markers(out) and (_info(sam) or {}).get("sessions"),
                   RUN_TIMEOUT_S, 0.02, "an episode done and the next one in SAM")  # fmt: skip
        proc.kill()  # SIGKILL: no clean-up, sessions and held masks left behind
        proc.wait()
        at_kill = done_markers(out)
        # A finish_episode sent before the kill still completes in the exporter: wait for it.
        exp = mesh.endpoint("exporter")
        wait_until(lambda: (i := _info(exp)) and not i["in_flight"] and not i["queue_depth"],
                   60, 0.05, "the exporter idle")  # fmt: skip
        first = done_markers(out)
        assert 1 <= len(first) < N_EPISODES, f"kill landed after {first}: not mid-run"
        assert not incomplete_done(out, ref), incomplete_done(out, ref)
        stamp = {k: os.stat(out / k).st_mtime_ns for ep in first
                 for k in episode_files(tree_digest(out), ep)}  # fmt: skip

        rc = mesh.run(cfg, out, timeout=RUN_TIMEOUT_S)
        assert rc == 0, mesh.log("orchestrator")
        rep = _report(out)
        log.warning("orchestrator kill -9 after episodes %s (%s once the exporter settled); "
                    "re-run: %s", at_kill, first, {e: r["result"] for e, r in rep.items()})  # fmt: skip
        assert sorted(e for e, r in rep.items() if r["result"] == "skipped") == first
        assert sorted(e for e, r in rep.items() if r["result"] == "done") == \
            sorted(set(ALL) - set(first))  # fmt: skip
        rewritten = [k for k, t in stamp.items() if os.stat(out / k).st_mtime_ns != t]
        assert not rewritten, f"finished episodes were written again: {rewritten[:5]}"
        diff = tree_diff(ref, out)
        assert not diff, f"outputs differ from the uninterrupted run: {diff[:10]}"
    finally:
        mesh.stop()


def test_exporter_killed_mid_episode_rerun_completes(
    tmp_path: Path, kill_data: Path, reference
) -> None:
    ref = reference("arm_only", kill_data)
    mesh, cfg = _mesh(tmp_path, kill_data)
    out = tmp_path / "out"
    try:
        proc = mesh.orchestrator(cfg, out, log_name="orchestrator-first.log")
        exp = mesh.endpoint("exporter")

        def mid_episode() -> bool:  # masks of an unfinished episode held, or a temp file
            temps = any(n.startswith(".tmp-") for _, ds, fs in os.walk(out) for n in ds + fs)
            return bool(done_markers(out)) and (temps or (_info(exp) or {}).get("held_mb", 0) > 0)

        wait_until(mid_episode, RUN_TIMEOUT_S, 0.005, "the exporter holding an unfinished episode")
        mesh.procs["exporter"].kill9()
        at_kill = done_markers(out)
        assert len(at_kill) < N_EPISODES, "the run finished before the exporter was killed"
        assert not incomplete_done(out, ref), incomplete_done(out, ref)
        mesh.restart("exporter")
        first_rc = proc.wait(RUN_TIMEOUT_S)
        after_first = done_markers(out)
        assert not incomplete_done(out, ref), incomplete_done(out, ref)

        rc = mesh.run(cfg, out, timeout=RUN_TIMEOUT_S)
        log.warning("exporter kill -9 after episodes %s; first run exit %d with %s done; "
                    "re-run exit %d", at_kill, first_rc, after_first, rc)  # fmt: skip
        assert rc == 0, mesh.log("orchestrator")
        assert done_markers(out) == ALL
        diff = tree_diff(ref, out)
        assert not diff, f"outputs differ from the uninterrupted run: {diff[:10]}"
        assert not [n for _, ds, fs in os.walk(out) for n in ds + fs if n.startswith(".tmp-")]
    finally:
        mesh.stop()


def _listing(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


# Where finish_episode of episode 1 may be when the exporter dies (arm_only, then npz, then
# the done marker; each written to a temp name and renamed). None = kill at once.
KILL_POINTS = {
    "as finish_episode arrives": None,
    "arm_only PNGs in a temp folder": lambda o: any(n.startswith(".tmp-0001")
                                                    for n in _listing(o / "arm_only")),
    "arm_only committed, npz not yet": lambda o: (o / "arm_only" / "0001").is_dir()
    and not (o / "npz" / "0001.npz").exists(),
    "npz committed, marker not yet": lambda o: (o / "npz" / "0001.npz").exists()
    and not (o / "done" / "0001.json").exists(),
}  # fmt: skip


def test_exporter_killed_during_finish_never_marks_incomplete(
    tmp_path: Path, kill_data: Path, reference
) -> None:
    """The exporter alone, killed at each stage of finish_episode, then resumed to the end."""
    ref = reference("arm_only", kill_data)
    ep = 1
    want = marker(ref, ep)
    npz = np.load(ref / "npz" / f"{ep:04d}.npz")
    masks = npz["masks"][:, :, 0]  # (n_obj, T, H, W) bool
    obj_ids = [int(i) for i in npz["obj_ids"]]
    options = json.loads((ref / "export.json").read_text())["options"]
    out = tmp_path / "out"
    open_req = {"output": str(out), "source": str(kill_data / "demo.zarr"),
                "camera_key": "head_cam_img", "outputs": ["arm_only", "npz"], "options": options}  # fmt: skip
    landed: dict[str, bool] = {}

    def attempt(point: str | None) -> None:
        svc = spawn("exporter", cwd=tmp_path, log_path=tmp_path / "exporter.log")
        c = Client(svc.endpoint, timeout=30, retries=0)
        try:
            eid = c.call("open_export", open_req)["export"]
            assert ep not in done_markers(out), f"episode {ep} already done before {point!r}"
            c.call("put_masks", {"export": eid, "episode": ep, "start": 0, "obj_ids": obj_ids,
                                 "masks": pack(masks), "width": masks.shape[-1]})  # fmt: skip
            fut = c.submit("finish_episode", {"export": eid, "episode": ep,
                                              "roles": want["roles"], "meta": want["meta"]})  # fmt: skip
            if point is None:
                fut.result()
                return
            pred = KILL_POINTS[point]
            end = time.monotonic() + 30
            while pred is not None and not pred(out) and not (out / "done" / "0001.json").exists():
                if time.monotonic() > end:
                    raise TimeoutError(f"finish_episode never reached {point!r}")
                time.sleep(0.0005)
            svc.kill9()
            landed[point] = ep not in done_markers(out)
            bad = incomplete_done(out, ref)
            assert not bad, f"killed at {point!r}: {bad}"
        finally:
            c.close()
            svc.stop()

    for point in KILL_POINTS:
        attempt(point)
        if ep in done_markers(out):
            break  # the episode completed before the kill: nothing later to interrupt
    if ep not in done_markers(out):
        attempt(None)  # the re-run completes it
    log.warning("exporter killed during finish_episode: %s", landed)
    assert sum(landed.values()) >= 3, f"too few kills landed mid-episode: {landed}"
    assert done_markers(out) == [ep]
    got, ref_files = episode_files(tree_digest(out), ep), episode_files(tree_digest(ref), ep)
    assert got == ref_files, sorted(set(got) ^ set(ref_files))[:5] or "bytes differ"
    assert not [n for _, ds, fs in os.walk(out) for n in ds + fs if n.startswith(".tmp-")]
