"""Launch the mesh: per-service virtual environments, start/stop/status/logs of service processes.

Usage (the Makefile wraps these):
    python -m tools.launch env SERVICE [BACKEND]     # build .venvs/SERVICE-BACKEND if missing
    python -m tools.launch up [--services "sam vlm"] [--bind tcp://0.0.0.0:5552]
    python -m tools.launch status | logs | down

`up` starts, for each selected service, one process per bind address (replica) in the
background, with its log and pid file under the run folder (configs/services.yaml: run_dir,
default .run/), and returns once every one answers `ping`; a process that dies or does not
answer in time has its log tail printed and `up` exits 1. With no --services, `up` starts the
services whose bind addresses are on this machine's loopback (a remote GPU host's services
are started there, with `make up SERVICES="sam vlm"`).

Environments are built with uv from services/NAME/requirements.txt plus
services/NAME/requirements-BACKEND.txt when that file exists, then the repository itself is
installed into them (editable, no dependencies). Light environments never get torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from protocol.config import ConfigError, ServiceConfig, load_services
from protocol.errors import RemoteError, ServiceUnavailable
from protocol.server import DRAIN_TIMEOUT_S
from tools.envs import ensure_env, requirement_files

ROOT = Path(__file__).resolve().parents[1]
# While waiting for a service to come up, unanswered pings are expected: keep the client quiet.
logging.getLogger("protocol.client").setLevel(logging.ERROR)
READY_TIMEOUT_S = float(os.environ.get("READY_TIMEOUT_S", "180"))  # heavy models load slowly
STOP_TIMEOUT_S = DRAIN_TIMEOUT_S + 5.0  # SIGTERM grace before SIGKILL: a service drains first


def say(msg: str) -> None:
    print(msg, flush=True)


# -- environments ---------------------------------------------------------------------------
def service_env(cfg: ServiceConfig) -> Path:
    return ensure_env(cfg.env_name, requirement_files(cfg.name, cfg.backend))


# -- processes ----------------------------------------------------------------------------
def _run_dir(cfg_run_dir: str) -> Path:
    d = Path(cfg_run_dir)
    d = d if d.is_absolute() else ROOT / d
    d.mkdir(parents=True, exist_ok=True)
    return d


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _ours(pid: int, tag: str) -> bool:
    """True if `pid` is alive and is the service process `tag` (e.g. sam-0) that `up` started.

    A pid file can outlive its process (a crash, a reboot) and the pid be reused by anything:
    never adopt or signal a process whose command line is not `-m services.NAME`.
    """
    if not _alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"services.{tag.rsplit('-', 1)[0]}".encode() in args


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _show(path: Path) -> str:
    """A path as a user reads it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _tail(path: Path, n: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def _ping(endpoint: str, cfg: ServiceConfig, timeout: float = 1.0) -> dict | None:
    c = cfg.client(timeout=timeout, retries=0, endpoints=[endpoint])
    try:
        return c.call("info", timeout=timeout)
    except (ServiceUnavailable, RemoteError):
        return None
    finally:
        c.close()


def up(config: str, services: list[str] | None, bind: str | None, python: str | None = None) -> int:
    """Start services; `python` runs them all with one interpreter instead of their own envs."""
    cfg = load_services(config)
    names = services or [n for n, s in cfg.services.items() if s.local]
    unknown = [n for n in names if n not in cfg.services]
    if unknown:
        say(f"SERVICES: {unknown[0]!r} is not in {config}; services there: {list(cfg.services)}")
        return 2
    if bind and len(names) != 1:
        say(
            "BIND: give it together with exactly one service, e.g. SERVICES=sam BIND=tcp://0.0.0.0:5552"
        )
        return 2
    run = _run_dir(cfg.run_dir)
    started: list[tuple[str, int, str, subprocess.Popen | None, Path]] = []
    for name in names:
        sc = cfg.services[name]
        py = Path(python) if python else service_env(sc)
        binds = [bind] if bind else list(sc.binds)
        for i, b in enumerate(binds):
            tag = f"{name}-{i}"
            pid_file, log_file = run / f"{tag}.pid", run / f"{tag}.log"
            pid = _pid(pid_file)
            connect = sc.endpoints[i] if i < len(sc.endpoints) else b
            if pid and _ours(pid, tag):
                say(f"{tag}: already running (pid {pid})")
                started.append((tag, pid, connect, None, log_file))
                continue
            args = [str(py), "-m", f"services.{name}", "--config", config, "--bind", b]
            with open(log_file, "ab") as log:
                log.write(
                    f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {' '.join(args)}\n".encode()
                )
                log.flush()
                proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
            pid_file.write_text(str(proc.pid))
            started.append((tag, proc.pid, connect, proc, log_file))
            say(f"{tag}: started pid {proc.pid} on {b} (log {_show(log_file)})")
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = list(started)
    while waiting:
        for item in list(waiting):
            tag, pid, endpoint, proc, log_file = item
            name = tag.rsplit("-", 1)[0]
            dead = (proc.poll() is not None) if proc is not None else not _alive(pid)
            if dead:
                say(
                    f"{tag}: exited before answering ping. Log tail ({log_file}):\n{_tail(log_file)}"
                )
                return 1
            if _ping(endpoint, cfg.services[name], timeout=0.5) is not None:
                say(f"{tag}: ready at {endpoint}")
                waiting.remove(item)
        if waiting and time.monotonic() > deadline:
            for tag, _, endpoint, _, log_file in waiting:
                say(
                    f"{tag}: no answer at {endpoint} within {READY_TIMEOUT_S:.0f} s. Log tail:\n{_tail(log_file)}"
                )
            return 1
        if waiting:
            time.sleep(0.2)
    say(f"up: {len(started)} process(es) answering")
    return 0


def down(config: str) -> int:
    cfg = load_services(config)
    run = _run_dir(cfg.run_dir)
    pids = {}
    for pid_file in sorted(run.glob("*.pid")):
        pid = _pid(pid_file)
        if pid and _ours(pid, pid_file.stem):
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError) as e:
                say(f"{pid_file.stem}: cannot signal pid {pid} ({e}); left alone")
                continue
            pids[pid_file] = pid
        else:
            if pid:
                say(f"{pid_file.stem}: stale pid file (pid {pid} is not this service); removed")
            pid_file.unlink(missing_ok=True)
    end = time.monotonic() + STOP_TIMEOUT_S
    while any(_alive(p) for p in pids.values()) and time.monotonic() < end:
        time.sleep(0.1)
    for pid_file, pid in pids.items():
        if _alive(pid):
            say(f"{pid_file.stem}: still running after {STOP_TIMEOUT_S:.0f} s; killing pid {pid}")
            try:
                os.killpg(
                    pid, signal.SIGKILL
                )  # the service leads its own session (start_new_session)
            except (ProcessLookupError, PermissionError):
                pass
        else:
            say(f"{pid_file.stem}: stopped (pid {pid})")
        pid_file.unlink(missing_ok=True)
    if not pids:
        say("down: nothing was running")
    return 0


