"""configs/services.yaml: where each service lives and how it runs, as frozen dataclasses.

Usage:
    cfg = load_services("configs/services.yaml")
    sam = cfg.services["sam"]          # ServiceConfig
    client = sam.client()              # a protocol.client.Client for its replicas

One file serves both sides: the workstation reads `endpoints` to connect, `make up` on the
host that runs a service reads `bind` (default: the endpoints themselves). A remote GPU is
one edit: endpoints -> tcp://gpu-host:PORT, bind -> tcp://0.0.0.0:PORT, plus CURVE keys.
Unknown keys and bad values are errors that name the key (`services.sam.workers`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import security
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


_SERVICE_KEYS = {f for f in ServiceConfig.__dataclass_fields__ if f not in ("name", "given")}
_CURVE_KEYS = set(CurveConfig.__dataclass_fields__)


def _err(path: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def _typed(where: str, v: Any, tp: type | tuple, what: str) -> Any:
    if isinstance(v, bool) and tp in (int, float, (int, float)):
        raise _err(where, f"expected {what}, got {v!r}")
    if not isinstance(v, tp):
        raise _err(where, f"expected {what}, got {type(v).__name__} {v!r}")
    return v


def _str_list(where: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _err(where, "expected a list of tcp://HOST:PORT strings")
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


def parse_service(name: str, raw: Any, base: Path) -> ServiceConfig:
    where = f"services.{name}"
    if not isinstance(raw, dict):
        raise _err(where, "expected a map with endpoints, backend, options ...")
    unknown = sorted(set(raw) - _SERVICE_KEYS)
    if unknown:
        raise _err(f"{where}.{unknown[0]}", f"unknown key; valid keys are {sorted(_SERVICE_KEYS)}")
    if "endpoints" not in raw or "backend" not in raw:
        raise _err(where, "needs `endpoints` (list of tcp://HOST:PORT) and `backend`")
    kw: dict[str, Any] = {"name": name, "given": frozenset(raw)}
    kw["endpoints"] = _str_list(f"{where}.endpoints", raw["endpoints"])
    if not kw["endpoints"]:
        raise _err(f"{where}.endpoints", "needs at least one endpoint")
    kw["backend"] = _typed(f"{where}.backend", raw["backend"], str, "a backend name")
    if "options" in raw:
        kw["options"] = dict(_typed(f"{where}.options", raw["options"] or {}, dict, "a map"))
    if raw.get("bind") is not None:
        kw["bind"] = _str_list(f"{where}.bind", raw["bind"])
        if len(kw["bind"]) != len(kw["endpoints"]):
            raise _err(
                f"{where}.bind",
                f"has {len(kw['bind'])} addresses for {len(kw['endpoints'])} endpoints",
            )
    for key, tp, what, lo in (("workers", int, "an int >= 1", 1), ("queue_size", int, "an int >= 1", 1),
                              ("retries", int, "an int >= 0", 0), ("max_msg_bytes", int, "an int >= 4096", 4096),
                              ("timeout_s", (int, float), "seconds > 0", 1e-9)):  # fmt: skip
        if key in raw:
            v = _typed(f"{where}.{key}", raw[key], tp, what)
            if v < lo:
                raise _err(f"{where}.{key}", f"expected {what}, got {v!r}")
            kw[key] = float(v) if key == "timeout_s" else v
    if "insecure" in raw:
        kw["insecure"] = _typed(f"{where}.insecure", raw["insecure"], bool, "true or false")
    if raw.get("env") is not None:
        kw["env"] = _typed(f"{where}.env", raw["env"], str, "a venv name")
    if raw.get("curve") is not None:
        c = _typed(f"{where}.curve", raw["curve"], dict, "a map of key file paths")
        unknown = sorted(set(c) - _CURVE_KEYS)
        if unknown:
            raise _err(
                f"{where}.curve.{unknown[0]}", f"unknown key; valid keys are {sorted(_CURVE_KEYS)}"
            )
        if "public_key" not in c:
            raise _err(f"{where}.curve.public_key", "required: the server's NAME.key file")
        paths = {k: str(base / os.path.expanduser(_typed(f"{where}.curve.{k}", v, str, "a file path")))
                 for k, v in c.items() if v is not None}  # fmt: skip
        kw["curve"] = CurveConfig(**paths)
    return ServiceConfig(**kw)


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
    unknown = sorted(set(raw) - {"version", "services", "run_dir"})
    if unknown:
        raise _err(
            unknown[0], "unknown top-level key; valid keys are ['run_dir', 'services', 'version']"
        )
    if raw.get("version", 1) != 1:
        raise _err("version", f"this release reads version 1, got {raw.get('version')!r}")
    svcs = raw.get("services")
    if not isinstance(svcs, dict) or not svcs:
        raise _err("services", "expected a map of service name -> settings")
    out = {}
    for name, s in svcs.items():
        if name not in KNOWN_SERVICES:
            raise _err(
                f"services.{name}", f"unknown service; valid services are {list(KNOWN_SERVICES)}"
            )
        out[name] = parse_service(name, s, base)
    run_dir = raw.get("run_dir", ".run")
    _typed("run_dir", run_dir, str, "a folder path")
    return ServicesConfig(path=path, services=out, run_dir=run_dir)
