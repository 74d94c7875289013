"""Prompts meant for another buffer never run (issue 14 item 1): a prompts file is tied to its
buffer, `--prompts` selects the file source, `--dry-run` says where each prompt comes from.

Two generated buffers of different shapes: A (96x128, the one the VLM `prompts` backend was
started for) and B (96x96, the user's). Real services on loopback.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml
import zarr

from orchestrator.run import RunError, run_pipeline
from tests.helpers import ROOT
from tests.integration.test_orchestrator_pipeline import demo_buffer, local_mesh
from tools.demo_data import DemoConfig, write_demo

B_EPISODES, B_FRAMES, B_SIZE = 2, 8, 96
RGBM_VLM = {"pipeline": "rgbm", "camera_key": "head_cam_img", "run": {"progress": False}}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources")
    a = demo_buffer(tmp / "a")  # the VLM answers from A's prompts file
    b = write_demo(DemoConfig(seed=5, episodes=B_EPISODES, frames=B_FRAMES, height=B_SIZE,
                              width=B_SIZE), tmp / "b")  # fmt: skip
    with local_mesh(tmp, prompts=a["prompts"]) as m:
        yield m, a, b


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_vlm_prompts_backend_for_another_buffer_refuses_the_run(two, tmp_path):
    m, a, b = two
    with pytest.raises(RunError) as ei:  # before the fix: "2 done", the demo's boxes on B
        run_pipeline(RGBM_VLM, str(b["data"]), str(tmp_path / "out"), str(m.services))
    msg = str(ei.value)
    assert f"backend prompts, file {a['prompts']}" in msg and "not for the input" in msg
    assert str(b["data"].resolve()) in msg and "--prompts FILE" in msg
    assert not (tmp_path / "out").exists()
    # the buffer the VLM's file was written for still runs from the VLM
    rep = run_pipeline(RGBM_VLM, str(a["data"]), str(tmp_path / "out_a"), str(m.services), "0")
    assert rep["totals"]["done"] == 1
    assert any("from the VLM's bbox" in n for n in rep["sources"])


def test_prompts_flag_selects_the_file_source_and_masks_the_right_object(two, tmp_path):
    m, a, b = two
    notes: list[str] = []
    rep = run_pipeline(RGBM_VLM, str(b["data"]), str(tmp_path / "out"), str(m.services),
                       prompts_file=str(b["prompts"]), echo=notes.append)  # fmt: skip
    assert rep["totals"]["done"] == B_EPISODES
    assert any("--prompts sets it to file" in n for n in notes), notes
    assert rep["config"]["prompt"]["source"] == "file"
    out = np.asarray(zarr.open_group(str(tmp_path / "out" / "rgbm.zarr"), mode="r")["data/rgbm"][:])
    gt = np.asarray(zarr.open_group(str(b["gt"]), mode="r")["data/gt_target"][:])
    for ep in range(B_EPISODES):
        f = ep * B_FRAMES
        m_, g = out[f, ..., 3] == 1, gt[f]
        assert (m_ & g).sum() / max(1, (m_ | g).sum()) > 0.5  # B's own target, not A's box


def test_prompts_file_of_another_buffer_or_without_buffer_entry_is_refused(two, tmp_path):
    m, a, b = two
    with pytest.raises(RunError, match=r"buffer: written for fingerprint .* not for the input"):
        run_pipeline(RGBM_VLM, str(b["data"]), str(tmp_path / "o1"), str(m.services),
                     prompts_file=str(a["prompts"]))  # fmt: skip
    doc = yaml.safe_load(b["prompts"].read_text())
    entry = doc.pop("buffer")
    untied = tmp_path / "untied.yaml"
    untied.write_text(yaml.safe_dump(doc))
    with pytest.raises(RunError) as ei:
        run_pipeline(RGBM_VLM, str(b["data"]), str(tmp_path / "o2"), str(m.services),
                     prompts_file=str(untied))  # fmt: skip
    msg = str(ei.value)
    assert "buffer: missing" in msg and f"fingerprint: {entry['fingerprint']}" in msg
    # the fingerprint command prints the very entry the generator wrote
    # (the demo layout has two RGB keys, head_cam_img and right_cam_img: name the camera)
    r = _cli("fingerprint", "--input", str(b["data"]), "--camera-key", "head_cam_img",
             "--services", str(m.services))  # fmt: skip
    assert r.returncode == 0, r.stderr
    printed = yaml.safe_load(r.stdout)["buffer"]
    assert printed["fingerprint"] == entry["fingerprint"] and printed["size"] == [96, 96]
    assert f"services config: {m.services} (given on the command line)" in r.stderr
    # a text-prompt config has no use for a prompts file: refused, not ignored
    text = {**RGBM_VLM, "prompt": {"source": "text", "text": "red mug"}}
    with pytest.raises(RunError, match="prompt.source: text"):
        run_pipeline(text, str(b["data"]), str(tmp_path / "o3"), str(m.services),
                     prompts_file=str(b["prompts"]))  # fmt: skip


def test_dry_run_says_where_each_prompt_comes_from(two, tmp_path):
    m, a, b = two
    common = ["--output", str(tmp_path / "out"), "--services", str(m.services)]
    r = _cli("run", "--config", "configs/pipelines/rgbm.yaml", "--input", str(a["data"]),
             "--dry-run", *common)  # fmt: skip
    assert r.returncode == 0, r.stderr
    vlm_ep = m.endpoints["vlm"][0]
    assert f"{vlm_ep} backend prompts answering from {a['prompts']}" in r.stdout
    assert "target#1@0:vlm box of the instruction <- vlm bbox" in r.stdout
    r = _cli("run", "--config", "configs/pipelines/rgbm.yaml", "--input", str(b["data"]),
             "--prompts", str(b["prompts"]), "--dry-run", *common)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"target#1@0:box <- file {b['prompts']} episodes.1.target" in r.stdout
    assert "--prompts sets it to file" in r.stdout
    r = _cli("run", "--config", "configs/pipelines/rgbm.yaml", "--input", str(b["data"]),
             "--dry-run", *common)  # fmt: skip
    assert r.returncode == 2 and "not for the input" in r.stderr
