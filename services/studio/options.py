"""Studio options (configs/services.yaml `services.studio.options`), validated once.

Usage:
    opts = StudioOptions.from_options({"http": "127.0.0.1:8555", "buffer": "data/demo/demo.zarr",
                                       "pipeline": "configs/pipelines/rgbm_demo.yaml",
                                       "output": "out/studio"})
Keys and types are checked by protocol/schema.py (the one validator: unknown keys refused
naming the valid ones, one rule for booleans and numbers); ranges here. Relative paths resolve against the working
directory the service starts in (the repository root under `make up`).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from protocol.options import parse_options
from protocol.schema import keys


@dataclass(frozen=True)
class StudioOptions:
    buffer: str  # the replay buffer (.zarr folder or .zarr.zip) the reader opens
    pipeline: str  # pipeline config (configs/pipelines/*.yaml): camera key, roles, outputs
    output: str  # export folder (the same one `python -m orchestrator run --output` takes)
    http: str = "127.0.0.1:8555"  # HOST:PORT of the page (port 0 = any free port)
    state: str | None = None  # folder of studio.sqlite + prompts.yaml; None = <output>.studio
    services_config: str | None = None  # where reader/sam/exporter live; None = $SERVICES_CONFIG
    hold_s: float = 900.0  # an episode hold expires this long after the holder's last action
    open_registration: bool | None = None  # new names may register; None = only on loopback
    max_body_bytes: int = 1 << 20  # largest accepted request body
    frame_cache_mb: int = 256  # JPEG frames kept for scrubbing
    jpeg_quality: int = 90  # frames sent to the page
    sam_timeout_s: float = 600.0  # one propagate call may take this long

    @classmethod
    def from_options(cls, options: dict) -> StudioOptions:
        missing = [n for n in ("buffer", "pipeline", "output") if options.get(n) in (None, "")]
        if missing and not set(options) - set(keys(cls)):  # a typo is named before "missing"
            raise ValueError(f"option {missing[0]!r}: required (e.g. --option {missing[0]}=PATH)")
        o = parse_options(cls, options, where="studio options")  # keys, types: protocol.schema
        o.http_addr()  # validate now
        for k in ("hold_s", "sam_timeout_s"):
            if getattr(o, k) <= 0:
                raise ValueError(f"option {k!r}: must be a number of seconds > 0")
        for k in ("max_body_bytes", "frame_cache_mb", "jpeg_quality"):
            if getattr(o, k) < 1:
                raise ValueError(f"option {k!r}: must be an integer >= 1, got {getattr(o, k)!r}")
        return o

    def http_addr(self) -> tuple[str, int]:
        host, sep, port = str(self.http).rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(
                f"option 'http': expected HOST:PORT, e.g. 127.0.0.1:8555, got {self.http!r}"
            )
        return host.strip("[]"), int(port)

    def loopback(self) -> bool:
        host, _ = self.http_addr()
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def state_dir(self) -> Path:
        if self.state:
            return Path(self.state).resolve()
        out = Path(self.output).resolve()
        return out.parent / f"{out.name}.studio"

    @property
    def config_path(self) -> str:
        return self.services_config or os.environ.get("SERVICES_CONFIG") or "configs/services.yaml"