def status(config: str) -> int:
    cfg = load_services(config)
    rows = []
    healthy = True
    for name, sc in cfg.services.items():
        for ep in sc.endpoints:
            info = _ping(ep, sc, timeout=1.5)
            if info is None:
                healthy = False
                rows.append((name, ep, sc.backend, "-", "DOWN", "-", "-", "-"))
                continue
            load = f"{info.get('in_flight', 0)}+{info.get('queue_depth', 0)}q"
            rows.append((name, ep, info.get("backend", "?"), str(info.get("pid", "?")), "ok",
                         f"{info.get('uptime_s', 0):.0f}s", str(info.get("requests_served", 0)), load))  # fmt: skip
    head = ("service", "endpoint", "backend", "pid", "state", "uptime", "served", "load")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0 if healthy else 1


def logs(config: str, n: int) -> int:
    cfg = load_services(config)
    run = _run_dir(cfg.run_dir)
    files = sorted(run.glob("*.log"))
    if not files:
        say(f"logs: none under {run}")
    for f in files:
        say(f"==> {_show(f)} <==\n{_tail(f, n)}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.launch", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=os.environ.get("SERVICES_CONFIG", "configs/services.yaml"))
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="build a service environment")
    e.add_argument("service")
    e.add_argument("backend", nargs="?")
    e.add_argument("--rebuild", action="store_true")
    u = sub.add_parser("up", help="start services and wait for ping")
    u.add_argument("--services", default=os.environ.get("SERVICES", ""), help='e.g. "sam vlm"')
    u.add_argument("--bind", default=os.environ.get("BIND") or None)
    u.add_argument(
        "--python",
        default=os.environ.get("SERVICE_PYTHON") or None,
        help="run every service with this interpreter (skip the per-service envs)",
    )
    sub.add_parser("down", help="stop services (SIGTERM, then SIGKILL)")
    sub.add_parser("status", help="info of every configured endpoint")
    lg = sub.add_parser("logs", help="tail of every service log")
    lg.add_argument("-n", type=int, default=40)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "env":
            sc = load_services(a.config).services.get(a.service)
            backend = a.backend or (sc.backend if sc else None)
            if backend is None:
                say(
                    f"env: {a.service!r} is not in {a.config}; give the backend: make env SERVICE={a.service} BACKEND=..."
                )
                return 2
            # The config's `env:` names the environment `up` will use for its own backend.
            name = sc.env_name if sc and sc.backend == backend else f"{a.service}-{backend}"
            ensure_env(name, requirement_files(a.service, backend), rebuild=a.rebuild)
            return 0
        if a.cmd == "up":
            return up(a.config, a.services.split() or None, a.bind, a.python)
        if a.cmd == "down":
            return down(a.config)
        if a.cmd == "status":
            return status(a.config)
        return logs(a.config, a.n)
    except (ConfigError, FileNotFoundError) as e:
        say(f"error: {e}")
        return 2
    except subprocess.CalledProcessError as e:
        say(f"error: {' '.join(map(str, e.cmd))} failed with exit code {e.returncode}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
