"""`prompts` backend (the default): boxes and planner answers from a prompts file, no model at all.

The file's format: docs/prompts-file.md. `info` reports the file's `buffer` entry, so the
orchestrator refuses to run a buffer the file was not written for.

Usage:
    b = PromptsBackend.from_options({"prompts_file": "configs/prompts/demo.yaml"})
    b.setup()                                        # loads and validates the whole file
    b.bbox(rgb, "the red mug", episode=0, frame=0)   # that episode's target.box in pixels
    b.plan("check_grasp_success", rgb, None, episode=0)   # from episodes.0.plan, else unsupported

The file is re-read when its modification time changes, so a tool may edit it between
episodes. A missing episode or target is a not_found error naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from protocol.prompts_file import PromptsFile, PromptsFileError, load_prompts_file

from ..errors import NotFoundError, OptionError, RequestError, UnsupportedError
from ..prompts import TASKS, check_image
from . import parse_options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptsOptions:
    prompts_file: str | None = None  # YAML/JSON prompts file; None: each request says how to set it
    strict_frame: bool = True  # bbox for a frame other than the target's frame is not_found
    concurrency: int = 4  # lookups are cheap and thread-safe


class PromptsBackend:
    name = "prompts"

    def __init__(self, opts: PromptsOptions):
        if opts.concurrency < 1:
            raise OptionError(f"option 'concurrency': must be >= 1, got {opts.concurrency}")
        self.opts = opts
        self.concurrency = opts.concurrency
        self._file: PromptsFile | None = None
        self._mtime: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_options(cls, options: dict) -> PromptsBackend:
        return cls(parse_options(PromptsOptions, options, "prompts"))

    def setup(self) -> None:
        if self.opts.prompts_file is None:
            log.warning("prompts backend: no option prompts_file; bbox and plan will fail")
            return
        self._prompts()  # fail at start-up on a missing or invalid file

    def _prompts(self) -> PromptsFile:
        """The validated file, re-read if it changed on disk."""
        path = self.opts.prompts_file
        if path is None:
            raise RequestError(
                "the prompts backend has no prompts file: start the service with "
                "--option prompts_file=configs/prompts/NAME.yaml (or pick backend openai/vllm)"
            )
        try:
            mtime = os.stat(path).st_mtime
        except OSError as e:
            raise PromptsFileError(f"{path}: cannot read the prompts file ({e.strerror})") from None
        with self._lock:
            if self._file is None or mtime != self._mtime:
                self._file = load_prompts_file(path)
                self._mtime = mtime
                log.info(
                    "prompts file %s: %d episodes, coords=%s",
                    path,
                    len(self._file.episodes),
                    self._file.coords,
                )
            return self._file

    def _episode(self, episode: int | None, what: str):
        if episode is None:
            raise RequestError(
                f"episode: the prompts backend answers {what} from the prompts file by episode; "
                f"send episode (and frame)"
            )
        pf = self._prompts()
        try:
            return pf, pf.episode(episode)
        except PromptsFileError as e:
            raise NotFoundError(str(e)) from None

    def bbox(
        self,
        image: np.ndarray,
        description: str,
        episode: int | None = None,
        frame: int | None = None,
    ) -> dict:
        check_image(image)
        pf, ep = self._episode(episode, "bbox")
        where = f"{pf.source}: episodes.{ep.episode}.target"
        t = ep.target
        if t is None:
            raise NotFoundError(
                f"{where}: missing; add target: {{frame: F, box: [x0, y0, x1, y1], description: ...}}"
            )
        if frame is not None and frame != t.frame and self.opts.strict_frame:
            raise NotFoundError(
                f"{where}.frame: the target box is given for frame {t.frame}, not frame {frame}; "
                f"ask for frame {t.frame}, or add the box for frame {frame}"
            )
        h, w = image.shape[:2]
        box = pf.box_pixels(t.box, h, w)
        if box[2] > w or box[3] > h:
            raise RequestError(
                f"{where}.box: {list(t.box)} reaches beyond the {w}x{h} image; fix the box "
                f"(coords: {pf.coords})"
            )
        entry = {"episode": ep.episode, "frame": t.frame, "box": list(t.box), "coords": pf.coords}
        return {
            "box": [round(v, 2) for v in box],
            "label": t.description or description,
            "description": t.description or description,
            "raw": json.dumps(entry),
            "frame": t.frame,
        }

    def point(
        self,
        image: np.ndarray,
        description: str,
        episode: int | None = None,
        frame: int | None = None,
    ) -> dict:
        """The centre of the episode's stored target box (the file holds boxes, not points)."""
        b = self.bbox(image, description, episode, frame)
        x0, y0, x1, y1 = b["box"]
        return {"visible": True, "point": [round((x0 + x1) / 2, 2), round((y0 + y1) / 2, 2)],
                "label": b["label"], "description": b["description"], "raw": b["raw"],
                "frame": b["frame"]}  # fmt: skip

    def plan(
        self,
        task: str,
        image: np.ndarray | None,
        instruction: str | None,
        episode: int | None = None,
    ) -> dict:
        if task not in TASKS:
            raise RequestError(f"task: {task!r} is not a planner task; use one of {list(TASKS)}")
        if episode is None:
            raise UnsupportedError(
                f"the prompts backend answers {task} only from a per-episode plan entry; "
                f"send episode, or use backend openai/vllm"
            )
        pf, ep = self._episode(episode, task)
        if task not in ep.plan:
            raise UnsupportedError(
                f"{pf.source}: episodes.{ep.episode}.plan.{task}: no stored answer; add one "
                f"or use backend openai/vllm"
            )
        result = ep.plan[task]
        if task == "mark_bounding_box":
            if image is None:
                raise RequestError(
                    "image: task mark_bounding_box needs the image (to size the box)"
                )
            check_image(image)
            h, w = image.shape[:2]
            result = {
                **result,
                "bbox_2d": [round(v, 2) for v in pf.box_pixels(result["bbox_2d"], h, w)],
            }
        return {"task": task, "result": result, "raw": json.dumps({task: ep.plan[task]})}

    def info(self) -> dict:
        try:  # the file as it is now (it is re-read when it changes); info never fails
            pf = self._prompts() if self.opts.prompts_file else None
        except (PromptsFileError, RequestError):
            pf = self._file
        tie = None
        if pf is not None and pf.buffer is not None:  # which buffer the file is for
            tie = {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in dataclasses.asdict(pf.buffer).items()}  # fmt: skip
        return {
            "prompts_file": self.opts.prompts_file,
            "episodes": len(pf.episodes) if pf else 0,
            "coords": pf.coords if pf else None,
            "buffer": tie,
            "tasks": [],  # answered only from per-episode plan entries
        }

    def close(self) -> None:
        pass
