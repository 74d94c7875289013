"""Start a service process and wait for its READY line: the one helper every starter uses.

Usage:
    args = service_args("sam", backend="classical", bind="tcp://127.0.0.1:0")
    svc = start(args, name="sam", log_path=Path("sam.log"), ready_timeout=60)
    svc.endpoint, svc.proc, svc.log()      # the bound address from the READY line
    svc.stop()

    # several at once (make up): spawn all, then wait
    procs = [spawn(a, name=n, log_path=p, detach=True) for n, a, p in todo]
    for p in procs:
        p.wait_ready(deadline, setting="READY_TIMEOUT_S")

A service (protocol/runner.py) prints one line `READY <endpoint>` on stdout once its socket is
bound, then logs to stderr. Both go to the log file here (appended), so a detached service
(`make up`) never writes into a closed pipe, and the READY line is read back from the log,
after the offset where this start began. A process that exits first, or prints nothing within
the timeout, raises StartError with the exit code, the setting that sets the timeout and the
log tail; a process that timed out is stopped (its whole session when detached).
Users: tools/launch.py (make up), tests/helpers.py, tests/reliability/procs.py, bench/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

READY_PREFIX = "READY "  # the line a bound service prints on stdout: "READY <endpoint>"
ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.02


class StartError(RuntimeError):
    """A service that exited before READY or did not print it in time (message has the log tail)."""

    def __init__(self, message: str, *, log_path: Path, returncode: int | None) -> None:
        super().__init__(message)
        self.log_path = log_path
        self.returncode = returncode


def option_args(options: dict | None) -> list[str]:
    """`--option KEY=VALUE` pairs, VALUE written as YAML (what the runner reads back)."""
    out: list[str] = []
    for k, v in (options or {}).items():
        text = yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
        out += ["--option", f"{k}={text}"]
    return out


def service_args(name: str, *, python: str | None = None, module: str | None = None,
                 bind: str | None = None, backend: str | None = None, config: str | None = None,
                 options: dict | None = None, extra_args: Sequence[str] = (),
                 prefix: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """The command line of `python -m services.NAME` (or `module`) with the usual flags."""
    args = [*prefix, python or sys.executable, "-m", module or f"services.{name}"]
    if config is not None:
        args += ["--config", str(config)]
    if bind is not None:
        args += ["--bind", bind]
    if backend is not None:
        args += ["--backend", backend]
    return [*args, *option_args(options), *extra_args]


def tail(path: Path, n: int = 40) -> str:
    """The last `n` lines of a log, or "(no log)"."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _ready_in(chunk: bytes) -> str | None:
    for line in chunk.split(b"\n")[:-1]:  # complete lines only
        if line.startswith(READY_PREFIX.encode()):
            return line[len(READY_PREFIX) :].strip().decode(errors="replace")
    return None


@dataclass
class ServiceProcess:
    """A started service process; `endpoint` is set once its READY line was read."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    args: list[str]
    detach: bool = False
    offset: int = 0  # where this start's output begins in the log
    endpoint: str | None = None
    _seen: bytes = field(default=b"", repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """This start's part of the log."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def poll_ready(self) -> str | None:
        """The endpoint once READY was printed, None while starting; StartError if it exited."""
        if self.endpoint is not None:
            return self.endpoint
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.offset + len(self._seen))
                self._seen += f.read()
        except OSError:
            pass
        self.endpoint = _ready_in(self._seen)
        if self.endpoint is None and self.proc.poll() is not None:
            self._seen += b"\n"  # a last line without a newline still counts
            self.endpoint = _ready_in(self._seen)
            if self.endpoint is None:
                raise StartError(
                    f"{self.name}: exited with code {self.proc.returncode} before printing READY. "
                    f"Log tail ({self.log_path}):\n{tail(self.log_path)}",
                    log_path=self.log_path, returncode=self.proc.returncode,
                )  # fmt: skip
        return self.endpoint

    def wait_ready(self, timeout: float, *, setting: str = "ready_timeout") -> str:
        """Block until READY (returns the endpoint); on timeout stop the process, raise StartError.

        `setting` names what sets `timeout`, so the message says what to raise.
        """
        end = time.monotonic() + timeout
        while True:
            ep = self.poll_ready()
            if ep is not None:
                return ep
            if time.monotonic() >= end:
                self.kill()
                raise StartError(
                    f"{self.name}: no READY line within {timeout:g} s (raise {setting} if it is only "
                    f"slow to start); process stopped. Log tail ({self.log_path}):\n{tail(self.log_path)}",
                    log_path=self.log_path, returncode=self.proc.returncode,
                )  # fmt: skip
            time.sleep(POLL_S)

    def _signal(self, sig: int) -> None:
        try:
            if self.detach:
                os.killpg(self.proc.pid, sig)  # the service leads its own session
            else:
                self.proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL: no drain, no close hooks - what a crash or the OOM killer does."""
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)
        self.proc.wait(10)

    kill9 = kill  # the reliability suite's name for it

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the service drains), SIGKILL after `timeout` seconds; the exit code."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def spawn(args: Sequence[str], *, name: str, log_path: Path, cwd: Path | str = ROOT,
          env: dict | None = None, detach: bool = False) -> ServiceProcess:  # fmt: skip
    """Start `args` with stdout and stderr appended to `log_path`; do not wait.

    `detach`: the service leads its own session and outlives the caller (make up).
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        if detach:
            log.write(
                f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {' '.join(args)}\n".encode()
            )
            log.flush()
        offset = log.tell()
        proc = subprocess.Popen(list(args), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=detach,
                                env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"})  # fmt: skip
    return ServiceProcess(name, proc, log_path, list(args), detach=detach, offset=offset)


def start(args: Sequence[str], *, name: str, log_path: Path, ready_timeout: float,
          setting: str = "ready_timeout", cwd: Path | str = ROOT, env: dict | None = None,
          detach: bool = False) -> ServiceProcess:  # fmt: skip
    """spawn() and wait_ready(): a running service with its endpoint, or StartError."""
    svc = spawn(args, name=name, log_path=log_path, cwd=cwd, env=env, detach=detach)
    svc.wait_ready(ready_timeout, setting=setting)
    return svc
