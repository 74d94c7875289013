"""Backend seam of the VLM service: one small interface, three backends, options checked eagerly.

Usage:
    backend = make_backend("openai", {"base_url": "http://127.0.0.1:8000/v1"})
    backend.setup()                                     # loads the model / checks the server
    out = backend.bbox(rgb, "the green cup")            # {box, label, description, raw, ...}
    out = backend.plan("check_grasp_success", rgb, None)  # {task, result, raw}

Backends: `prompts` (default: answers from a prompts file, no model), `openai` (any
OpenAI-compatible chat-completions server), `vllm` (in-process vllm.LLM; needs CUDA).
Heavy imports (httpx, vllm) happen inside the backend modules, only when chosen.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

from protocol.options import parse_options as _parse_options

from ..errors import OptionError

DEFAULT_BACKEND = "prompts"
_BACKENDS = {
    "prompts": ("services.vlm.backends.prompts_backend", "PromptsBackend"),
    "openai": ("services.vlm.backends.openai_backend", "OpenAIBackend"),
    "vllm": ("services.vlm.backends.vllm_backend", "VllmBackend"),
}
BACKENDS = tuple(_BACKENDS)


class VlmBackend(Protocol):
    """What service.py needs from a backend."""

    name: str
    concurrency: int  # how many requests may run at once (service worker threads)

    def setup(self) -> None:
        """Load the model or check the file/server; raise with a clear message on failure."""

    def bbox(
        self, image: np.ndarray, description: str, episode: int | None, frame: int | None
    ) -> dict:
        """-> {box: [x0, y0, x1, y1] original pixels, label, description, raw}."""

    def point(
        self, image: np.ndarray, description: str, episode: int | None, frame: int | None
    ) -> dict:
        """-> {visible: bool, point: [x, y] original pixels | None, label, description, raw}."""

    def plan(
        self, task: str, image: np.ndarray | None, instruction: str | None, episode: int | None
    ) -> dict:
        """-> {task, result, raw}."""

    def info(self) -> dict:
        """Extra fields for the service's `info` reply."""

    def close(self) -> None:
        """Release the model / connections."""


def make_backend(name: str, options: dict | None) -> VlmBackend:
    """Build backend `name` from `options` (unknown keys and bad values raise OptionError)."""
    if name not in _BACKENDS:
        raise OptionError(f"backend: {name!r} is not one of {list(BACKENDS)}")
    module, cls = _BACKENDS[name]
    return getattr(importlib.import_module(module), cls).from_options(options or {})


def parse_options(cls: type, options: dict, backend: str) -> Any:
    """Build the frozen options dataclass `cls` by the one rule of every option and message
    (protocol/options.py): unknown keys refused, values by their annotated types."""
    if not isinstance(options, dict):
        raise OptionError(f"options: expected a mapping, got {type(options).__name__}")
    return _parse_options(cls, options, where=f"{backend} backend options", error=OptionError)
