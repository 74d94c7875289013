"""Test helpers: start a real service process on a free loopback port and talk to it.

Usage:
    with start_service("sam", backend="classical", options={"max_sessions": 2}) as svc:
        svc.client.call("start_session", {...})
        svc.proc                      # the subprocess.Popen
        svc.endpoint                  # tcp://127.0.0.1:PORT

Starting and waiting for the READY line is protocol/spawn.py's (shared with make up,
the reliability suite and the benchmarks).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from protocol.client import Client
from protocol.contract import contract_for
from protocol.spawn import service_args, start

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
    """Start `python -m services.NAME` (or `module`) and wait for READY; returns (proc, endpoint, log).

    Raises protocol.spawn.StartError (a RuntimeError) with the exit code and the log tail.
    """
    args = service_args(name, python=python or sys.executable, module=module, bind=bind,
                        backend=backend, options=options, extra_args=extra_args or [])  # fmt: skip
    if log_path is None:
        fd, tmp = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
        os.close(fd)
        log_path = Path(tmp)
    svc = start(args, name=name, log_path=log_path, ready_timeout=ready_timeout, cwd=ROOT,
                env={**os.environ, **(env or {})}, setting="spawn_service(ready_timeout=...)")  # fmt: skip
    return svc.proc, svc.endpoint, log_path


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def start_service(name: str, *, backend: str, options: dict | None = None, timeout: float = 30.0,
                  retries: int = 2, **kw) -> Iterator[RunningService]:  # fmt: skip
    proc, endpoint, log_path = spawn_service(name, backend=backend, options=options, **kw)
    client = Client(endpoint, timeout=timeout, retries=retries, name=name,
                    contract=contract_for(name))  # fmt: skip
    try:
        yield RunningService(name, proc, endpoint, client, log_path)
    finally:
        client.close()
        stop_process(proc)
