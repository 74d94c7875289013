"""The vlm service: ops `bbox`, `point` and `plan` over the mesh protocol, on a chosen backend.

Usage:
    python -m services.vlm --backend prompts --option prompts_file=configs/prompts/demo.yaml
    python -m services.vlm --backend openai --option base_url=http://gpu-host:8000/v1

    c = Client("tcp://127.0.0.1:5553", contract=VLM)     # from services.vlm.api
    c.call("bbox", {"image": rgb, "description": "the green cup"})   # rgb (H, W, 3) uint8
    # -> {box: [x0, y0, x1, y1] (original pixels, float), label, description, raw, ...}
    c.call("point", {"image": rgb, "description": "the green cup"})
    # -> {visible: bool, point: [x, y] (original pixels) | None, label, description, raw, ...}
    c.call("plan", {"task": "check_grasp_success", "image": rgb})
    # -> {task, result, raw}
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from protocol.errors import ServiceError
from protocol.schema import describe
from protocol.server import Service
from services.vlm.api import CONTRACT, BboxReq, PlanReq, PointReq

from . import __version__
from .backends import BACKENDS, DEFAULT_BACKEND, VlmBackend, make_backend
from .errors import VlmError
from .prompts import TASKS

log = logging.getLogger(__name__)

QUEUE_SIZE = 64  # requests waiting beyond the workers before `overloaded`


def _serve(fn: Callable[..., dict], *args: Any) -> dict:
    """Run a backend call; library errors become protocol errors with the same code."""
    try:
        return fn(*args)
    except VlmError as e:
        raise ServiceError(str(e), code=e.code) from None


def build_service(backend: str | None, options: dict | None) -> Service:
    """Make the backend (unknown options -> ValueError), set it up, register the ops."""
    name = backend or DEFAULT_BACKEND
    be: VlmBackend = make_backend(name, options or {})
    try:
        be.setup()
    except VlmError as e:
        if isinstance(e, ValueError):
            raise
        raise RuntimeError(f"vlm backend {name}: {e}") from None
    svc = Service(
        "vlm",
        backend=name,
        version=__version__,
        capabilities={
            "ops": ["bbox", "point", "plan"],
            "backends": list(BACKENDS),
            "tasks": {t: s.result for t, s in TASKS.items()},
            "bbox": describe(BboxReq),
            "point": describe(PointReq),
            "plan": describe(PlanReq),
        },
        workers=be.concurrency,
        queue_size=QUEUE_SIZE,
        contract=CONTRACT,
    )

    @svc.op("bbox")
    def bbox(req: BboxReq) -> dict:
        # req.image is a read-only view of the received frame; backends only read it
        return _serve(be.bbox, req.image, req.description, req.episode, req.frame)

    @svc.op("point")
    def point(req: PointReq) -> dict:
        return _serve(be.point, req.image, req.description, req.episode, req.frame)

    @svc.op("plan")
    def plan(req: PlanReq) -> dict:
        return _serve(be.plan, req.task, req.image, req.instruction, req.episode)

    svc.add_info(lambda: {"vlm": be.info()})
    svc.on_close(be.close)
    return svc
