"""Test helpers: start a real service process on a free loopback port and talk to it.

Usage:
    with start_service("sam", backend="classical", options={"max_sessions": 2}) as svc:
        svc.client.call("start_session", {...})
        svc.proc                      # the subprocess.Popen
        svc.endpoint                  # tcp://127.0.0.1:PORT
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from protocol.client import Client

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunningService:
    name: str
    proc: subprocess.Popen
    endpoint: str
    client: Client
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def spawn_service(
    name: str,
    *,
    backend: str,
    options: dict | None = None,
    extra_args: list[str] | None = None,
    bind: str = "tcp://127.0.0.1:0",
    python: str | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 60.0,
    env: dict | None = None,
    module: str | None = None,
) -> tuple[subprocess.Popen, str, Path]:
    """Start `python -m services.NAME` (or `module`) and wait for READY; returns (proc, endpoint, log)."""
    args = [
        python or sys.executable,
        "-m",
        module or f"services.{name}",
        "--bind",
        bind,
        "--backend",
        backend,
    ]
    for k, v in (options or {}).items():
        args += [
            "--option",
            f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}",
        ]
    args += extra_args or []
    if log_path is None:
        import tempfile

        log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
    logf = open(log_path, "ab")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=logf,
                            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})  # fmt: skip
    logf.close()
    end = time.monotonic() + ready_timeout
    line = b""
    while time.monotonic() < end:
        r, _, _ = select.select([proc.stdout], [], [], 0.1)
        if r:
            line = proc.stdout.readline()
            if line.startswith(b"READY "):
                return proc, line.split()[1].decode(), log_path
        if proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise RuntimeError(
        f"service {name} did not become ready (exit {proc.returncode}):\n{log_path.read_text()[-3000:]}"
    )


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()
    return proc.returncode


@contextlib.contextmanager
def start_service(name: str, *, backend: str, options: dict | None = None, timeout: float = 30.0,
                  retries: int = 2, **kw) -> Iterator[RunningService]:  # fmt: skip
    proc, endpoint, log_path = spawn_service(name, backend=backend, options=options, **kw)
    client = Client(endpoint, timeout=timeout, retries=retries, name=name)
    try:
        yield RunningService(name, proc, endpoint, client, log_path)
    finally:
        client.close()
        stop_process(proc)
