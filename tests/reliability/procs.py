"""Process helpers for the reliability suite: start real services anywhere, read their memory.

Usage:
    svc = spawn("sam", "classical", cwd=tmp_path, options={"max_sessions": 4})
    svc.endpoint          # tcp://127.0.0.1:PORT (from the service's READY line)
    rss_kib(svc.proc.pid) # VmRSS of the process, KiB
    svc.kill9(); svc2 = spawn(..., bind=svc.endpoint)    # same port again
    svc.stop()

Unlike tests/helpers.spawn_service this can run a service in another working folder (so a
fuzzer's random relative paths land under tmp_path, never in the repository) and behind a
command prefix such as `ip netns exec NS`.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0  # a service imports numpy/zarr/cv2 on 2 shared cores: allow slow starts
BACKENDS = {"reader": "zarr", "sam": "classical", "vlm": "prompts", "exporter": "local",
            "echo": "echo"}  # fmt: skip


def child_env(extra: dict | None = None) -> dict:
    """Environment for a child process: the repository importable from any working folder."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def option_args(options: dict | None) -> list[str]:
    out: list[str] = []
    for k, v in (options or {}).items():
        text = yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
        out += ["--option", f"{k}={text}"]
    return out


@dataclass
class Proc:
    """A running service process and where it answers."""

    name: str
    proc: subprocess.Popen
    endpoint: str
    log_path: Path
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no drain, no close hooks - what a crash or the OOM killer does."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode


def spawn(
    name: str,
    backend: str | None = None,
    *,
    cwd: Path,
    bind: str = "tcp://127.0.0.1:0",
    options: dict | None = None,
    extra_args: list[str] | None = None,
    prefix: list[str] | None = None,
    log_path: Path | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
    module: str | None = None,
) -> Proc:
    """Start `python -m services.NAME` (or `module`) in `cwd` and wait for its READY line."""
    args = [*(prefix or []), sys.executable, "-m", module or f"services.{name}", "--bind", bind,
            "--backend", backend or BACKENDS[name], *option_args(options), *(extra_args or [])]  # fmt: skip
    log_path = log_path or Path(cwd) / f"{name}-{time.monotonic_ns()}.log"
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=logf, env=child_env())
    end = time.monotonic() + ready_timeout
    while time.monotonic() < end:
        r, _, _ = select.select([proc.stdout], [], [], 0.1)
        if r:
            line = proc.stdout.readline()
            if line.startswith(b"READY "):
                return Proc(name, proc, line.split()[1].decode(), log_path, args)
        if proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise RuntimeError(
        f"service {name} did not become ready (exit {proc.returncode}); command {args}\n"
        f"{log_path.read_text(errors='replace')[-3000:]}"
    )


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/PID/status), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line (process gone?)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    """Poll `pred()` until true; raise TimeoutError naming `what`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what}: not reached within {timeout:.0f}s")
