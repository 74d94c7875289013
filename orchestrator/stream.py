"""One episode's frames flowing from a reader thread to a SAM worker, chunk by chunk.

Usage (reader thread):
    stream = EpisodeStream(plan, attempt=1)
    ready.put(stream)                      # a worker may take it before it is read
    read_episode(stream, reader, vlm, ds, policy, stop)
Usage (SAM worker thread):
    for start, frames in stream.chunks(stop):   # frames (n, H, W, 3) uint8, as they arrive
        ...
    box = stream.boxes[op]                  # VLM boxes, known once chunks() is exhausted

The reader thread also asks the VLM for the boxes of the episode's `vlm` prompts as soon as
the prompt's frame has been read, so a slow VLM is hidden behind SAM work like the reading.
Memory: a stream holds the chunks a worker has not taken yet; the scheduler bounds how many
streams exist at once (prefetch + one per SAM worker), hence how many episodes of frames.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import numpy as np

from orchestrator.calls import EpisodeRefused, Interrupted, RetryPolicy, Stats, call
from orchestrator.plan import DatasetInfo, EpisodePlan, PromptOp
from protocol.client import Client
from services.reader.api import CONTRACT as READER
from services.vlm.api import CONTRACT as VLM

_END = object()
POLL_S = 0.2  # how often a waiting thread looks at the stop flag


class EpisodeStream:
    """Chunks of one episode attempt: (start, frames) tuples, then the end or an error."""

    def __init__(self, plan: EpisodePlan, attempt: int):
        self.plan = plan
        self.attempt = attempt
        self._q: queue.Queue = queue.Queue()  # bounded by the episode's size
        self.boxes: dict[PromptOp, list[float]] = {}  # vlm prompt -> box (pixels)
        self.vlm_answers: dict[PromptOp, dict] = {}  # vlm prompt -> label/description, for meta
        self.prompt_info: dict = {}  # held-object answer (identify_held_object), for meta/report
        self.cancelled = threading.Event()  # the worker gave up on this attempt
        self.read_s = 0.0  # time the reader thread spent on it (reading + VLM)
        self.vlm_s = 0.0
        self.stats = Stats()

    # -- producer side ---------------------------------------------------------------
    def put(self, start: int, frames: np.ndarray) -> None:
        self._q.put((start, frames))

    def end(self) -> None:
        self._q.put(_END)

    def fail(self, exc: BaseException) -> None:
        self._q.put(exc)

    # -- consumer side ---------------------------------------------------------------
    def chunks(self, stop: threading.Event) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, frames) until the end; raise the reader's error or Interrupted."""
        while True:
            try:
                item = self._q.get(timeout=POLL_S)
            except queue.Empty:
                if stop.is_set():
                    raise Interrupted("stopped while waiting for frames") from None
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def discard(self) -> None:
        """Drop unread chunks (the attempt failed); the reader stops at its next chunk."""
        self.cancelled.set()
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                return


def read_episode(
    stream: EpisodeStream,
    reader: Client,
    vlm: Client | None,
    ds: DatasetInfo,
    policy: RetryPolicy,
    stop: threading.Event,
) -> None:
    """Stream the episode's camera frames into `stream`, and resolve its VLM prompts."""
    plan = stream.plan
    t0 = time.perf_counter()
    pending = {}  # frame -> [vlm prompts on it]
    for op in plan.vlm_prompts:
        pending.setdefault(op.frame, []).append(op)
    try:
        start: int | None = 0
        while start is not None:
            if stream.cancelled.is_set():
                return
            body = READER.request("frames", dataset=ds.dataset, episode=plan.episode,
                                  key=ds.camera_key, start=start)  # fmt: skip
            out = call(reader, "frames", body, stop=stop, stats=stream.stats)
            frames = out["frames"]  # (n, H, W, 3) uint8, read-only view of the reply
            first = int(out["start"])
            if frames.ndim != 4 or frames.shape[1:] != (plan.height, plan.width, 3):
                raise ValueError(
                    f"reader: episode {plan.episode} frames have shape {frames.shape}, expected "
                    f"(n, {plan.height}, {plan.width}, 3)"
                )
            stream.put(first, frames)
            for f in [f for f in pending if first <= f < first + len(frames)]:
                for op in pending.pop(f):
                    _ask_vlm(stream, vlm, op, frames[f - first], policy, stop)
            nxt = out.get("next")
            start = int(nxt) if nxt is not None else None
        if pending:
            raise ValueError(
                f"reader: episode {plan.episode} ended before frame(s) {sorted(pending)} "
                "needed by the VLM prompt"
            )
        stream.end()
    except BaseException as e:  # noqa: BLE001 - handed to the worker, which decides
        stream.fail(e)
    finally:
        stream.read_s += time.perf_counter() - t0


def _ask_vlm(stream: EpisodeStream, vlm: Client | None, op: PromptOp, image: np.ndarray,
             policy: RetryPolicy, stop: threading.Event) -> None:  # fmt: skip
    if vlm is None:
        raise RuntimeError("a VLM prompt needs the vlm service; add it to the services config")
    t0 = time.perf_counter()
    description = op.vlm
    if op.held:  # the object in the gripper, named by the VLM, is what gets boxed
        description = _ask_held(stream, vlm, op, image, policy, stop)
    body = VLM.request("bbox", image=image, description=description,  # image (H, W, 3) uint8
                       episode=stream.plan.episode, frame=op.frame)  # fmt: skip
    out = call(vlm, "bbox", body, stop=stop, stats=stream.stats)
    box = [float(v) for v in out["box"]]
    if len(box) != 4:
        raise ValueError(f"vlm: bbox answered {out['box']!r}; expected [x0, y0, x1, y1]")
    stream.boxes[op] = box
    stream.vlm_answers[op] = {
        "box": box,
        "label": out.get("label"),
        "description": out.get("description"),
    }
    stream.vlm_s += time.perf_counter() - t0


HELD_TASK = "identify_held_object"  # services/vlm/prompts.py


def _ask_held(stream: EpisodeStream, vlm: Client, op: PromptOp, image: np.ndarray,
              policy: RetryPolicy, stop: threading.Event) -> str:  # fmt: skip
    """Ask the VLM which object the gripper holds on the prompt's frame; its description is
    what gets boxed. Nothing held fails the episode (never a box of a guessed object)."""
    hint = {"instruction": op.vlm} if op.vlm else {}  # the episode's instruction, as a hint
    body = VLM.request("plan", task=HELD_TASK, image=image, episode=stream.plan.episode, **hint)
    out = call(vlm, "plan", body, stop=stop, stats=stream.stats)
    res = out.get("result")
    if not isinstance(res, dict) or not isinstance(res.get("held"), bool):
        raise ValueError(
            f"vlm: {HELD_TASK} answered {res!r}; expected {{held, label, description}}"
        )
    stream.prompt_info["held"] = {"held": res["held"], "label": res.get("label"),
                                  "description": res.get("description")}  # fmt: skip
    if not res["held"]:
        raise EpisodeRefused(
            f"vlm: nothing held at frame {op.frame} ({HELD_TASK}); the episode is not masked "
            "(check the frame: prompt.frame / prompt.grasp, or the VLM's answer)"
        )
    desc = (res.get("description") or res.get("label") or "").strip()
    if not desc:
        raise ValueError(f"vlm: {HELD_TASK} says an object is held but names none: {res!r}")
    return desc
