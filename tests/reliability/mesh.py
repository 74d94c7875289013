"""A whole mesh of real services for fault-injection tests, and the orchestrator as a process.

Usage:
    mesh = Mesh(tmp_path, demo_data)                 # reader, sam, vlm, exporter on free ports
    mesh.start(sam_args=["--queue-size", "2"])      # or start(("sam",), prefix=[...], host=...)
    cfg = mesh.services_yaml()                       # a services config pointing at them
    proc = mesh.orchestrator("run", out)             # python -m orchestrator run ... (Popen)
    rc = proc.wait(); mesh.restart("sam")            # same port again after a kill -9
    mesh.stop()

Pipelines: `arm_only` (four objects, two stages, prompts from the demo's prompts file; the
most SAM traffic) with outputs arm_only + npz, so a byte comparison covers all four masks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.reliability.procs import ROOT, Proc, child_env, spawn

SERVICES = ("reader", "sam", "vlm", "exporter")
TIMEOUTS = {"reader": 30, "sam": 30, "vlm": 30, "exporter": 60}  # client timeout_s per service


# Run settings of every pipeline in this suite (reference runs included, so outputs compare):
# progress bars off, quick retries, a propagate timeout short enough to notice a killed SAM.
RUN = {"progress": False, "backoff_s": 0.2, "backoff_max_s": 2.0, "episode_retries": 3,
       "propagate_timeout_s": 20.0}  # fmt: skip


def pipeline_yaml(path: Path, prompts: Path, *, pipeline: str = "arm_only", **run: object) -> Path:
    """A pipeline config for the demo data (RUN settings, overridable per key)."""
    cfg: dict = {"version": 1, "pipeline": pipeline, "camera_key": "head_cam_img",
                 "direction": "both", "prompts_file": str(prompts), "run": {**RUN, **run}}  # fmt: skip
    if pipeline == "arm_only":
        cfg["outputs"] = ["arm_only", "npz"]
    else:
        cfg["outputs"] = ["rgbm", "npz"]
        cfg["prompt"] = {"source": "vlm", "frame": 0}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class Mesh:
    """Real service processes on loopback (or behind a command prefix), in a tmp folder."""

    def __init__(self, work: Path, demo: Path) -> None:
        self.work, self.demo = Path(work), Path(demo)
        self.procs: dict[str, Proc] = {}
        self.extra: dict[str, list[str]] = {}
        self.prefix: dict[str, list[str] | None] = {}
        self.options: dict[str, dict] = {"vlm": {"prompts_file": str(self.demo / "prompts.yaml")}}
        self.curve: dict[str, dict] = {}  # service -> services.yaml curve section (clients)
        self.timeouts = dict(TIMEOUTS)  # client timeout_s per service (kill tests shorten them)
        (self.work / "logs").mkdir(parents=True, exist_ok=True)

    @property
    def source(self) -> Path:
        return self.demo / "demo.zarr"

    @property
    def prompts(self) -> Path:
        return self.demo / "prompts.yaml"

    def start(self, names: tuple[str, ...] = SERVICES, *, host: str = "127.0.0.1",
              prefix: list[str] | None = None, **extra_args: list[str]) -> Mesh:  # fmt: skip
        """Start services bound to host:0 (`prefix` e.g. ip netns exec NS); NAME_args=[...]."""
        for name in names:
            self.extra[name] = list(extra_args.get(f"{name}_args", []))
            self.prefix[name] = prefix
            self.procs[name] = self._spawn(name, f"tcp://{host}:0")
        return self

    def _spawn(self, name: str, bind: str) -> Proc:
        return spawn(name, cwd=self.work, bind=bind, options=self.options.get(name),
                     extra_args=self.extra.get(name), prefix=self.prefix.get(name),
                     log_path=self.work / "logs" / f"{name}.log")  # fmt: skip

    def restart(self, name: str) -> Proc:
        """Start a service again on the SAME endpoint (the old process must be gone)."""
        old = self.procs[name]
        if old.alive():
            raise RuntimeError(f"{name} is still running; kill it first")
        self.procs[name] = self._spawn(name, old.endpoint)
        return self.procs[name]

    def endpoint(self, name: str) -> str:
        return self.procs[name].endpoint

    def services_yaml(self, path: Path | None = None, *, endpoints: dict | None = None) -> Path:
        """A services config (protocol/config.py schema) for the running services."""
        services = {}
        for name, p in self.procs.items():
            s = {"endpoints": [(endpoints or {}).get(name, p.endpoint)],
                 "backend": {"reader": "zarr", "sam": "classical", "vlm": "prompts",
                             "exporter": "local"}[name],
                 "timeout_s": self.timeouts[name], "retries": 3}  # fmt: skip
            if name in self.curve:
                s["curve"] = self.curve[name]
            services[name] = s
        path = path or self.work / "services.yaml"
        path.write_text(yaml.safe_dump({"version": 1, "run_dir": str(self.work / ".run"),
                                        "services": services}, sort_keys=False))  # fmt: skip
        return path

    def orchestrator(self, config: Path, output: Path, services: Path | None = None, *,
                     data: Path | None = None, episodes: str | None = None,
                     prefix: list[str] | None = None,
                     log_name: str = "orchestrator.log") -> subprocess.Popen:  # fmt: skip
        """Start `python -m orchestrator run` (returns the Popen; stdout+stderr to a log).
        `data`: a demo folder (demo.zarr + prompts.yaml) other than the mesh's own."""
        data = Path(data or self.demo)
        args = [*(prefix or []), sys.executable, "-m", "orchestrator", "--log-level", "INFO", "run",
                "--config", str(config), "--input", str(data / "demo.zarr"), "--output", str(output),
                "--services", str(services or self.services_yaml()), "--no-progress",
                "--prompts", str(data / "prompts.yaml")]  # fmt: skip
        if episodes:
            args += ["--episodes", episodes]
        log = open(self.work / "logs" / log_name, "ab")
        try:
            return subprocess.Popen(args, cwd=self.work, stdout=log, stderr=subprocess.STDOUT,
                                    env=child_env())  # fmt: skip
        finally:
            log.close()

    def run(self, config: Path, output: Path, *, timeout: float = 240, **kw) -> int:
        """Run the orchestrator to the end; returns its exit code."""
        proc = self.orchestrator(config, output, **kw)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise

    def log(self, name: str) -> str:
        p = self.work / "logs" / (name if name.endswith(".log") else f"{name}.log")
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()


__all__ = ["Mesh", "pipeline_yaml", "ROOT", "SERVICES"]
