"""One orchestrator per output: a claim taken at start, and the run key that names its sessions.

Usage:
    key = run_key("/data/out/rgbm")                 # 12 hex digits, the same for every run
    claim = OutputClaim.acquire("/data/out/rgbm", run_id=f"{key}-a1b2c3d4")   # RunError if held
    try: ... finally: claim.release()

The claim is an exclusive flock on a file named after the output (in the temp folder of this
host) holding who took it (run id, pid, host, start time, command). The kernel drops it when
the process dies, `kill -9` included, so a killed run never blocks the next one; a second
orchestrator started on the same output while the first runs is refused at start with the
holder named. SAM sessions of a run are named `orc-<run key>-<run>-e<ep>-a<attempt>`, so a new
run of the same output can close what a killed one left open (sam op `close_sessions`).
Scope: orchestrators on this host (the exporter's own lock guards the folder itself).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
from pathlib import Path


class ClaimError(Exception):
    """Another orchestrator holds the output; the message names it."""


def run_key(output: str) -> str:
    """12 hex digits of sha256 of the resolved output path (the sessions' name prefix)."""
    return hashlib.sha256(str(Path(output).resolve()).encode()).hexdigest()[:12]


def session_prefix(output: str) -> str:
    """The prefix every SAM session of every run of this output starts with."""
    return f"orc-{run_key(output)}-"


def claim_path(output: str) -> Path:
    return Path(tempfile.gettempdir()) / f"maskmesh-orchestrator-{run_key(output)}.lock"


def holder(output: str) -> dict | None:
    """Who holds the output now (the claim file's content), or None when nobody does."""
    path = claim_path(output)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(path) or {"pid": "?", "note": "holder not written yet"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None


def describe_holder(h: dict) -> str:
    return (f"run {h.get('run_id')} (pid {h.get('pid')} on {h.get('host')}, started "
            f"{h.get('started')}: {h.get('command')})")  # fmt: skip


class OutputClaim:
    def __init__(self, output: str, fd: int, path: Path) -> None:
        self.output = output
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, output: str, run_id: str) -> OutputClaim:
        out = str(Path(output).resolve())
        path = claim_path(out)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = _read(path) or {}
            raise ClaimError(
                f"output {out} is being written by another orchestrator: {describe_holder(h)}; "
                f"wait for it to finish (`python -m orchestrator status --output {output}` shows "
                f"its progress), stop it, or choose another --output (claim file {path})"
            ) from None
        info = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                "output": out, "command": " ".join(sys.argv)[:300],
                "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return cls(out, fd, path)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # nobody holds it: an empty file
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
