"""Typed request bodies: a frozen dataclass per op, decoded and validated once at the edge.

Usage:
    @message
    class FramesReq:
        dataset: str
        episode: int
        start: int = 0
        stop: int | None = None

    req = parse(FramesReq, body)   # raises BadRequest naming the field and the fix

Supported annotations: int, float, str, bool, bytes, list, dict, np.ndarray, list[X],
dict[str, X], X | None, Literal[...], nested @message classes. An int is accepted where a
float is expected; a bool is never accepted as an int. Unknown keys are refused (a typo in
a field name must not silently turn a feature off).
"""

from __future__ import annotations

import dataclasses
import sys
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np

from .errors import BadRequest

_HINTS: dict[type, dict[str, Any]] = {}


def message(cls: type | None = None, /):
    """Class decorator: a frozen, slotted dataclass whose instances come from parse()."""

    def wrap(c: type) -> type:
        dc = dataclasses.dataclass(frozen=True, slots=True)(c)
        dc.__mesh_message__ = True
        return dc

    return wrap if cls is None else wrap(cls)


def _hints(cls: type) -> dict[str, Any]:
    h = _HINTS.get(cls)
    if h is None:
        try:  # each class of the MRO resolves its annotations in its own module
            h = get_type_hints(cls)
        except NameError:
            mod = sys.modules.get(cls.__module__)
            h = get_type_hints(cls, globalns=vars(mod) if mod else None)
        _HINTS[cls] = h
    return h


def parse(cls: type, body: Any, *, where: str = "") -> Any:
    """Validate `body` (a dict) against the @message class `cls` and build an instance."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest(f"{where or 'body'}: must be a map of fields, got {_tname(body)}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in body if k not in fields]
    if unknown:
        path = f"{where}.{unknown[0]}" if where else str(unknown[0])
        raise BadRequest(f"{path}: unknown field; valid fields are {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name in body:
            kwargs[name] = _check(hints[name], body[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise BadRequest(f"{path}: required field is missing")
    return cls(**kwargs)


def _tname(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"array {v.dtype}{list(v.shape)}"
    return type(v).__name__


def _check(tp: Any, v: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return v
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(a, v, path)
            except BadRequest as e:
                errors.append(str(e))
        raise BadRequest(
            errors[0] if len(errors) == 1 else f"{path}: expected {_show(tp)}, got {_tname(v)}"
        )
    if origin is Literal:
        choices = get_args(tp)
        # only scalars compare: `array in choices` would raise (truth value of an array)
        if not isinstance(v, str | int | float) or type(v) is bool or v not in choices:
            raise BadRequest(f"{path}: {_tname(v) if isinstance(v, np.ndarray) else repr(v)} "
                             f"is not one of {list(choices)}")  # fmt: skip
        return v
    if origin is list:
        if not isinstance(v, list):
            raise BadRequest(f"{path}: expected a list, got {_tname(v)}")
        (item,) = get_args(tp) or (Any,)
        return [_check(item, x, f"{path}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise BadRequest(f"{path}: expected a map, got {_tname(v)}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_check(kt, k, f"{path} key"): _check(vt, x, f"{path}[{k!r}]") for k, x in v.items()}
    if getattr(tp, "__mesh_message__", False):
        return parse(tp, v, where=path)
    if tp is float:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    elif tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    elif tp is bool:
        if isinstance(v, bool):
            return v
    elif tp is np.ndarray:
        if isinstance(v, np.ndarray):
            return v
    elif tp in (str, bytes, list, dict):
        if isinstance(v, tp):
            return v
    else:
        raise TypeError(f"{path}: annotation {tp!r} is not supported by protocol.schema")
    if isinstance(v, str) and tp in (bool, int, float):
        example = "true or false" if tp is bool else "a number"
        shown = repr(v) if len(v) <= 40 else repr(v[:40]) + "..."
        raise BadRequest(f"{path}: expected {_show(tp)}, got str {shown}; write {example} "
                         "without quotes (YAML/JSON), e.g. "
                         f"{path.rsplit('.', 1)[-1]}={'false' if tp is bool else '3'}")  # fmt: skip
    raise BadRequest(f"{path}: expected {_show(tp)}, got {_tname(v)}")


def check_value(tp: Any, v: Any, path: str) -> Any:
    """One value against one annotation, by the rules of parse() (protocol/options.py)."""
    return _check(tp, v, path)


def _show(tp: Any) -> str:
    """A readable annotation: `list[float] | None`, `array`, `Point`, `one of ['a', 'b']`."""
    if tp is np.ndarray:
        return "array"
    if tp is type(None):
        return "None"
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_show(a) for a in args)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (list, dict) and args:
        return f"{origin.__name__}[{', '.join(_show(a) for a in args)}]"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def describe(cls: type) -> dict[str, str]:
    """Field name -> annotation text, for `info` and docs."""
    return {name: _show(t) for name, t in _hints(cls).items()}


__all__ = ["check_value", "describe", "message", "parse"]
