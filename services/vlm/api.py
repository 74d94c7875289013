"""The vlm service's contract: request and reply structs of bbox, point and plan; the op table.

Usage:
    from services.vlm.api import CONTRACT as VLM
    c = Client("tcp://127.0.0.1:5553", contract=VLM)
    out = c.call("bbox", VLM.request("bbox", image=rgb, description="the green cup"))
    # -> {box: [x0, y0, x1, y1] (original pixels, float), label, description, raw, ...}

Dependency-light (numpy + protocol only). Every op only asks the model: safe to re-send.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.contract import Contract, Op
from protocol.schema import message


@message
class BboxReq:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    description: str  # the object, e.g. "the green cup on the right"
    episode: int | None = None  # prompts backend: which episode's entry
    frame: int | None = None  # prompts backend: which frame the image is


@message
class BboxReply:
    box: list[float]  # [x0, y0, x1, y1] in the original image's pixels
    label: str
    description: str
    raw: str  # the model's answer (or the prompts-file entry) as text
    model_box: list[float] | None = None  # chat backends: the box as the model gave it
    model_size: list[int] | None = None  # chat backends: [h, w] the model saw
    frame: int | None = None  # prompts backend: the frame the stored box belongs to


@message
class PointReq:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    description: str  # the object, e.g. "the green cup on the right"
    episode: int | None = None  # prompts backend: which episode's entry
    frame: int | None = None  # prompts backend: which frame the image is


@message
class PointReply:
    visible: bool  # False: the model says the object is not in the image
    point: list[float] | None  # [x, y] in the original image's pixels; None when not visible
    label: str
    description: str
    raw: str
    model_point: list[float] | None = None  # chat backends: the point as the model gave it
    model_size: list[int] | None = None  # chat backends: [h, w] the model saw
    frame: int | None = None  # prompts backend: the frame the stored box belongs to


@message
class PlanReq:
    task: str  # one of services/vlm/prompts.py TASKS
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB head-camera image
    instruction: str | None = None  # the user prompt or the current grasp instruction
    episode: int | None = None  # prompts backend: which episode's plan entry


@message
class PlanReply:
    task: str
    result: Any  # the task's parsed answer (bool, str, list, or {bbox_2d, label, description})
    raw: str


CONTRACT = Contract(
    "vlm",
    [
        Op("bbox", BboxReq, BboxReply, idempotent=True),
        Op("point", PointReq, PointReply, idempotent=True),
        Op("plan", PlanReq, PlanReply, idempotent=True),
    ],
)
VLM = CONTRACT
