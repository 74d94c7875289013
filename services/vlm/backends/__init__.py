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

import dataclasses
import importlib
import json
import types
from typing import Any, Literal, Protocol, Union, get_args, get_origin, get_type_hints

import numpy as np

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
    """Build the frozen options dataclass `cls` from a dict, refusing unknown keys and bad types."""
    if not isinstance(options, dict):
        raise OptionError(f"options: expected a mapping, got {type(options).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    for key in options:
        if key not in fields:
            raise OptionError(
                f"option {key!r} is not known to the {backend} backend; valid options: {sorted(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        if name in options:
            kwargs[name] = _coerce(hints[name], options[name], name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise OptionError(f"option {name!r} is required by the {backend} backend")
    return cls(**kwargs)


def _coerce(tp: Any, v: Any, name: str) -> Any:
    """Check (and from CLI strings, convert) one option value against its annotation."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if v is None or (
            isinstance(v, str) and v.lower() in ("none", "null") and type(None) in args
        ):
            if type(None) in args:
                return None
        for a in args:
            if a is not type(None):
                try:
                    return _coerce(a, v, name)
                except OptionError:
                    pass
        raise OptionError(f"option {name!r}: expected {tp}, got {v!r}")
    if origin is Literal:
        if v not in get_args(tp):
            raise OptionError(f"option {name!r}: {v!r} is not one of {list(get_args(tp))}")
        return v
    if tp is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
            return v.lower() in ("true", "1", "yes")
    elif tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v)
    elif tp is float:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(v, str):
            return v
    elif tp is dict or origin is dict:
        if isinstance(v, str):  # from the command line: --option extra_body='{"top_k": 1}'
            try:
                v = json.loads(v)
            except ValueError:
                pass
        if isinstance(v, dict):
            return v
    raise OptionError(f"option {name!r}: expected {getattr(tp, '__name__', tp)}, got {v!r}")
