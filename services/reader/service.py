"""The reader service: a thin mesh wrapper over services.reader.reader.ReplayReader.

Usage:
    python -m services.reader --backend zarr --bind tcp://127.0.0.1:5551 \
        --option max_chunk_bytes=8388608 --option cache_bytes=67108864 --option threads=2
    # in code: svc = build_service("zarr", {"threads": 2}); svc.serve("tcp://127.0.0.1:0")

Ops (README.md has every field, shape and dtype): open, frames, arrays, close.
Library errors map to reply codes (services/reader/errors.py): not_found (path, dataset,
key), bad_request (not a replay buffer, inconsistent buffer, out of range, too large),
unsupported (codec not installed). The service keeps serving after any of them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numcodecs

from protocol.errors import ServiceError
from protocol.options import parse_options
from protocol.schema import keys
from protocol.server import Service
from services.reader import __version__
from services.reader.api import CONTRACT, ArraysReq, CloseReq, FramesReq, OpenReq
from services.reader.codecs import REFUSED
from services.reader.errors import ReaderError
from services.reader.reader import ReaderConfig, ReplayReader

log = logging.getLogger(__name__)

BACKENDS = ("zarr",)


@dataclass(frozen=True)
class ServiceOptions:
    """Options of the service itself; every other option is a ReaderConfig one."""

    workers: int = 2  # handler threads; the reader is thread-safe (decode has its own pool)
    queue_size: int = 64  # requests waiting before `overloaded`


SERVICE_OPTIONS = keys(ServiceOptions)


def _replies(fn: Callable[[Any], dict]) -> Callable[[Any], dict]:
    """Turn library errors into error replies with the library's code."""

    @functools.wraps(fn)
    def wrapper(req: Any) -> dict:
        try:
            return fn(req)
        except ReaderError as e:
            log.info("%s: %s: %s", fn.__name__, e.code, e)
            raise ServiceError(str(e), code=e.code) from None

    return wrapper


def build_service(backend: str, options: dict) -> Service:
    """The reader service for ``backend`` ('zarr') with ``options`` (ReaderConfig + workers)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: unknown; the reader's backends are {BACKENDS}")
    service_opts = parse_options(
        ServiceOptions, {k: v for k, v in options.items() if k in SERVICE_OPTIONS},
        where="reader options",
    )  # fmt: skip
    for k in SERVICE_OPTIONS:
        if getattr(service_opts, k) < 1:
            raise ValueError(f"reader options.{k}: must be >= 1, got {getattr(service_opts, k)}")
    reader_opts = {k: v for k, v in options.items() if k not in SERVICE_OPTIONS}
    try:
        config = ReaderConfig.from_options(reader_opts)
    except (TypeError, ValueError) as e:
        valid = sorted([*SERVICE_OPTIONS, *ReaderConfig.__dataclass_fields__])
        raise ValueError(f"{e} (valid reader service options: {valid})") from None
    reader = ReplayReader(config)
    log.info("reader config: %s, service %s", config, service_opts)
    svc = Service(
        "reader",
        backend=backend,
        version=__version__,
        capabilities={
            "zarr_formats": [2, 3],
            "stores": ["directory", "zip"],
            "codecs": sorted(set(numcodecs.registry.codec_registry) - REFUSED),
            "max_chunk_bytes": config.max_chunk_bytes,
        },
        workers=service_opts.workers,
        queue_size=service_opts.queue_size,
        versions={"zarr_reader": __version__, "numcodecs": numcodecs.__version__},
        contract=CONTRACT,
    )

    @svc.op("open")
    @_replies
    def open_buffer(req: OpenReq) -> dict:
        return reader.open(req.path)

    @svc.op("frames")
    @_replies
    def frames(req: FramesReq) -> dict:
        batch = reader.frames(
            req.dataset, req.episode, req.key, req.start, req.stop, req.stride, req.max_bytes
        )
        return {
            "frames": batch.frames,  # (n, *frame_shape) travels zero-copy
            "start": batch.start,
            "stop": batch.stop,
            "next": batch.next,
            "episode_length": batch.episode_length,
            "batch": batch.batch,
        }

    @svc.op("arrays")
    @_replies
    def arrays(req: ArraysReq) -> dict:
        return {"arrays": reader.arrays(req.dataset, req.episode, req.keys)}

    @svc.op("close")
    @_replies
    def close(req: CloseReq) -> dict:
        return {"closed": reader.close_dataset(req.dataset)}

    svc.add_info(reader.stats)
    svc.on_close(reader.close)
    return svc
