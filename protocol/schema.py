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
tuple[X, ...] (from a list), dict[str, X], X | None, Literal[...], nested @message classes
and nested plain dataclasses. A dataclass field with `metadata={"parse": False}` is not a key
(e.g. where a config came from): it keeps its default and is refused like an unknown key.

This is the one validator of the mesh: wire messages, service and backend options
(protocol/options.py), configs/services.yaml (protocol/config.py), pipeline YAML
(orchestrator/config.py), exporter options and reader config all parse through it, so one
rule holds everywhere and every error has one wording (RULES below):
- unknown keys are refused naming the valid ones (a typo must not silently turn a feature off);
- a boolean is a YAML/JSON boolean, never the string "no" and never a number;
- an int is a whole number, never a bool, a float or a string such as "3";
- a float is any number (an int is accepted), never a bool or a string.
Errors name the field path, the value given and the fix:
    services.sam.workers: expected int, got str '3'; write a whole number without quotes ...
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


# The fix each scalar rule prints, the same words wherever the value came from.
RULES = {
    bool: "write true or false without quotes (YAML/JSON), never a string or a number",
    int: "write a whole number without quotes (YAML/JSON), e.g. 3, never a boolean or a fraction",
    float: "write a number without quotes (YAML/JSON), e.g. 0.5, never a boolean",
}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def keys(cls: type) -> list[str]:
    """The keys parse() accepts for `cls` (its fields but those marked parse=False)."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("parse", True)]


def parse(cls: type, body: Any, *, where: str = "") -> Any:
    """Validate `body` (a dict) against the @message (or dataclass) `cls` and build one."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest(f"{where or 'body'}: must be a map of fields, got {_tname(body)}")
    fields = _FIELDS.get(cls)
    if fields is None:  # (name, annotation, required) of every key, once per class
        hints = _hints(cls)
        fields = _FIELDS[cls] = [
            (f.name, hints[f.name],
             f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls) if f.metadata.get("parse", True)
        ]  # fmt: skip
    names = _names(cls)
    if not names.issuperset(body):
        unknown = [k for k in body if k not in names]
        raise BadRequest(f"{_join(where, str(unknown[0]))}: unknown field; valid fields are "
                         f"{sorted(names)}")  # fmt: skip
    kwargs = {}
    for name, tp, required in fields:
        if name in body:
            v = body[name]
            kwargs[name] = v if _EXACT.get(tp) is type(v) else _check(tp, v, _join(where, name))
        elif required:
            raise BadRequest(f"{_join(where, name)}: required field is missing")
    return cls(**kwargs)


_FIELDS: dict[type, list[tuple[str, Any, bool]]] = {}
_NAMES: dict[type, frozenset[str]] = {}


def _names(cls: type) -> frozenset[str]:
    n = _NAMES.get(cls)
    if n is None:
        n = _NAMES[cls] = frozenset(keys(cls))
    return n


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _tname(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"array {v.dtype}{list(v.shape)}"
    return type(v).__name__


_EXACT = {int: int, float: float, str: str, bool: bool}  # fast path: the value's exact type
_SHAPES: dict[Any, tuple[Any, tuple]] = {}  # annotation -> (get_origin, get_args), cached


def _check(tp: Any, v: Any, path: str) -> Any:
    if _EXACT.get(tp) is type(v):  # the common case, before the general rules below
        return v
    if tp is Any:
        return v
    shape = _SHAPES.get(tp)
    if shape is None:
        shape = _SHAPES[tp] = (get_origin(tp), get_args(tp))
    origin, args = shape
    if origin in (Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        if len(args) == 2 and args[1] is type(None):  # X | None: X's own message
            return _check(args[0], v, path)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(a, v, path)
            except BadRequest as e:
                errors.append(str(e))
        raise BadRequest(
            errors[0]
            if len(errors) == 1
            else f"{path}: expected {_show(tp)}, got {_tname(v)}{_value(v)}"
        )
    if origin is Literal:
        choices = args
        # only scalars compare: `array in choices` would raise (truth value of an array)
        if not isinstance(v, str | int | float) or type(v) is bool or v not in choices:
            raise BadRequest(f"{path}: {_tname(v) if isinstance(v, np.ndarray) else repr(v)} "
                             f"is not one of {list(choices)}")  # fmt: skip
        return v
    if origin is list:
        if not isinstance(v, list):
            raise BadRequest(f"{path}: expected a list, got {_tname(v)}{_value(v)}")
        (item,) = args or (Any,)
        exact = _EXACT.get(item)
        if exact is not None and all(type(x) is exact for x in v):
            return v  # a list of exact scalars (points' coordinates, ids): nothing to convert
        return [_check(item, x, f"{path}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise BadRequest(f"{path}: expected a map, got {_tname(v)}{_value(v)}")
        kt, vt = args or (Any, Any)
        return {_check(kt, k, f"{path} key"): _check(vt, x, f"{path}[{k!r}]") for k, x in v.items()}
    if origin is tuple or tp is tuple:
        if not isinstance(v, list | tuple):
            raise BadRequest(f"{path}: expected a list, got {_tname(v)}{_value(v)}")
        args = get_args(tp)
        item = args[0] if args else Any
        if len(args) > 2 or (len(args) == 2 and args[1] is not Ellipsis):
            raise TypeError(f"{path}: only tuple[X, ...] is supported by protocol.schema")
        return tuple(_check(item, x, f"{path}[{i}]") for i, x in enumerate(v))
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
    elif getattr(tp, "__mesh_message__", False) or _is_dataclass_type(tp):
        return parse(tp, v, where=path)
    else:
        raise TypeError(f"{path}: annotation {tp!r} is not supported by protocol.schema")
    raise BadRequest(_mismatch(tp, v, path))


def _value(v: Any) -> str:
    """' 3' / " 'no'": the value itself, short, for scalars (arrays and maps only by type)."""
    if isinstance(v, str | int | float | bool) or v is None:
        r = repr(v)
        return " " + (r if len(r) <= 42 else r[:40] + "...")
    return ""


def _mismatch(tp: Any, v: Any, path: str) -> str:
    """`path: expected int, got str '3'; write a whole number ..., e.g. workers=3`."""
    msg = f"{path}: expected {_show(tp)}, got {_tname(v)}{_value(v)}"
    if tp in RULES:
        return f"{msg}; {RULES[tp]}"
    if tp is str:
        return f"{msg}; write a text (quote it in YAML when it looks like a number or a boolean)"
    if tp is dict:
        return f"{msg}; write a map of key: value"
    if tp is list:
        return f"{msg}; write a list, e.g. [a, b]"
    return msg


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


__all__ = ["RULES", "check_value", "describe", "keys", "message", "parse"]
