"""Service and backend options, checked by the one validator the wire messages use.

Usage:
    from protocol.options import parse_options, check_kwargs
    opts = parse_options(OpenAIOptions, {"concurrency": 4}, where="vlm backend openai")
    check_kwargs(ClassicalBackend.__init__, {"non_overlap": False}, where="sam backend classical")

One rule for every message, option and config value (protocol/schema.py): unknown keys are
refused naming the valid ones; a boolean is a YAML/JSON boolean (`true`/`false`; PyYAML also
reads unquoted yes/no/on/off as booleans), never a string such as "no"; a number is a YAML/JSON
number (an int where an int is expected; an int or a float where a float is), never a string
or a boolean. `--option KEY=VALUE` and services.yaml `options:` are read as YAML, so
`--option non_overlap=no` is the boolean false everywhere and `--option non_overlap='"no"'`
is refused everywhere. Errors name the field, the value and the fix; they raise `error`
(ValueError by default), so a service refuses to start with the message.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

from .errors import BadRequest
from .schema import check_value, parse


def parse_options(cls: type, options: dict | None, *, where: str = "options",
                  error: type[Exception] = ValueError) -> Any:  # fmt: skip
    """Build the options dataclass `cls` (a @message or any dataclass) from `options`."""
    try:
        return parse(cls, dict(options or {}), where=where)
    except BadRequest as e:
        raise error(str(e)) from None


def check_kwargs(fn: Callable, options: dict | None, *, where: str = "options",
                 error: type[Exception] = ValueError) -> dict:  # fmt: skip
    """Check `options` against the annotated keyword parameters of `fn` (a backend's
    __init__): unknown names refused, each value by its annotation. Returns the options."""
    options = dict(options or {})
    params = {k: p for k, p in inspect.signature(fn).parameters.items() if k != "self"}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return options  # it forwards them: the callee checks
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise error(f"{where}.{unknown[0]}: unknown field; valid fields are {sorted(params)}")
    hints = get_type_hints(fn)
    try:
        for k, v in options.items():
            if k in hints:
                options[k] = check_value(hints[k], v, f"{where}.{k}")
    except BadRequest as e:
        raise error(str(e)) from None
    return options


__all__ = ["check_kwargs", "parse_options"]
