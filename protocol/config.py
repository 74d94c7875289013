"""configs/services.yaml: where each service lives and how it runs, as frozen dataclasses.

Usage:
    cfg = load_services("configs/services.yaml")
    sam = cfg.services["sam"]          # ServiceConfig
    client = sam.client()              # a protocol.client.Client for its replicas

One file serves both sides: the workstation reads `endpoints` to connect, `make up` on the
host that runs a service reads `bind` (default: the endpoints themselves). A remote GPU is
one edit: endpoints -> tcp://gpu-host:PORT, bind -> tcp://0.0.0.0:PORT, plus CURVE keys.
Keys and types are checked by protocol/schema.py, the one validator of the mesh: unknown
keys and bad values are errors that name the key, the value and the fix (`services.sam.workers`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import security
from .errors import BadRequest
from .schema import parse
from .server import DEFAULT_MAX_MSG_BYTES

KNOWN_SERVICES = ("reader", "sam", "vlm", "exporter", "studio")
DEFAULT_SERVICES_CONFIG = "configs/services.yaml"
SERVICES_CONFIG_ENV = "SERVICES_CONFIG"


class ConfigError(ValueError):
    """A config file that does not validate; the message names the key and the fix."""


@dataclass(frozen=True)
class CurveConfig:
    public_key: str  # the server's NAME.key (clients need this one)
    secret_key: str | None = None  # the server's NAME.key_secret (only on the serving host)
    client_secret_key: str | None = None  # the client's key pair; None = ephemeral
    authorized_clients: str | None = None  # folder of client public keys; None = any key holder


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    endpoints: tuple[str, ...]  # where clients connect; several = replicas
    backend: str  # which backend the service loads
    options: dict = field(default_factory=dict)  # backend options, checked by the service
    bind: tuple[str, ...] = ()  # where the service binds; empty = the endpoints
    workers: int = 1  # compute threads per process
    queue_size: int = 64  # requests waiting beyond that are answered `overloaded`
    timeout_s: float = 60.0  # per-call client timeout
    retries: int = 3  # retries of idempotent calls on a fresh socket / another replica
    max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES  # zmq.MAXMSGSIZE on both ends
    insecure: bool = False  # allow a non-loopback bind without CURVE
    curve: CurveConfig | None = None
    env: str | None = None  # virtual environment name under .venvs/ (default: NAME-BACKEND)
    given: frozenset[str] = field(default=frozenset(), repr=False)  # keys the file set

    @property
    def binds(self) -> tuple[str, ...]:
        return self.bind or self.endpoints

    @property
    def local(self) -> bool:
        """True when every bind address is on this machine's loopback."""
        return all(security.is_loopback(b) for b in self.binds)

    @property
    def env_name(self) -> str:
        return self.env or f"{self.name}-{self.backend}"

    def client(self, **overrides: Any):
        """A Client for the replicas, with the service's contract (services/NAME/api.py)."""
        from .client import Client
        from .contract import contract_for

        kw: dict[str, Any] = dict(
            timeout=self.timeout_s, retries=self.retries, max_msg_bytes=self.max_msg_bytes,
            contract=contract_for(self.name),
        )  # fmt: skip
        if self.curve is not None:
            kw.update(
                curve_server_key=self.curve.public_key,
                curve_client_secret=self.curve.client_secret_key,
            )
        endpoints = list(overrides.pop("endpoints", self.endpoints))
        kw.update(overrides)
        return Client(endpoints, name=self.name, **kw)


@dataclass(frozen=True)
class ServicesConfig:
    path: str
    services: dict[str, ServiceConfig]
    run_dir: str = ".run"  # logs and pid files of `make up`


@dataclass(frozen=True)
class ServiceFile:
    """One service's entry in services.yaml as written; keys and types are checked by
    protocol.schema (the one validator), ranges and addresses by parse_service."""

    endpoints: list[str] | str  # one address or a list (replicas)
    backend: str
    options: dict | None = None  # null = {}
    bind: list[str] | str | None = None
    workers: int = ServiceConfig.workers
    queue_size: int = ServiceConfig.queue_size
    timeout_s: float = ServiceConfig.timeout_s
    retries: int = ServiceConfig.retries
    max_msg_bytes: int = ServiceConfig.max_msg_bytes
    insecure: bool = ServiceConfig.insecure
    curve: CurveConfig | None = None
    env: str | None = None


@dataclass(frozen=True)
class ServicesFile:
    """The top level of services.yaml (services are parsed one by one: ServiceFile)."""

    services: dict[str, Any]
    version: int = 1
    run_dir: str = ".run"  # logs and pid files of `make up`


