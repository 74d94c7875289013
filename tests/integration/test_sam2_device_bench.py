"""bench/device/run.py in its CPU mode: the same code path as the GPU check (random-weight
SAM2 in-process and through the sam service, the long episode with offload on/off), at tiny
sizes, so the prepared GPU check cannot rot. Needs torch + sam2: run in the sam2 venv.

Usage: .venvs/test-sam2/bin/python -m pytest tests/integration/test_sam2_device_bench.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="needs torch: run in the sam2 venv")
pytest.importorskip("sam2", reason="needs sam2: run in the sam2 venv")

from tests.helpers import ROOT  # noqa: E402

pytestmark = pytest.mark.sam2


def test_cpu_mode_runs_every_step_and_prints_one_json_last(tmp_path):
    out = tmp_path / "device"
    p = subprocess.run([sys.executable, "-m", "bench.device.run", "--cpu", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    last = json.loads(p.stdout.strip().splitlines()[-1])
    saved = json.loads((out / "result.json").read_text())
    assert last == saved and saved["mode"] == "cpu"
    env = saved["environment"]
    assert env["device"] == "cpu" and env["torch"] and env["sam2"]
    t = saved["sam2"]["t"]
    assert t["image_size"] == 128 and t["frames"] == 3
    for n in ("1_obj", "2_obj"):
        row = t[n]
        assert row["inprocess_fps"] > 0 and row["service_fps"] > 0
        assert row["ratio"] == pytest.approx(row["service_fps"] / row["inprocess_fps"], rel=0.01)
        assert 0.0 <= row["mask_agreement_iou"] <= 1.0
    assert saved["min_ratio"] == min(t["1_obj"]["ratio"], t["2_obj"]["ratio"])
    long = saved["long_episode"]
    assert long["frames"] == 3 and long["off"]["offload"] is False and long["on"]["offload"]
    assert long["off"]["fps"] > 0 and long["on"]["fps"] > 0 and long["off"]["peak_gpu_mib"] is None
    assert saved["sam3"] == {"skipped": "SAM3 runs on CUDA only"}
    logs = {f.name for f in (out / "logs").iterdir()}
    assert {"device.log", "sam2_t.log"} <= logs
