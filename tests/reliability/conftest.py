"""Reliability suite fixtures: real services, real sockets, real files (nothing global, no autouse).

Usage:
    make test-reliability             # = pytest -m reliability tests/reliability
    RELIABILITY_SEED=7 make test-reliability    # another fuzz seed (default 0)
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.reliability.mesh import Mesh, pipeline_yaml
from tests.reliability.procs import ROOT


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "reliability: fault-injection, fuzz, load and network tests (make test-reliability)",
    )


def _demo(out: Path, episodes: int, frames: int) -> Path:
    subprocess.run(
        [sys.executable, "-m", "tools.demo_data", "--out", str(out), "--seed", "0",
         "--episodes", str(episodes), "--frames", str(frames), "--height", "120", "--width", "160"],
        cwd=ROOT, check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated replay buffer: 2 episodes x 20 frames of 120x160 RGB (+ its prompts)."""
    return _demo(tmp_path_factory.mktemp("demo"), 2, 20)


@pytest.fixture(scope="session")
def kill_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A longer buffer for kill tests (5 episodes x 30 frames): a run lasts long enough to be
    interrupted between its first finished episode and its last."""
    return _demo(tmp_path_factory.mktemp("kill"), 5, 30)


@pytest.fixture(scope="session")
def reference(
    tmp_path_factory: pytest.TempPathFactory, demo_data: Path
) -> Iterator[Callable[[str, Path], Path]]:
    """reference(pipeline, data_dir) -> the output folder of an uninterrupted loopback run
    (computed once per session; the vlm answers from demo_data's prompts, so `rgbm` runs only
    on demo_data)."""
    work = tmp_path_factory.mktemp("reference")
    mesh: Mesh | None = None
    done: dict[tuple[str, Path], Path] = {}

    def get(pipeline: str, data: Path) -> Path:
        nonlocal mesh
        if pipeline == "rgbm" and data != demo_data:
            raise ValueError("reference: rgbm runs use the vlm's prompts, i.e. demo_data only")
        key = (pipeline, data)
        if key not in done:
            if mesh is None:
                mesh = Mesh(work, demo_data).start()
            out = work / f"{pipeline}-{data.name}"
            cfg = pipeline_yaml(work / f"{pipeline}.yaml", data / "prompts.yaml", pipeline=pipeline)
            rc = mesh.run(cfg, out, data=data)
            if rc != 0:
                raise RuntimeError(f"reference run failed (exit {rc}):\n{mesh.log('orchestrator')}")
            done[key] = out
        return done[key]

    yield get
    if mesh is not None:
        mesh.stop()
