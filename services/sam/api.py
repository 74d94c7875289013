"""The sam service's contract: request and reply structs of every op, and the op table.

Usage:
    from services.sam.api import CONTRACT as SAM
    c = Client("tcp://127.0.0.1:5552", contract=SAM)
    sid = c.call("start_session", SAM.request("start_session", height=480, width=640,
                                              n_frames=100))["session"]

Dependency-light (numpy + protocol only): the orchestrator, the studio, benchmarks and tests
import it without the service's OpenCV or torch. Masks travel bit-packed (protocol.masks):
`masks` uint8 (..., H, ceil(W/8)) plus `width`.
"""

from __future__ import annotations

import numpy as np

from protocol.contract import Contract, Op
from protocol.schema import message
from protocol.vocab import Direction


@message
class StartSessionReq:
    height: int
    width: int
    n_frames: int
    session: str | None = None  # a name chosen by the caller (so a lost reply can be closed)


@message
class StartSessionReply:
    session: str


@message
class PutFramesReq:
    session: str
    start: int
    frames: np.ndarray  # (n, H, W, 3) uint8 RGB


@message
class PutFramesReply:
    received: int


@message
class AddPromptReq:
    session: str
    frame: int
    obj_id: int
    points: list[list[float]] | None = None  # [[x, y], ...]
    labels: list[int] | None = None  # 1 foreground, 0 background
    rel: bool = False  # points/box in [0, 1] instead of pixels
    box: list[float] | None = None  # [x0, y0, x1, y1]
    mask: np.ndarray | None = None  # (H, W) bool or uint8
    text: str | None = None


@message
class AddPromptReply:
    frame: int
    obj_ids: list[int]
    masks: np.ndarray  # (n_obj, H, ceil(W/8)) uint8 packed
    width: int


@message
class PropagateReq:
    session: str
    direction: Direction = "both"
    start: int | None = None
    max_frames: int | None = None
    # recompute, per object, only the frames whose nearest keyframe (or its prompt) changed
    # since that object's last propagation, up to the neighbouring keyframes, both ways
    bounded: bool = False


@message
class PropagateReply:
    frames: int  # frames the call covered (bounded: the frames of its windows)
    obj_ids: list[int]
    recomputed: int = 0  # distinct frames the backend segmented (a result stored)
    spans: list[list[int]] | None = None  # [[obj_id, start, stop], ...] half-open, per object


@message
class MasksReq:
    session: str
    start: int = 0
    stop: int | None = None
    obj_ids: list[int] | None = None


@message
class MasksReply:
    obj_ids: list[int]
    start: int
    stop: int
    masks: np.ndarray  # (n_obj, stop - start, H, ceil(W/8)) uint8 packed
    width: int
    computed: np.ndarray | None = None  # (n_obj, stop - start) bool: frames holding a result


@message
class ProgressReply:
    propagating: bool
    done: int  # frame steps finished (a frame both passes compute counts twice)
    total: int
    direction: str | None = None


@message
class DriftReq:
    session: str
    obj_ids: list[int] | None = None  # None: every object


@message
class DriftReply:
    obj_ids: list[int]
    scores: np.ndarray  # (n_obj, T) float32 in [0, 1], higher = more suspicious


@message
class CloseSessionsReq:
    prefix: str  # at least 8 characters (e.g. the orchestrator's run_key)


@message
class CloseSessionsReply:
    closed: list[str]  # ids of the sessions closed


@message
class ObjectReq:
    session: str
    obj_id: int


@message
class ObjectsReply:
    obj_ids: list[int]


@message
class SessionReq:
    session: str


@message
class Empty:
    pass


@message
class CloseSessionReply:
    closed: bool  # False: it was not open


@message
class SegmentImageReq:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: list[list[float]] | None = None  # [[x0, y0, x1, y1], ...]
    points: list[list[float]] | None = None
    labels: list[int] | None = None


@message
class SegmentImageReply:
    masks: np.ndarray  # (n, H, ceil(W/8)) uint8 packed
    width: int


# add_prompt clicks accumulate: never re-sent. propagate recomputes the same masks from the
# same prompts: safe to re-send; it is long-running (reports frames done), so the client
# re-sends it only when the replica lost it (silent, or restarted), never while it runs.
CONTRACT = Contract(
    "sam",
    [
        Op("start_session", StartSessionReq, StartSessionReply, idempotent=False),
        Op("put_frames", PutFramesReq, PutFramesReply, idempotent=True),
        Op("add_prompt", AddPromptReq, AddPromptReply, idempotent=False),
        Op("propagate", PropagateReq, PropagateReply, idempotent=True, long_running=True),
        Op("masks", MasksReq, MasksReply, idempotent=True),  # never waits for a propagation
        Op("progress", SessionReq, ProgressReply, idempotent=True),
        Op("drift", DriftReq, DriftReply, idempotent=True),
        Op("remove_object", ObjectReq, ObjectsReply, idempotent=False),
        Op("reset_session", SessionReq, Empty, idempotent=True),
        Op("close_session", SessionReq, CloseSessionReply, idempotent=True),
        Op("close_sessions", CloseSessionsReq, CloseSessionsReply, idempotent=True),
        Op("segment_image", SegmentImageReq, SegmentImageReply, idempotent=True),
    ],
)
SAM = CONTRACT
