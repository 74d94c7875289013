"""Launch the mesh: per-service virtual environments, start/stop/status/logs of service processes.

Usage (the Makefile wraps these):
    python -m tools.launch env SERVICE [BACKEND]     # build .venvs/SERVICE-BACKEND if missing
    python -m tools.launch up [--services "sam vlm"] [--bind tcp://0.0.0.0:5552]
    python -m tools.launch restart [--services "sam"]
    python -m tools.launch status | logs | down [--services "sam"]

`up` starts, for each selected service, one process per bind address (replica) in the
background, with its log, pid file and start record (the config it was started with and a
run token) under the run folder (configs/services.yaml: run_dir, default .run/), and returns
once every one has printed its READY line (protocol/spawn.py) and answers `info` at the
config's endpoint with its run token. A process that dies or prints nothing within
READY_TIMEOUT_S (default 180 s) has its log tail printed and `up` exits 1. A service already
running is kept if the config it was started with matches the file, else restarted with the
keys that differ named; a process this run folder did not start answering on a service's
port is refused, never taken for the service. `down` sends SIGTERM, and SIGKILL after
STOP_TIMEOUT_S (35 s: the service's 30 s drain plus 5 s). With no --services, `up` starts
the services whose bind addresses are on this machine's loopback (a remote GPU host's
services are started there, with `make up SERVICES="sam vlm"`).

Environments are built with uv from services/NAME/requirements.txt plus
services/NAME/requirements-BACKEND.txt when that file exists, then the repository itself is
installed into them (editable, no dependencies). Light environments never get torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from protocol.config import (
    ConfigError,
    ServiceConfig,
    describe_services_source,
    load_services,
    services_config_path,
)
from protocol.errors import RemoteError, ServiceUnavailable
from protocol.server import DRAIN_TIMEOUT_S, RUN_TOKEN_ENV
from protocol.spawn import ServiceProcess, StartError, service_args, spawn, tail
from tools.envs import ensure_env, requirement_files
from tools.launch_config import config_diff, snapshot

ROOT = Path(__file__).resolve().parents[1]
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
    return tail(path, n)


def _info(endpoint: str, cfg: ServiceConfig, timeout: float = 1.0) -> dict | None:
    # Probing endpoints that may not answer (yet) is expected here: keep the client quiet
    # (set when probing, not at import, so importing this module changes no one's logging).
    logging.getLogger("protocol.client").setLevel(logging.ERROR)
    c = cfg.client(timeout=timeout, retries=0, endpoints=[endpoint])
    try:
        return c.call("info", timeout=timeout)
    except (ServiceUnavailable, RemoteError):
        return None
    finally:
        c.close()


def _listening(endpoint: str) -> bool:
    """True when something accepts TCP connections at a tcp:// endpoint (fast, no ZeroMQ wait)."""
    m = re.match(r"^tcp://(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:/]+)):(?P<port>\d+)$", endpoint)
    if not m:
        return False
    host = m.group("v6") or m.group("host")
    host = "127.0.0.1" if host in ("*", "0.0.0.0") else host
    try:
        with socket.create_connection((host, int(m.group("port"))), timeout=0.5):
            return True
    except OSError:
        return False


def _who(info: dict | None) -> str:
    if info is None:
        return "a process that does not answer `info`"
    return f"{info.get('service', '?')} pid {info.get('pid', '?')} (started by another run folder or by hand)"


def _state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stop(tags: list[tuple[str, int]], run: Path) -> None:
    """SIGTERM each (tag, pid), SIGKILL (its whole session) after STOP_TIMEOUT_S; remove files."""
    for tag, pid in tags:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError) as e:
            say(f"{tag}: cannot signal pid {pid} ({e}); left alone")
    end = time.monotonic() + STOP_TIMEOUT_S
    while any(_alive(p) for _, p in tags) and time.monotonic() < end:
        time.sleep(0.1)
    for tag, pid in tags:
        if _alive(pid):
            say(f"{tag}: still running after {STOP_TIMEOUT_S:.0f} s; killing pid {pid}")
            try:
                os.killpg(pid, signal.SIGKILL)  # the service leads its own session
            except (ProcessLookupError, PermissionError):
                pass
        else:
            say(f"{tag}: stopped (pid {pid})")
        for ext in ("pid", "json"):
            (run / f"{tag}.{ext}").unlink(missing_ok=True)


