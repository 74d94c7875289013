"""Failures end to end, with real services: a SAM replica killed mid-episode (the episode is
retried on the other replica and the outputs are byte-identical to a clean run), and Ctrl-C
on the CLI (sessions closed, finished episodes kept, a re-run resumes).

SAM replicas here are the benchmark's delayed classical backend (bench/bench_pipeline.py,
`bench_delay_per_frame_s`), so an episode takes long enough to be interrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.run import run_pipeline
from protocol.client import Client
from protocol.errors import ServiceUnavailable
from tests.helpers import ROOT
from tests.integration.test_orchestrator_pipeline import demo_buffer, local_mesh

pytestmark = pytest.mark.slow

DELAYED_SAM = {"backend": "bench_delay", "module": "bench.bench_pipeline",
               "options": {"bench_delay_per_frame_s": 0.05, "threads": 1}}  # fmt: skip


def _rgbm_cfg(prompts: Path, **run) -> dict:
    return {"pipeline": "rgbm", "camera_key": "head_cam_img", "outputs": ["rgbm", "npz"],
            "prompts_file": str(prompts), "prompt": {"source": "file"},
            "run": {"progress": False, "backoff_s": 0.1, "replica_down_s": 1.0, **run}}  # fmt: skip


def _files(root: Path) -> dict[str, bytes]:
    """Every output file's bytes (report.json holds timings, export.json the output path)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("report.json", "export.json")}  # fmt: skip


def _sessions(endpoint: str) -> list:
    with Client(endpoint, timeout=2, retries=0) as c:
        return c.call("info")["sessions"]


def _kill_when_busy(proc: subprocess.Popen, endpoint: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if _sessions(endpoint):
                time.sleep(0.1)  # well inside the episode (0.5 s of propagation)
                proc.kill()
                return
        except ServiceUnavailable:
            return
        time.sleep(0.02)


def test_replica_killed_mid_episode_is_retried_with_identical_output(tmp_path):
    data = demo_buffer(tmp_path / "data", episodes=4, frames=10)
    with local_mesh(tmp_path, sams=[DELAYED_SAM, DELAYED_SAM], sam_timeout_s=2.0) as mesh:
        victim, victim_ep = mesh.procs["sam"][1], mesh.endpoints["sam"][1]
        stop = threading.Event()
        killer = threading.Thread(
            target=_kill_when_busy, args=(victim, victim_ep, stop), daemon=True
        )
        killer.start()
        rep = run_pipeline(_rgbm_cfg(data["prompts"]), str(data["data"]), str(tmp_path / "out_fail"),
                           str(mesh.services))  # fmt: skip
        stop.set()
        assert victim.poll() is not None, "the replica was not killed during the run"
        assert rep["totals"]["done"] == 4, rep["episodes"]
        retried = [e for e in rep["episodes"] if e["attempts"] > 1]
        assert retried and all(e["replica"] == mesh.endpoints["sam"][0] for e in retried)
        assert victim_ep in " ".join(retried[0]["errors"])
        # a clean run on the surviving replica alone
        clean = yaml.safe_load(mesh.services.read_text())
        clean["services"]["sam"]["endpoints"] = mesh.endpoints["sam"][:1]
        (tmp_path / "clean.yaml").write_text(yaml.safe_dump(clean))
        rep2 = run_pipeline(_rgbm_cfg(data["prompts"]), str(data["data"]), str(tmp_path / "out_clean"),
                            str(tmp_path / "clean.yaml"))  # fmt: skip
        assert rep2["totals"]["done"] == 4 and all(e["attempts"] == 1 for e in rep2["episodes"])
    fail, ok = _files(tmp_path / "out_fail"), _files(tmp_path / "out_clean")
    assert any(k.startswith("rgbm.zarr/data/rgbm/") for k in ok) and "npz/0003.npz" in ok
    assert fail.keys() == ok.keys()
    assert [k for k in ok if fail[k] != ok[k]] == []


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(tmp_path):
    data = demo_buffer(tmp_path / "data", episodes=6, frames=10)
    with local_mesh(tmp_path, sams=[DELAYED_SAM]) as mesh:
        cfg = tmp_path / "rgbm.yaml"
        cfg.write_text(yaml.safe_dump(_rgbm_cfg(data["prompts"])))
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "orchestrator", "run", "--config", str(cfg), "--input",
               str(data["data"]), "--output", str(out), "--services", str(mesh.services)]  # fmt: skip
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        end = time.monotonic() + 60
        while not list((out / "done").glob("*.json")) and time.monotonic() < end:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "interrupted" in stderr
        rep = json.loads((out / "report.json").read_text())
        results = [e["result"] for e in rep["episodes"]]
        assert rep["interrupted"] and "done" in results and "interrupted" in results
        done = sorted(int(p.stem) for p in (out / "done").glob("*.json"))
        assert done == [e["episode"] for e in rep["episodes"] if e["result"] == "done"]
        assert _sessions(mesh.endpoints["sam"][0]) == []  # every session closed
        r = subprocess.run(
            cmd + ["--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
        rep2 = json.loads((out / "report.json").read_text())
        assert rep2["totals"]["skipped"] == len(done) and rep2["totals"]["done"] == 6 - len(done)
