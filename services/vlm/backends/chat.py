"""Shared logic of the model backends: prompt -> chat messages -> raw text -> strict parse.

Usage (a model backend subclasses ChatBackend and implements complete()):
    class MyBackend(ChatBackend):
        def complete(self, messages: list) -> Completion: ...   # thread-safe

bbox and plan are the same for every model backend; only how messages reach a model differs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..coords import IMAGE_FACTOR, MAX_PIXELS, MIN_PIXELS, BoxConvention
from ..errors import OptionError, RequestError
from ..parsing import (
    parse_bool_answer,
    parse_box_answer,
    parse_held_answer,
    parse_instruction_answer,
    parse_list_answer,
    parse_type_answer,
)
from ..point import parse_point_answer, point_hint, point_prompt, point_to_original
from ..prompts import (
    TASKS,
    bbox_prompt,
    build_messages,
    check_image,
    check_task,
    encode_image,
    task_prompt,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatOptions:
    """Options every model backend has (one comment per default)."""

    coords: Literal["resized", "norm1000", "norm1", "original"] = "resized"  # Qwen2.5-VL pixels
    factor: int = IMAGE_FACTOR  # smart_resize: sides become multiples of this (28)
    min_pixels: int = MIN_PIXELS  # smart_resize lower area bound (processor default 3136)
    max_pixels: int = MAX_PIXELS  # smart_resize upper area bound (processor default 12845056)
    pre_resize: bool = True  # send the image already smart-resized (coords=resized)
    max_tokens: int = 1024  # completion token limit per answer
    temperature: float = 0.0  # greedy: the same image gives the same box
    image_format: Literal["jpeg", "png"] = "jpeg"  # how the image is encoded for the model
    jpeg_quality: int = 90  # OpenCV JPEG quality 0-100
    system_prompt: str | None = None  # None: the chat template's default system prompt
    concurrency: int = 8  # requests in flight at once (the server batches them)

    def check(self) -> None:
        if self.max_tokens < 1:
            raise OptionError(f"option 'max_tokens': must be >= 1, got {self.max_tokens}")
        if self.concurrency < 1:
            raise OptionError(f"option 'concurrency': must be >= 1, got {self.concurrency}")
        if not 0 <= self.jpeg_quality <= 100:
            raise OptionError(f"option 'jpeg_quality': must be in 0..100, got {self.jpeg_quality}")
        if self.temperature < 0:
            raise OptionError(f"option 'temperature': must be >= 0, got {self.temperature}")

    def convention(self) -> BoxConvention:
        return BoxConvention(
            self.coords, self.factor, self.min_pixels, self.max_pixels, self.pre_resize
        )


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None = None  # "length": cut at max_tokens


class ChatBackend:
    """bbox/plan on top of complete(messages) -> Completion."""

    name = "chat"

    def __init__(self, opts: ChatOptions):
        opts.check()
        self.opts = opts
        self.conv = opts.convention()
        self.concurrency = opts.concurrency

    # -- to implement -------------------------------------------------------------------
    def setup(self) -> None:
        raise NotImplementedError

    def complete(self, messages: list) -> Completion:
        raise NotImplementedError

    def info(self) -> dict:
        return {"coords": self.conv.coords, "tasks": list(TASKS)}

    def close(self) -> None:
        pass

    # -- shared -------------------------------------------------------------------------
    def image_url(self, image: np.ndarray) -> str:
        """(H, W, 3) uint8 RGB -> data URL of the image the model should see."""
        sent = self.conv.prepare_image(image)  # (mh, mw, 3) uint8 when pre-resized
        return encode_image(sent, self.opts.image_format, self.opts.jpeg_quality)

    def messages(self, prompt: str, image: np.ndarray | None) -> list:
        url = self.image_url(image) if image is not None else None
        return build_messages(prompt, url, self.opts.system_prompt)

    def bbox(
        self,
        image: np.ndarray,
        description: str,
        episode: int | None = None,
        frame: int | None = None,
    ) -> dict:
        check_image(image)
        if not description.strip():
            raise RequestError(
                "description: must name the object, e.g. 'the green cup on the right'"
            )
        h, w = image.shape[:2]
        comp = self.complete(self.messages(bbox_prompt(description, self.conv.hint(h, w)), image))
        truncated = comp.finish_reason == "length"
        ans = parse_box_answer(comp.text, truncated=truncated)
        box = self.conv.to_original(ans.bbox, h, w, raw=comp.text)
        mh, mw = self.conv.model_size(h, w)
        log.debug("bbox %r: model %s in %dx%d -> %s", description, ans.bbox, mw, mh, box)
        return {
            "box": box,
            "label": ans.label or "",
            "description": ans.description or description,
            "raw": comp.text,
            "model_box": ans.bbox,
            "model_size": [mh, mw],
        }

    def point(
        self,
        image: np.ndarray,
        description: str,
        episode: int | None = None,
        frame: int | None = None,
    ) -> dict:
        """One point on the described object (original pixels), or visible=False."""
        check_image(image)
        if not description.strip():
            raise RequestError("description: must name the object, e.g. 'the green cup'")
        h, w = image.shape[:2]
        prompt = point_prompt(description, point_hint(self.conv, h, w))
        comp = self.complete(self.messages(prompt, image))
        ans = parse_point_answer(comp.text, truncated=comp.finish_reason == "length")
        mh, mw = self.conv.model_size(h, w)
        out = {"visible": ans.point is not None, "point": None, "label": ans.label or "",
               "description": description, "raw": comp.text, "model_point": ans.point,
               "model_size": [mh, mw]}  # fmt: skip
        if ans.point is not None:
            out["point"] = point_to_original(self.conv, ans.point, h, w, raw=comp.text)
        return out

    def plan(
        self,
        task: str,
        image: np.ndarray | None,
        instruction: str | None,
        episode: int | None = None,
    ) -> dict:
        check_task(task, image is not None, instruction)
        hint = ""
        if image is not None:
            check_image(image)
            hint = self.conv.hint(*image.shape[:2])
        comp = self.complete(self.messages(task_prompt(task, instruction, hint), image))
        result = self.parse(task, comp, None if image is None else image.shape[:2])
        return {"task": task, "result": result, "raw": comp.text}

    def parse(self, task: str, comp: Completion, size: tuple[int, int] | None) -> object:
        """The task's result from a completion (strict; AnswerParseError carries the raw text)."""
        text, cut = comp.text, comp.finish_reason == "length"
        if task == "classify_user_prompt":
            return parse_type_answer(text)
        if task == "decompose_user_prompt":
            return parse_list_answer(text, truncated=cut)
        if task == "generate_instruction":
            return parse_instruction_answer(text, truncated=cut)
        if task == "mark_bounding_box":
            if size is None:
                raise RequestError("image: task mark_bounding_box needs the image")
            h, w = size
            ans = parse_box_answer(text, truncated=cut)
            return {
                "bbox_2d": self.conv.to_original(ans.bbox, h, w, raw=text),
                "label": ans.label or "",
                "description": ans.description or "",
            }
        if task == "identify_held_object":
            return parse_held_answer(text, truncated=cut)
        return parse_bool_answer(text)