def up(config: str, services: list[str] | None, bind: str | None, python: str | None = None,
       restart: bool = False) -> int:  # fmt: skip
    """Start services; `python` runs them all with one interpreter instead of their own envs.

    A service already running (started from this run folder, answering with its run token)
    is kept when the config it was started with matches the file, and restarted, naming the
    keys that differ, when it does not (`restart`: always). A process this run folder did not
    start that answers on a service's port is never taken for it: `up` refuses.
    """
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
    todo: list[tuple[str, str, str, ServiceConfig, dict]] = []  # tag, bind, connect, cfg, snap
    kept: list[str] = []
    for name in names:
        sc = cfg.services[name]
        binds = [bind] if bind else list(sc.binds)
        for i, b in enumerate(binds):
            tag = f"{name}-{i}"
            connect = sc.endpoints[i] if i < len(sc.endpoints) else b
            todo.append((tag, b, connect, sc, snapshot(sc, b)))
    # 1. what runs already: keep it, restart it, or refuse a stranger on its port
    to_stop: list[tuple[str, int]] = []
    to_start = []
    failed = False
    for tag, b, connect, sc, snap in todo:
        pid = _pid(run / f"{tag}.pid")
        state = _state(run / f"{tag}.json") or {}
        if pid and _ours(pid, tag):
            info = _info(connect, sc, timeout=2.0)
            token = state.get("token")
            if info is None:
                say(f"{tag}: pid {pid} runs but does not answer at {connect} (still starting, or "
                    f"stuck; see make logs); make restart SERVICES={sc.name} restarts it")  # fmt: skip
                failed = True
                continue
            if (token and info.get("run_token") != token) or (not token and info.get("pid") != pid):
                say(f"{tag}: pid {pid} from {_show(run)} runs, but {connect} is answered by "
                    f"{_who(info)}; stop one of them (make down) or give {sc.name} another port in {config}")  # fmt: skip
                failed = True
                continue
            diff = config_diff(state["config"], snap) if "config" in state else None
            if restart or diff:
                why = (
                    "restart asked"
                    if restart
                    else f"its config differs from {config}: " + "; ".join(diff)
                )
                say(f"{tag}: running (pid {pid}) but {why}; restarting")
                to_stop.append((tag, pid))
                to_start.append((tag, b, connect, sc, snap))
                continue
            if diff is None:
                say(f"{tag}: already running (pid {pid}); the config it was started with is not "
                    f"recorded, so a changed config is not detected: make restart SERVICES={sc.name}")  # fmt: skip
            else:
                say(f"{tag}: already running (pid {pid}), config unchanged")
            kept.append(tag)
            continue
        if pid:
            say(f"{tag}: stale pid file (pid {pid} is not this service); removed")
            (run / f"{tag}.pid").unlink(missing_ok=True)
        if _listening(connect):
            say(f"{tag}: {connect} is already answered by {_who(_info(connect, sc))}, which "
                f"{_show(run)} did not start; it is not taken for {sc.name}: stop it, or give "
                f"{sc.name} another port in {config}")  # fmt: skip
            failed = True
            continue
        to_start.append((tag, b, connect, sc, snap))
    if failed:
        return 1
    if to_stop:
        _stop(to_stop, run)
    # 2. start the rest, then wait for each READY line and check who answers
    started: list[tuple[str, str, ServiceConfig, ServiceProcess, str]] = []
    for tag, b, connect, sc, snap in to_start:
        py = Path(python) if python else service_env(sc)
        token = secrets.token_hex(8)
        args = service_args(sc.name, python=str(py), config=config, bind=b)
        proc = spawn(args, name=tag, log_path=run / f"{tag}.log", cwd=ROOT, detach=True,
                     env={**os.environ, RUN_TOKEN_ENV: token})  # fmt: skip
        (run / f"{tag}.pid").write_text(str(proc.pid))
        (run / f"{tag}.json").write_text(json.dumps({"pid": proc.pid, "token": token, "config": snap,
                                                     "config_path": config, "bind": b}, indent=1))  # fmt: skip
        started.append((tag, connect, sc, proc, token))
        say(f"{tag}: started pid {proc.pid} on {b} (log {_show(run / f'{tag}.log')})")
    deadline = time.monotonic() + READY_TIMEOUT_S
    for tag, connect, sc, proc, token in started:
        try:
            proc.wait_ready(max(0.0, deadline - time.monotonic()), setting="READY_TIMEOUT_S")
        except StartError as e:
            say(str(e))
            for ext in ("pid", "json"):  # nothing of ours runs under this tag
                (run / f"{tag}.{ext}").unlink(missing_ok=True)
            failed = True
            continue
        info = None
        for _ in range(10):  # READY: the socket is bound; the config's endpoint must reach it
            info = _info(connect, sc, timeout=1.0)
            if info is not None:
                break
        if info is None or info.get("run_token") != token:
            say(f"{tag}: printed READY on {proc.endpoint}, but {connect} (the config's endpoint) "
                f"is answered by {_who(info)}; check endpoints/bind of {sc.name} in {config}")  # fmt: skip
            failed = True
            continue
        say(f"{tag}: ready at {connect}")
        if info.get("url"):  # the studio's page
            say(f"{tag}: open {info['url']} in a browser")
    if failed:
        return 1
    say(f"up: {len(started)} started, {len(kept)} kept running")
    return 0


