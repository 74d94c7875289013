"""A real mesh for the studio tests: demo data, reader, sam (classical), exporter, studio processes.

Usage:
    with studio_mesh(tmp_path, episodes=2, frames=40) as m:
        m.url            # http://127.0.0.1:PORT/ of the studio page
        m.gt(0)          # (T, H, W) bool ground-truth target masks of episode 0
        m.restart_studio(kill=True)

Everything runs on free loopback ports. The browser tests drive Debian's /usr/bin/chromium.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from protocol.client import Client
from tests.helpers import ROOT, spawn_service, start_service, stop_process

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts" / "studio"  # screenshots (git-ignored)


def have_browser() -> str | None:
    """None when the browser tests can run, else why not."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (tests/requirements.txt)"
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


def make_demo(out: Path, episodes: int, frames: int) -> Path:
    subprocess.run([sys.executable, "-m", "tools.demo_data", "--out", str(out), "--seed", "0",
                    "--episodes", str(episodes), "--frames", str(frames)],
                   cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    return out


@dataclass
class StudioMesh:
    tmp: Path
    data: Path
    config: Path
    options: dict
    services: dict = field(default_factory=dict)  # name -> RunningService (reader, sam, exporter)
    extra: list = field(default_factory=list)  # processes a test started (stopped at the end)
    studio: subprocess.Popen | None = None
    url: str = ""
    studio_endpoint: str = ""  # the studio's mesh endpoint (ping / info / status)
    log: Path | None = None
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def start_studio(self) -> None:
        self.studio, endpoint, self.log = spawn_service(
            "studio", backend="http", options=self.options, ready_timeout=120,
            log_path=self.tmp / "studio.log")  # fmt: skip
        self.studio_endpoint = endpoint
        c = Client(endpoint, timeout=10, retries=0)
        try:
            self.url = c.call("info")["url"]
        finally:
            c.close()

    def restart_studio(self, kill: bool = False) -> None:
        if kill:
            self.studio.kill()
            self.studio.wait()
            if self.studio.stdout:
                self.studio.stdout.close()
        else:
            stop_process(self.studio)
        self.start_studio()

    def gt(self, ep: int) -> np.ndarray:
        import zarr

        g = zarr.open_group(str(self.data / "demo_gt.zarr"), mode="r")
        ends = np.asarray(g["meta/episode_ends"][:])
        a = 0 if ep == 0 else int(ends[ep - 1])
        return np.asarray(g["data/gt_target"][a : int(ends[ep])]).astype(bool)

    def target_box(self, ep: int) -> list[float]:
        doc = yaml.safe_load((self.data / "prompts.yaml").read_text())
        return doc["episodes"][ep]["target"]["box"]


@contextlib.contextmanager
def studio_mesh(tmp: Path, episodes: int = 2, frames: int = 40, extra: dict | None = None,
                data: Path | None = None) -> Iterator[StudioMesh]:  # fmt: skip
    """The mesh on `data` (a tools.demo_data folder) or on fresh demo data of that size."""
    data = Path(data).resolve() if data is not None else make_demo(tmp / "demo", episodes, frames)
    with contextlib.ExitStack() as stack:
        eps, services = {}, {}
        for name, backend in (("reader", "zarr"), ("sam", "classical"), ("exporter", "local")):
            svc = stack.enter_context(
                start_service(name, backend=backend, log_path=tmp / f"{name}.log")
            )
            eps[name] = (svc.endpoint, backend)
            services[name] = svc
        cfg = {"version": 1, "run_dir": str(tmp / "run"), "services": {
            n: {"endpoints": [e], "backend": b, "timeout_s": 300} for n, (e, b) in eps.items()}}  # fmt: skip
        config = tmp / "services.yaml"
        config.write_text(yaml.safe_dump(cfg))
        options = {"http": "127.0.0.1:0", "buffer": str(data / "demo.zarr"),
                   "pipeline": str(ROOT / "configs/pipelines/rgbm_demo.yaml"),
                   "output": str(tmp / "out"), "services_config": str(config), **(extra or {})}  # fmt: skip
        m = StudioMesh(tmp, data, config, options, services)
        m.start_studio()
        try:
            yield m
        finally:
            if m.studio is not None:
                stop_process(m.studio)
            for p in m.extra:
                stop_process(p)
