"""Process helpers for the reliability suite: start real services anywhere, read their memory.

Usage:
    svc = spawn("sam", "classical", cwd=tmp_path, options={"max_sessions": 4})
    svc.endpoint          # tcp://127.0.0.1:PORT (from the service's READY line)
    rss_kib(svc.proc.pid) # VmRSS of the process, KiB
    svc.kill9(); svc2 = spawn(..., bind=svc.endpoint)    # same port again
    svc.stop()

Starting and waiting for READY is protocol/spawn.py's. Unlike tests/helpers.spawn_service
this can run a service in another working folder (so a fuzzer's random relative paths land
under tmp_path, never in the repository) and behind a command prefix such as
`ip netns exec NS`.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from protocol.spawn import ServiceProcess, service_args, start

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


Proc = ServiceProcess  # the suite's name for a started service (kill9, stop, log, alive)


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
    """Start `python -m services.NAME` (or `module`) in `cwd` and wait for its READY line.

    Raises protocol.spawn.StartError (a RuntimeError) with the exit code and the log tail.
    """
    args = service_args(name, module=module, bind=bind, backend=backend or BACKENDS[name],
                        options=options, extra_args=extra_args or [], prefix=prefix or [])  # fmt: skip
    log_path = log_path or Path(cwd) / f"{name}-{time.monotonic_ns()}.log"
    return start(args, name=name, log_path=log_path, ready_timeout=ready_timeout, cwd=cwd,
                 env=child_env(), setting="tests/reliability/procs.py READY_TIMEOUT_S")  # fmt: skip


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
