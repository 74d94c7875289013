"""The orchestrator against real services (subprocesses on loopback), on a small generated
buffer: rgbm (VLM prompts backend), arm_only, re-run skipping, validation, CLI dry-run/status.

`local_mesh` is also used by tests/e2e/test_pipeline_*.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from orchestrator.run import RunError, run_pipeline
from tests.helpers import ROOT, spawn_service, stop_process
from tools.demo_data import DemoConfig, write_demo

EPISODES, FRAMES, HEIGHT, WIDTH = 2, 10, 96, 128


@dataclass
class LocalMesh:
    services: Path  # a services.yaml naming every started endpoint
    endpoints: dict[str, list[str]]
    procs: dict[str, list[subprocess.Popen]] = field(default_factory=dict)


@contextlib.contextmanager
def local_mesh(tmp: Path, prompts: Path | None = None, sams: list[dict] | None = None,
               sam_timeout_s: float = 60.0) -> Iterator[LocalMesh]:  # fmt: skip
    """Start reader, exporter, SAM replica(s) (each {backend, options, module}) and, when a
    prompts file is given, the VLM `prompts` backend; write tmp/services.yaml."""
    specs = [("reader", {"backend": "zarr"}), ("exporter", {"backend": "local"})]
    specs += [("sam", s) for s in (sams or [{"backend": "classical"}])]
    if prompts is not None:
        specs.append(("vlm", {"backend": "prompts", "options": {"prompts_file": str(prompts)}}))
    mesh = LocalMesh(tmp / "services.yaml", {})
    try:
        for i, (name, spec) in enumerate(specs):
            proc, ep, _ = spawn_service(name, backend=spec["backend"], options=spec.get("options"),
                                        module=spec.get("module"), log_path=tmp / f"{name}{i}.log")  # fmt: skip
            mesh.procs.setdefault(name, []).append(proc)
            mesh.endpoints.setdefault(name, []).append(ep)
        doc = {"version": 1, "services": {
            n: {"endpoints": eps, "backend": "x", "timeout_s": sam_timeout_s if n == "sam" else 60.0,
                "retries": 1} for n, eps in mesh.endpoints.items()}}  # fmt: skip
        mesh.services.write_text(yaml.safe_dump(doc))
        yield mesh
    finally:
        for procs in mesh.procs.values():
            for p in procs:
                stop_process(p)


def demo_buffer(tmp: Path, episodes: int = EPISODES, frames: int = FRAMES) -> dict[str, Path]:
    return write_demo(
        DemoConfig(seed=0, episodes=episodes, frames=frames, height=HEIGHT, width=WIDTH), tmp
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[tuple[LocalMesh, dict[str, Path]]]:
    tmp = tmp_path_factory.mktemp("orc")
    data = demo_buffer(tmp / "data")
    with local_mesh(tmp, prompts=data["prompts"]) as m:
        yield m, data


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_rgbm_from_vlm_boxes_then_rerun_skips(mesh, tmp_path):
    m, data = mesh
    cfg = {"pipeline": "rgbm", "camera_key": "head_cam_img", "run": {"progress": False}}
    rep = run_pipeline(cfg, str(data["data"]), str(tmp_path / "out"), str(m.services))
    assert rep["totals"]["done"] == EPISODES and rep["totals"]["frames"] == EPISODES * FRAMES
    assert json.loads((tmp_path / "out" / "report.json").read_text())["totals"] == rep["totals"]
    ep0 = rep["episodes"][0]
    assert ep0["result"] == "done" and ep0["stages"]["vlm"] > 0 and ep0["stages"]["propagate"] > 0
    assert set(rep["totals"]["busy"]) == {"read", "vlm", "sam", "export"}
    rgbm = zarr.open_group(str(tmp_path / "out" / "rgbm.zarr"), mode="r")["data/rgbm"]
    out = np.asarray(rgbm[:])  # (N, H, W, 4) uint8
    assert out.shape == (EPISODES * FRAMES, HEIGHT, WIDTH, 4)
    src = np.asarray(zarr.open_group(str(data["data"]), mode="r")["data/head_cam_img"][:])
    np.testing.assert_array_equal(out[..., :3], src)
    assert set(np.unique(out[..., 3])) <= {0, 1}
    gt = np.asarray(zarr.open_group(str(data["gt"]), mode="r")["data/gt_target"][:])
    for ep in range(EPISODES):
        f = ep * FRAMES  # the prompted frame: the VLM box comes from the prompts file's target
        assert _iou(out[f, ..., 3] == 1, gt[f]) > 0.5
    rep2 = run_pipeline(cfg, str(data["data"]), str(tmp_path / "out"), str(m.services))
    assert (rep2["totals"]["skipped"], rep2["totals"]["done"]) == (EPISODES, 0)
    np.testing.assert_array_equal(np.asarray(rgbm[:]), out)


def test_arm_only_exports_one_png_per_frame(mesh, tmp_path):
    m, data = mesh
    cfg = {"pipeline": "arm_only", "camera_key": "head_cam_img", "outputs": ["arm_only", "npz"],
           "prompts_file": str(data["prompts"]), "arm_only": {"dilation_radius": 2},
           "run": {"progress": False}}  # fmt: skip
    rep = run_pipeline(cfg, str(data["data"]), str(tmp_path / "out"), str(m.services), episodes="1")
    assert [(e["episode"], e["result"]) for e in rep["episodes"]] == [(1, "done")]
    pngs = sorted((tmp_path / "out" / "arm_only" / "0001").glob("*.png"))
    assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(FRAMES)]
    npz = np.load(tmp_path / "out" / "npz" / "0001.npz")
    masks = npz["masks"]  # (n_obj, T, 1, H, W) bool
    assert masks.shape == (4, FRAMES, 1, HEIGHT, WIDTH) and list(npz["obj_ids"]) == [1, 2, 3, 4]
    assert masks[2:].any()  # stage B: the grippers got masks


def test_invalid_prompts_refuse_the_run_before_any_work(mesh, tmp_path):
    m, data = mesh
    doc = yaml.safe_load(data["prompts"].read_text())
    doc["episodes"][0]["objects"].pop("gripper_left")
    doc["episodes"][0]["objects"].pop("gripper_right")
    doc["episodes"][1]["objects"]["arm_left"]["prompts"][0]["frame"] = FRAMES
    bad = tmp_path / "bad_prompts.yaml"
    bad.write_text(yaml.safe_dump(doc))
    cfg = {"pipeline": "arm_only", "camera_key": "head_cam_img", "prompts_file": str(bad)}
    with pytest.raises(RunError) as e:
        run_pipeline(cfg, str(data["data"]), str(tmp_path / "out"), str(m.services))
    msg = str(e.value)
    assert "2 problem(s)" in msg and "no gripper prompt given" in msg
    assert f"episodes.1.objects.arm_left.prompts[0].frame: {FRAMES} is outside" in msg
    assert not (tmp_path / "out").exists()  # nothing was started


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_cli_dry_run_and_status(mesh, tmp_path):
    m, data = mesh
    out = tmp_path / "out"
    common = ["--input", str(data["data"]), "--output", str(out), "--services", str(m.services)]
    r = _cli("run", "--config", "configs/pipelines/arm_only.yaml", "--prompts", str(data["prompts"]),
             "--dry-run", "--episodes", "0-1", *common)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "pipeline arm_only" in r.stdout and "B/grippers: gripper_left#3@0:box" in r.stdout
    assert "nearest prompted keyframe" in r.stdout and not out.exists()
    r = _cli("run", "--config", "configs/pipelines/rgbm_sam3_text.yaml", "--dry-run", *common)
    assert r.returncode == 2 and "does not support prompt kind(s) ['text']" in r.stderr
    r = _cli("status", "--services", str(m.services))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" up ") == 4 and "sessions=0" in r.stdout


def test_preflight_skips_a_dead_sam_replica_and_refuses_a_dead_reader(mesh, tmp_path):
    m, data = mesh
    doc = yaml.safe_load(m.services.read_text())
    doc["services"]["sam"]["endpoints"].append("tcp://127.0.0.1:9")  # nothing listens there
    (tmp_path / "one_dead.yaml").write_text(yaml.safe_dump(doc))
    cfg = {"pipeline": "rgbm", "camera_key": "head_cam_img", "run": {"progress": False}}
    rep = run_pipeline(
        cfg, str(data["data"]), str(tmp_path / "out"), str(tmp_path / "one_dead.yaml"), "0"
    )
    assert rep["totals"]["done"] == 1 and rep["totals"]["sam_replicas"] == 1
    doc["services"]["reader"]["endpoints"] = ["tcp://127.0.0.1:9"]
    (tmp_path / "no_reader.yaml").write_text(yaml.safe_dump(doc))
    t0 = time.monotonic()
    with pytest.raises(RunError, match=r"reader at tcp://127.0.0.1:9, .*not answering"):
        run_pipeline(
            cfg, str(data["data"]), str(tmp_path / "out2"), str(tmp_path / "no_reader.yaml")
        )
    assert time.monotonic() - t0 < 10  # one ping timeout, not retries x call timeouts
