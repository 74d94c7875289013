"""Errors of the VLM library, free of the protocol package (service.py maps them to replies).

Usage:
    try: backend.bbox(image, "the red mug")
    except VlmError as e: print(e.code, e)      # code: a protocol error code name
"""

from __future__ import annotations

RAW_EXCERPT_CHARS = 2000  # how much of a model's raw answer an error message carries


def excerpt(text: str, limit: int = RAW_EXCERPT_CHARS) -> str:
    """`text` cut to `limit` characters, marking the cut."""
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more chars]"


class VlmError(Exception):
    """Base: `code` is the protocol error code the service replies with."""

    code = "internal"


class OptionError(VlmError, ValueError):
    """A backend option is unknown or has a bad value (raised at start-up)."""

    code = "bad_request"


class RequestError(VlmError, ValueError):
    """The request cannot be served as asked (missing field for a task, bad image, ...)."""

    code = "bad_request"


class NotFoundError(VlmError, LookupError):
    """The prompts file has no entry for what was asked."""

    code = "not_found"


class UnsupportedError(VlmError):
    """The backend does not offer this task."""

    code = "unsupported"


class AnswerParseError(VlmError):
    """The model answered, but not in the form the task needs. Carries the raw answer."""

    def __init__(self, what: str, reason: str, raw: str, *, truncated: bool = False):
        hint = (
            " The answer was cut at the token limit: raise the backend option max_tokens."
            if truncated
            else ""
        )
        super().__init__(
            f"unparseable model answer for {what}: {reason}.{hint} raw answer: {excerpt(raw)!r}"
        )
        self.what = what
        self.reason = reason
        self.raw = raw


class InvalidBoxError(VlmError):
    """The model's box is empty, inverted or outside the image. Carries the raw answer."""

    def __init__(self, reason: str, raw: str = ""):
        tail = f" raw answer: {excerpt(raw)!r}" if raw else ""
        super().__init__(f"invalid box: {reason}.{tail}")
        self.reason = reason
        self.raw = raw


class UpstreamError(VlmError):
    """The model server failed (HTTP error, malformed reply, unreachable)."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "internal"):
        super().__init__(message)
        self.status = status
        self.code = code


class UpstreamTimeout(UpstreamError):
    """The model server did not answer within the configured timeout (after retries)."""

    def __init__(self, message: str):
        super().__init__(message, code="timeout")
