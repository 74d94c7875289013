"""The sam service: promptable video segmentation sessions over the mesh protocol.

Usage:
    python -m services.sam --bind tcp://127.0.0.1:5552 --backend classical \
        --option max_sessions=4 --option idle_timeout_s=300
    # in code: svc = build_service("classical", {"flow_scale": 0.5}); svc.serve(...)

Ops (README.md has fields, shapes and dtypes): start_session, put_frames, add_prompt,
propagate, masks, progress, drift, remove_object, reset_session, close_session,
close_sessions, segment_image.
Masks always travel bit-packed (protocol.masks): `masks` uint8 (..., H, ceil(W/8)) + `width`.
Options: the service keys of ServiceOptions below (protocol.schema checks them); every other key goes to the backend,
which rejects keys it does not know.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from protocol.errors import BadRequest
from protocol.masks import pack
from protocol.options import parse_options
from protocol.schema import keys
from protocol.server import Service
from services.sam import __version__
from services.sam.api import (  # noqa: F401 (request structs re-exported for older imports)
    CONTRACT,
    AddPromptReq,
    CloseSessionsReq,
    DriftReq,
    MasksReq,
    ObjectReq,
    PropagateReq,
    PutFramesReq,
    SegmentImageReq,
    SessionReq,
    StartSessionReq,
)
from services.sam.backends import BACKENDS, DIRECTIONS, create_backend
from services.sam.sessions import SessionManager
from services.sam.validation import check_box, check_points

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceOptions:
    """Options of the service itself (parsed by protocol.schema); the rest go to the backend."""

    max_sessions: int = 8  # open sessions before start_session answers `overloaded`
    idle_timeout_s: float = 600.0  # a session unused this long is closed and its memory freed
    max_session_bytes: int = 16 << 30  # largest frame store one session may allocate
    max_chunk_bytes: int = 32 << 20  # cap on one `masks` reply's packed array
    workers: int = 4  # request threads: masks, progress, drift answer while a propagation runs
    compute_slots: int = 1  # prompts/propagations/segment_image at once (1 suits one GPU)
    queue_size: int = 64  # requests waiting before `overloaded`


SERVICE_OPTIONS = keys(ServiceOptions)


def _split_options(options: dict) -> tuple[ServiceOptions, dict]:
    svc = {k: options[k] for k in options if k in SERVICE_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in SERVICE_OPTIONS}
    opts = parse_options(ServiceOptions, svc, where="sam options")
    for k in SERVICE_OPTIONS:
        if getattr(opts, k) <= 0:
            raise ValueError(f"sam options.{k}: must be > 0, got {getattr(opts, k)}")
    return opts, rest


def build_service(backend: str, options: dict) -> Service:
    """Create the backend (weights load here, in setup()) and register the ops."""
    opts, backend_opts = _split_options(dict(options or {}))
    try:
        model = create_backend(backend, backend_opts)
    except ValueError as e:
        raise ValueError(f"{e}; service options: {sorted(SERVICE_OPTIONS)}") from None
    model.setup()
    mgr = SessionManager(
        model,
        max_sessions=opts.max_sessions,
        idle_timeout_s=opts.idle_timeout_s,
        max_session_bytes=opts.max_session_bytes,
    )
    max_chunk = opts.max_chunk_bytes
    compute = threading.BoundedSemaphore(opts.compute_slots)  # model calls at once
    svc = Service(
        "sam",
        backend=backend,
        version=__version__,
        capabilities={
            "prompt_kinds": sorted(model.prompt_kinds),
            "backend_capabilities": sorted(model.capabilities),
            "directions": list(DIRECTIONS),
            "backends": sorted(BACKENDS),
            "max_sessions": mgr.max_sessions,
        },
        workers=opts.workers,
        queue_size=opts.queue_size,
        contract=CONTRACT,
    )
    log.info("sam options: %s; backend %s options: %s", opts, backend, backend_opts)

    @svc.op("start_session")
    def start_session(req: StartSessionReq) -> dict:
        return {"session": mgr.start(req.height, req.width, req.n_frames, req.session)}

    @svc.op("put_frames")
    def put_frames(req: PutFramesReq) -> dict:
        return {"received": mgr.put_frames(req.session, req.start, req.frames)}

    @svc.op("add_prompt")  # clicks accumulate
    def add_prompt(req: AddPromptReq) -> dict:
        with compute:
            frame, ids, stack = mgr.add_prompt(
                req.session, req.frame, req.obj_id, req.points, req.labels, req.rel, req.box,
                req.mask, req.text,
            )  # fmt: skip
        w = stack.shape[-1]
        return {"frame": frame, "obj_ids": ids, "masks": pack(stack), "width": w}

    @svc.op("propagate")  # long-running: progress(done, total) after each frame
    def propagate(req: PropagateReq, progress) -> dict:
        with compute:
            r = mgr.propagate(
                req.session, req.direction, req.start, req.max_frames, req.bounded,
                on_progress=progress,
            )  # fmt: skip
        return {
            "frames": r.frames,
            "obj_ids": r.obj_ids,
            "recomputed": r.recomputed,
            "spans": r.spans,
        }

    @svc.op("masks")
    def masks(req: MasksReq) -> dict:
        ids, start, stop, packed, computed = mgr.read_masks(
            req.session, req.start, req.stop, req.obj_ids, max_bytes=max_chunk
        )
        width = mgr.get(req.session).width
        return {
            "obj_ids": ids,
            "start": start,
            "stop": stop,
            "masks": packed,
            "width": width,
            "computed": computed,
        }

    @svc.op("progress")  # answered without waiting for the propagation
    def progress(req: SessionReq) -> dict:
        return mgr.progress(req.session)

    @svc.op("drift")
    def drift(req: DriftReq) -> dict:
        ids, scores = mgr.drift(req.session, req.obj_ids)
        return {"obj_ids": ids, "scores": scores}

    @svc.op("close_sessions")
    def close_sessions(req: CloseSessionsReq) -> dict:
        return {"closed": mgr.close_sessions(req.prefix)}

    @svc.op("remove_object")
    def remove_object(req: ObjectReq) -> dict:
        return {"obj_ids": mgr.remove_object(req.session, req.obj_id)}

    @svc.op("reset_session")
    def reset_session(req: SessionReq) -> dict:
        mgr.reset(req.session)
        return {}

    @svc.op("close_session")
    def close_session(req: SessionReq) -> dict:
        return {"closed": mgr.close(req.session)}

    @svc.op("segment_image")
    def segment_image(req: SegmentImageReq) -> dict:
        img = req.image
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise BadRequest(
                f"image: expected (H, W, 3) uint8 RGB, got {img.dtype}{list(img.shape)}"
            )
        h, w = img.shape[:2]
        kinds = (["box"] if req.boxes else []) + (["points"] if req.points is not None else [])
        if not kinds:
            raise BadRequest("segment_image: give boxes and/or points (+labels)")
        mgr.check_capability("segment_image", "segment_image", "use backend sam2 or classical")
        mgr.check_kinds(kinds)
        pts, lab = check_points(req.points, req.labels, False, h, w)
        boxes = None
        if req.boxes:
            boxes = np.stack([check_box(b, False, h, w) for b in req.boxes])  # (n, 4)
        try:
            with compute:
                out = model.segment_image(img, boxes, pts, lab)  # (n, H, W) bool
        except ValueError as e:
            raise BadRequest(str(e)) from None
        return {"masks": pack(out), "width": w}

    def info() -> dict:
        sessions = mgr.describe()
        return {
            "device": model.device,
            "prompt_kinds": sorted(model.prompt_kinds),
            "backend_info": model.info(),
            "sessions": sessions,
            "sessions_bytes": sum(s["bytes"] for s in sessions),
            "max_sessions": mgr.max_sessions,
            "idle_timeout_s": mgr.idle_timeout_s,
        }

    svc.add_info(info)
    stop = threading.Event()
    interval = max(1.0, min(30.0, mgr.idle_timeout_s / 4))

    def reaper() -> None:  # frees idle sessions even when no request arrives
        while not stop.wait(interval):
            try:
                mgr.expire()
            except Exception:
                log.exception("session expiry failed")

    threading.Thread(target=reaper, name="sam-reaper", daemon=True).start()

    def shutdown() -> None:
        stop.set()
        mgr.close_all()

    svc.on_close(shutdown)
    return svc
