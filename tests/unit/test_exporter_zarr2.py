"""The rgbm and arm-only buffers open in a real zarr 2.x reader (as DexGraspVLA / diffusion_policy
load them), installed with uv into a throwaway venv. Slow; skipped when offline.

Run: python3 -m pytest tests/unit/test_exporter_zarr2.py -q -m slow
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

from services.exporter.export import Export, MemoryBudget
from services.exporter.synthetic import CAMERA_KEY, export_episodes, make_replay_buffer

pytestmark = pytest.mark.slow

READER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import zarr
    assert zarr.__version__.startswith("2."), zarr.__version__
    out, expected = sys.argv[1], sys.argv[2]
    root = zarr.open(out + "/rgbm.zarr", "r")          # as diffusion_policy's ReplayBuffer
    mem = zarr.MemoryStore()                           # ReplayBuffer.copy_from_path
    zarr.copy_store(root.store, mem, source_path="/meta", dest_path="/meta")
    zarr.copy_store(root.store, mem, source_path="/data", dest_path="/data")
    copied = zarr.group(store=mem)
    report = {"version": zarr.__version__, "keys": sorted(root["data"].array_keys()),
              "compressor": root["data/rgbm"].compressor.get_config(),
              "attrs": dict(root["data/rgbm"].attrs)}
    ref = np.load(expected)
    report["episode_ends"] = root["meta/episode_ends"][:].tolist()
    report["equal"] = {k: bool(np.array_equal(copied["data"][k][:], ref[k]))
                       for k in ref.files if k != "arm_only_mask"}
    arm = zarr.open(out + "/arm_only.zarr", "r")
    report["equal"]["arm_only_mask"] = bool(np.array_equal(arm["data/arm_only_mask"][:],
                                                           ref["arm_only_mask"]))
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def zarr2_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed: cannot build a zarr 2.x venv")
    venv = tmp_path_factory.mktemp("zarr2") / "venv"
    subprocess.run([uv, "venv", "-q", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    proc = subprocess.run([uv, "pip", "install", "-q", "--python", python, "zarr<3", "numcodecs",
                           "numpy"], capture_output=True, text=True, timeout=300)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot install zarr<3 (offline?): {proc.stderr.strip()[-300:]}")
    return python


def test_zarr2_reader_loads_the_buffers(tmp_path: Path, zarr2_python: str) -> None:
    lengths, h, w = [6, 9, 4], 24, 30
    src = make_replay_buffer(tmp_path / "src.zarr", lengths, h, w)
    exp = Export.open(str(tmp_path / "out"), str(src), CAMERA_KEY, ["rgbm", "arm_only"],
                      {"chunk_bytes": 8000, "arm_only_zarr": True, "fsync": False,
                       "pipeline": {"name": "test"}}, MemoryBudget(1 << 30))  # fmt: skip
    export_episodes(exp, lengths, h, w, order=[1, 2, 0])
    exp.close()
    ours = zarr.open_group(str(tmp_path / "out" / "rgbm.zarr"), mode="r")
    arm = zarr.open_group(str(tmp_path / "out" / "arm_only.zarr"), mode="r")
    expected = {k: np.asarray(a[:]) for k, a in ours["data"].arrays()}
    np.savez(tmp_path / "expected.npz", arm_only_mask=arm["data/arm_only_mask"][:], **expected)
    proc = subprocess.run([zarr2_python, "-c", READER, str(tmp_path / "out"),
                           str(tmp_path / "expected.npz")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["version"].startswith("2.")
    assert report["keys"] == sorted(["action", CAMERA_KEY, "rgbm", "robot_eef_pos", "step"])
    assert report["episode_ends"] == np.cumsum(lengths).tolist()
    assert report["compressor"]["id"] == "blosc" and report["compressor"]["cname"] == "lz4"
    assert report["attrs"]["channel_order"] == "RGBM" and report["attrs"]["mask_values"] == [0, 1]
    assert report["equal"] and all(report["equal"].values()), report["equal"]
    src_rgb = zarr.open_group(str(src), mode="r")[f"data/{CAMERA_KEY}"][:]
    np.testing.assert_array_equal(expected["rgbm"][..., :3], src_rgb)  # and ours match the source
    print(f"zarr {report['version']} read both buffers", file=sys.stderr)
