"""The exporter service: ops over the mesh protocol in front of the export library.

Ops (all idempotent; see README.md for fields, shapes and dtypes):
    open_export {output, source, camera_key, outputs, options} -> {export, done, n_episodes}
    put_masks {export, episode, start, obj_ids, masks (n_obj, n, H, W8) uint8, width} -> {received}
    finish_episode {export, episode, roles, meta} -> {episode, outputs}
    discard_episode {export, episode} -> {discarded}
    status {output} -> {done, n_episodes, exists}
    close_export {export} -> {}

Usage:
    python -m services.exporter --backend local --option max_held_mb=2048
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol import errors as perr
from protocol.options import parse_options
from protocol.schema import keys
from protocol.server import Service
from services.exporter import __version__
from services.exporter.api import (
    CONTRACT,
    EpisodeReq,
    ExportReq,
    FinishEpisodeReq,
    OpenExportReq,
    PutMasksReq,
    ReopenEpisodeReq,
    StatusReq,
)
from services.exporter.errors import ExportError
from services.exporter.export import read_status
from services.exporter.options import OUTPUTS, ROLES, ExportOptions
from services.exporter.registry import Registry

log = logging.getLogger(__name__)

BACKENDS = ("local",)  # writes to the local filesystem (run the exporter where the data lives)


@dataclass(frozen=True)
class ServiceOptions:
    """The exporter service's options (parsed by protocol.schema); export options travel
    per export in open_export (services/exporter/options.py)."""

    max_held_mb: int = 4096  # packed masks held across episodes before put_masks: overloaded
    workers: int = 2  # handler threads: put_masks of the next episode runs beside a finish


SERVICE_OPTIONS = keys(ServiceOptions)
_ERRORS = {"bad_request": perr.BadRequest, "not_found": perr.NotFound,
           "overloaded": perr.Overloaded, "internal": perr.Internal}  # fmt: skip


def _wire_errors(fn: Callable[..., dict]) -> Callable[..., dict]:
    """Library ExportError -> the protocol error with the same code."""

    @functools.wraps(fn)
    def wrapper(req: Any) -> dict:
        try:
            return fn(req)
        except ExportError as exc:
            raise _ERRORS[exc.code](exc.message) from exc

    return wrapper


def build_service(backend: str, options: dict) -> Service:
    """Build the exporter service; unknown backends and options are refused by name."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: {backend!r} is unknown; valid backends: {', '.join(BACKENDS)}")
    opts = parse_options(ServiceOptions, options, where="exporter options")
    for key in SERVICE_OPTIONS:
        if getattr(opts, key) < 1:
            raise ValueError(f"exporter options.{key}: must be >= 1, got {getattr(opts, key)}")
    registry = Registry(max_held_bytes=opts.max_held_mb << 20)
    svc = Service(
        "exporter", backend=backend, version=__version__, workers=opts.workers,
        capabilities={"outputs": list(OUTPUTS), "roles": list(ROLES),
                      "export_options": list(ExportOptions.__dataclass_fields__)},
        contract=CONTRACT,
    )  # fmt: skip

    @svc.op("open_export")
    @_wire_errors
    def open_export(req: OpenExportReq) -> dict:
        return registry.open_export(req.output, req.source, req.camera_key, req.outputs,
                                    req.options or {})  # fmt: skip

    @svc.op("put_masks")
    @_wire_errors
    def put_masks(req: PutMasksReq) -> dict:
        exp = registry.get(req.export)
        received = exp.put_masks(req.episode, req.start, req.obj_ids, req.masks, req.width)
        return {"received": received}

    @svc.op("finish_episode")
    @_wire_errors
    def finish_episode(req: FinishEpisodeReq) -> dict:
        return registry.get(req.export).finish_episode(req.episode, req.roles, req.meta or {})

    @svc.op("discard_episode")
    @_wire_errors
    def discard_episode(req: EpisodeReq) -> dict:
        return {"discarded": registry.get(req.export).discard(req.episode)}

    @svc.op("reopen_episode")
    @_wire_errors
    def reopen_episode(req: ReopenEpisodeReq) -> dict:
        return {"reopened": registry.get(req.export).reopen(req.episode, req.force)}

    @svc.op("status")
    @_wire_errors
    def status(req: StatusReq) -> dict:
        return read_status(req.output)

    @svc.op("close_export")
    @_wire_errors
    def close_export(req: ExportReq) -> dict:
        registry.close_export(req.export)
        return {}

    svc.add_info(registry.info)
    svc.on_close(registry.close_all)
    log.info("exporter: backend=%s options=%s", backend, opts)
    return svc
