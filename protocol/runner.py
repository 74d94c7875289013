"""The command line shared by every service: `python -m services.NAME [options]`.

Usage:
    python -m services.sam --config configs/services.yaml            # settings from the config
    python -m services.sam --bind tcp://127.0.0.1:0 --backend classical --option max_sessions=4

Command-line values win over the config's `services.NAME` section. Once bound, the service
prints one line `READY <endpoint>` on stdout (tools wait for it), then logs to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
import zmq

from .config import ConfigError, load_services, services_config_path
from .server import Service
from .spawn import READY_PREFIX

log = logging.getLogger("protocol.runner")


def _parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(
            f"--option {text!r}: expected KEY=VALUE (VALUE is read as YAML)"
        )
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v) if v else None


def build_parser(name: str, module: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {module or 'services.' + name}", description=f"The {name} service."
    )
    p.add_argument(
        "--config",
        help="services config (default: $SERVICES_CONFIG, else configs/services.yaml if it exists)",
    )
    p.add_argument(
        "--bind", help="address to bind, e.g. tcp://127.0.0.1:5552 (port 0 = any free port)"
    )
    p.add_argument(
        "--replica", type=int, default=0, help="which of the config's bind addresses to use"
    )
    p.add_argument("--backend", help="backend name (overrides the config)")
    p.add_argument(
        "--option",
        action="append",
        type=_parse_option,
        default=[],
        metavar="KEY=VALUE",
        help="backend option (repeatable; VALUE is YAML, e.g. max_sessions=4)",
    )
    p.add_argument("--workers", type=int, help="compute threads")
    p.add_argument("--queue-size", type=int, help="bounded queue length before `overloaded`")
    p.add_argument(
        "--max-msg-bytes", type=int, help="largest accepted message frame (zmq.MAXMSGSIZE)"
    )
    p.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback bind without CURVE"
    )
    p.add_argument("--curve-secret", help="server key pair file NAME.key_secret: enables CURVE")
    p.add_argument("--curve-clients", help="folder of authorized client public keys")
    p.add_argument("--log-level", default="INFO")
    return p


def service_main(
    name: str,
    build: Callable[[str, dict], Service],
    argv: list[str] | None = None,
    *,
    module: str | None = None,
    default_backend: str | None = None,
) -> None:
    """Run a service from the command line. `module` names it in --help (default
    services.NAME); `default_backend` is used when neither --backend nor a config names one."""
    args = build_parser(name, module).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")  # fmt: skip
    cfg = None
    cfg_path, origin = services_config_path(args.config)
    if origin == "default" and not Path(cfg_path).is_file():
        cfg_path = None
    try:
        if cfg_path:
            all_cfg = load_services(cfg_path)
            cfg = all_cfg.services.get(name)
            if cfg is None and args.config:
                raise ConfigError(f"{cfg_path}: has no `services.{name}` section")
    except ConfigError as e:
        log.error("%s", e)
        sys.exit(2)
    backend = args.backend or (cfg.backend if cfg else None) or default_backend
    if backend is None:
        log.error(
            "backend: not given; pass --backend NAME or a --config with services.%s.backend", name
        )
        sys.exit(2)
    options = dict(cfg.options) if cfg and (cfg.backend == backend) else {}
    options.update(dict(args.option))
    if args.bind:
        bind = args.bind
    elif cfg:
        if not 0 <= args.replica < len(cfg.binds):
            log.error(
                "--replica %d: the config lists %d bind address(es)", args.replica, len(cfg.binds)
            )
            sys.exit(2)
        bind = cfg.binds[args.replica]
    else:
        bind = "tcp://127.0.0.1:0"
    curve_secret = args.curve_secret or (cfg.curve.secret_key if cfg and cfg.curve else None)
    curve_clients = args.curve_clients or (
        cfg.curve.authorized_clients if cfg and cfg.curve else None
    )
    try:
        svc = build(backend, options)
    except (ValueError, TypeError, ImportError, RuntimeError, FileNotFoundError) as e:
        log.error("cannot start %s with backend %r: %s", name, backend, e)
        sys.exit(2)
    # The config's workers/queue_size win over the service's own defaults only when written
    # in the file (a service may default to 2 workers; `workers: 1` must still mean 1).
    if args.workers or (cfg and "workers" in cfg.given):
        svc.workers = args.workers or cfg.workers
    if args.queue_size or (cfg and "queue_size" in cfg.given):
        svc.queue_size = args.queue_size or cfg.queue_size
    max_msg = args.max_msg_bytes or (cfg.max_msg_bytes if cfg else None)
    insecure = args.insecure or bool(cfg and cfg.insecure)
    log.info("config: bind=%s backend=%s options=%s workers=%d queue=%d curve=%s insecure=%s",
             bind, backend, options, svc.workers, svc.queue_size, bool(curve_secret), insecure)  # fmt: skip

    def ready(endpoint: str) -> None:
        print(f"{READY_PREFIX}{endpoint}", flush=True)

    kw = {"max_msg_bytes": max_msg} if max_msg else {}
    try:
        svc.serve(bind, insecure=insecure, curve_secret=curve_secret, curve_clients=curve_clients,
                  ready=ready, **kw)  # fmt: skip
    except (PermissionError, FileNotFoundError, ValueError, zmq.ZMQError) as e:
        log.error("cannot serve on %s: %s", bind, e)
        sys.exit(2)