def down(config: str, services: list[str] | None = None) -> int:
    """Stop the services this run folder started (all, or those named in `services`)."""
    cfg = load_services(config)
    run = _run_dir(cfg.run_dir)
    tags = []
    for pid_file in sorted(run.glob("*.pid")):
        tag = pid_file.stem
        if services and tag.rsplit("-", 1)[0] not in services:
            continue
        pid = _pid(pid_file)
        if pid and _ours(pid, tag):
            tags.append((tag, pid))
        else:
            if pid:
                say(f"{tag}: stale pid file (pid {pid} is not this service); removed")
            pid_file.unlink(missing_ok=True)
            (run / f"{tag}.json").unlink(missing_ok=True)
    _stop(tags, run)
    if not tags:
        say("down: nothing was running")
    return 0


def status(config: str) -> int:
    """One row per configured endpoint (from its `info`), then the open sessions of each."""
    cfg = load_services(config)
    rows, sessions = [], []
    healthy = True
    for name, sc in cfg.services.items():
        for ep in sc.endpoints:
            info = _info(ep, sc, timeout=1.5)
            if info is None:
                healthy = False
                rows.append((name, ep, sc.backend, "-", "DOWN", "-", "-", "-", "-"))
                continue
            load = f"{info.get('in_flight', 0)}+{info.get('queue_depth', 0)}q"
            open_ = info.get("sessions")  # services with sessions (sam) list them in `info`
            rows.append((name, ep, info.get("backend", "?"), str(info.get("pid", "?")), "ok",
                         f"{info.get('uptime_s', 0):.0f}s", str(info.get("requests_served", 0)), load,
                         str(len(open_)) if isinstance(open_, list) else "-"))  # fmt: skip
            for s in open_ if isinstance(open_, list) else []:
                shape = "x".join(map(str, s.get("shape", [])))
                sessions.append(f"  {name} {ep}: {s.get('session')}  frames {shape}  objects "
                                f"{s.get('obj_ids')}  {s.get('bytes', 0) / 2**20:.1f} MiB  idle "
                                f"{s.get('idle_s', 0):.0f}s")  # fmt: skip
    head = (
        "service",
        "endpoint",
        "backend",
        "pid",
        "state",
        "uptime",
        "served",
        "load",
        "sessions",
    )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if sessions:
        say("open sessions:")
        for line in sessions:
            say(line)
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
    ap.add_argument(
        "--config",
        default=None,
        help="services config (default: $SERVICES_CONFIG, else configs/services.yaml)",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="build a service environment")
    e.add_argument("service")
    e.add_argument("backend", nargs="?")
    e.add_argument("--rebuild", action="store_true")
    for cmd, what in (("up", "start services (restart those whose config changed)"),
                      ("restart", "stop and start services")):  # fmt: skip
        u = sub.add_parser(cmd, help=what)
        u.add_argument("--services", default=os.environ.get("SERVICES", ""), help='e.g. "sam vlm"')
        u.add_argument("--bind", default=os.environ.get("BIND") or None)
        u.add_argument(
            "--python",
            default=os.environ.get("SERVICE_PYTHON") or None,
            help="run every service with this interpreter (skip the per-service envs)",
        )
    d = sub.add_parser(
        "down", help=f"stop services (SIGTERM, SIGKILL after {STOP_TIMEOUT_S:.0f} s)"
    )
    d.add_argument("--services", default=os.environ.get("SERVICES", ""), help='e.g. "sam"')
    sub.add_parser("status", help="info of every configured endpoint")
    lg = sub.add_parser("logs", help="tail of every service log")
    lg.add_argument("-n", type=int, default=40)
    a = ap.parse_args(argv)
    a.config, origin = services_config_path(a.config)  # one rule for every command
    print(describe_services_source(a.config, origin), file=sys.stderr, flush=True)
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
        if a.cmd in ("up", "restart"):
            return up(
                a.config, a.services.split() or None, a.bind, a.python, restart=a.cmd == "restart"
            )
        if a.cmd == "down":
            return down(a.config, a.services.split() or None)
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
