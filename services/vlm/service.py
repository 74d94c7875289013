"""The vlm service: ops `bbox`, `point` and `plan` over the mesh protocol, on a chosen backend.

Usage:
    python -m services.vlm --backend prompts --option prompts_file=configs/prompts/demo.yaml
    python -m services.vlm --backend openai --option base_url=http://gpu-host:8000/v1

    c = Client("tcp://127.0.0.1:5553")
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

import numpy as np

from protocol.errors import ServiceError
from protocol.schema import describe, message
from protocol.server import Service

from . import __version__
from .backends import BACKENDS, DEFAULT_BACKEND, VlmBackend, make_backend
from .errors import VlmError
from .prompts import TASKS

log = logging.getLogger(__name__)

QUEUE_SIZE = 64  # requests waiting beyond the workers before `overloaded`


@message
class BboxReq:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    description: str  # the object, e.g. "the green cup on the right"
    episode: int | None = None  # prompts backend: which episode's entry
    frame: int | None = None  # prompts backend: which frame the image is


@message
class PointReq:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    description: str  # the object, e.g. "the green cup on the right"
    episode: int | None = None  # prompts backend: which episode's entry
    frame: int | None = None  # prompts backend: which frame the image is


@message
class PlanReq:
    task: str  # one of prompts.TASKS
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB head-camera image
    instruction: str | None = None  # the user prompt or the current grasp instruction
    episode: int | None = None  # prompts backend: which episode's plan entry


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
    )

    @svc.op("bbox", body=BboxReq, idempotent=True)
    def bbox(req: BboxReq) -> dict:
        # req.image is a read-only view of the received frame; backends only read it
        return _serve(be.bbox, req.image, req.description, req.episode, req.frame)

    @svc.op("point", body=PointReq, idempotent=True)
    def point(req: PointReq) -> dict:
        return _serve(be.point, req.image, req.description, req.episode, req.frame)

    @svc.op("plan", body=PlanReq, idempotent=True)
    def plan(req: PlanReq) -> dict:
        return _serve(be.plan, req.task, req.image, req.instruction, req.episode)

    svc.add_info(lambda: {"vlm": be.info()})
    svc.on_close(be.close)
    return svc