def _err(path: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def _parse(cls: type, raw: Any, where: str) -> Any:
    """protocol.schema.parse with its BadRequest turned into a ConfigError."""
    try:
        return parse(cls, raw, where=where)
    except BadRequest as e:
        raise ConfigError(str(e)) from None


def _addresses(where: str, v: list[str] | str) -> tuple[str, ...]:
    v = [v] if isinstance(v, str) else v
    for x in v:
        try:
            security.is_loopback(x)
        except ValueError as e:
            raise _err(where, str(e)) from None
        port = x.rsplit(":", 1)[-1] if x.startswith("tcp://") else None
        if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise _err(where, f"{x!r}: the port must be a number from 1 to 65535, got {port!r}; "
                              f"pick a free port, e.g. tcp://127.0.0.1:5552")  # fmt: skip
    return tuple(v)


_LIMITS = (("workers", 1, "an int >= 1"), ("queue_size", 1, "an int >= 1"),
           ("retries", 0, "an int >= 0"), ("max_msg_bytes", 4096, "an int >= 4096"))  # fmt: skip


def parse_service(name: str, raw: Any, base: Path) -> ServiceConfig:
    where = f"services.{name}"
    if not isinstance(raw, dict):
        raise _err(where, "expected a map with endpoints, backend, options ...")
    if "endpoints" not in raw or "backend" not in raw:
        _parse(ServiceFile, {"endpoints": [], "backend": "", **raw}, where)  # typos first
        raise _err(where, "needs `endpoints` (list of tcp://HOST:PORT) and `backend`")
    f = _parse(ServiceFile, raw, where)
    endpoints = _addresses(f"{where}.endpoints", f.endpoints)
    if not endpoints:
        raise _err(f"{where}.endpoints", "needs at least one endpoint")
    bind = () if f.bind is None else _addresses(f"{where}.bind", f.bind)
    if f.bind is not None and len(bind) != len(endpoints):
        raise _err(f"{where}.bind", f"has {len(bind)} addresses for {len(endpoints)} endpoints")
    for key, lo, what in _LIMITS:
        if getattr(f, key) < lo:
            raise _err(f"{where}.{key}", f"expected {what}, got {getattr(f, key)!r}")
    if not f.timeout_s > 0:
        raise _err(f"{where}.timeout_s", f"expected seconds > 0, got {f.timeout_s!r}")
    curve = None
    if f.curve is not None:
        paths = {k: str(base / os.path.expanduser(v))
                 for k, v in dataclasses.asdict(f.curve).items() if v is not None}  # fmt: skip
        curve = CurveConfig(**paths)
    return ServiceConfig(
        name=name, endpoints=endpoints, backend=f.backend, options=dict(f.options or {}),
        bind=bind, workers=f.workers, queue_size=f.queue_size, timeout_s=f.timeout_s,
        retries=f.retries, max_msg_bytes=f.max_msg_bytes, insecure=f.insecure, curve=curve,
        env=f.env, given=frozenset(raw),
    )  # fmt: skip


def read_yaml(path: str | os.PathLike, what: str, example: str, error: type[Exception]) -> Any:
    """Parse a YAML config file; a missing file or bad YAML raises `error` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what}: {p} does not exist (see {example} for an example)")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML: {e}") from None


def services_config_path(flag: str | os.PathLike | None = None) -> tuple[str, str]:
    """The services config a command uses, and why: the command's flag (`--services` /
    `--config`), else $SERVICES_CONFIG, else configs/services.yaml. Every command (make up,
    make demo, orchestrator run/status) resolves it here and prints which file it used.

    Returns (path, origin) with origin "flag", "SERVICES_CONFIG" or "default"."""
    if flag is not None and str(flag) != "":
        return str(flag), "flag"
    env = os.environ.get(SERVICES_CONFIG_ENV, "").strip()
    if env:
        return env, SERVICES_CONFIG_ENV
    return DEFAULT_SERVICES_CONFIG, "default"


def describe_services_source(path: str, origin: str) -> str:
    """One line for the user: `services config: X (from $SERVICES_CONFIG)`."""
    why = {"flag": "given on the command line", SERVICES_CONFIG_ENV: f"from ${SERVICES_CONFIG_ENV}",
           "default": f"the default; set ${SERVICES_CONFIG_ENV} or pass --services to change it"}  # fmt: skip
    return f"services config: {path} ({why.get(origin, origin)})"


def load_services(
    path: str | os.PathLike, *, base: str | os.PathLike | None = None
) -> ServicesConfig:
    """Read and validate a services config. Relative key paths resolve against `base` (cwd)."""
    raw = read_yaml(path, "services config", "configs/services.yaml", ConfigError)
    return parse_services(raw, path=str(path), base=Path(base) if base else Path.cwd())


def parse_services(raw: Any, *, path: str = "<config>", base: Path | None = None) -> ServicesConfig:
    base = base or Path.cwd()
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a map with `services:`")
    top = _parse(ServicesFile, {"services": {}, **raw}, "")
    if top.version != 1:
        raise _err("version", f"this release reads version 1, got {top.version!r}")
    if not isinstance(raw.get("services"), dict) or not top.services:
        raise _err("services", "expected a map of service name -> settings")
    out = {}
    for name, s in top.services.items():
        if name not in KNOWN_SERVICES:
            raise _err(
                f"services.{name}", f"unknown service; valid services are {list(KNOWN_SERVICES)}"
            )
        out[name] = parse_service(name, s, base)
    return ServicesConfig(path=path, services=out, run_dir=top.run_dir)
