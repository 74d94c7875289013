"""Error codes of the mesh protocol, as exceptions a handler raises and a client receives.

Usage (service side):
    raise NotFound(f"Cannot find session {sid}; it might have expired")
Usage (client side):
    try: client.call("masks", {...})
    except RemoteError as e: if e.code == "not_found": ...

Every error reply is `{ok: false, error: {code, message, retryable}}`. `retryable` tells the
client that sending the same request again (after a pause) may succeed: true for
`overloaded` and `unavailable`, false for the rest.
"""

from __future__ import annotations

BAD_REQUEST = "bad_request"  # the request is malformed or a field is invalid; do not retry
NOT_FOUND = "not_found"  # a named thing (session, dataset, episode, key) does not exist
UNSUPPORTED = "unsupported"  # the op or prompt kind is not offered by this service/backend
OVERLOADED = "overloaded"  # the work queue is full; retry after a pause
TIMEOUT = "timeout"  # the request's deadline passed before the work started
INTERNAL = "internal"  # the handler failed; the message says how
VERSION_MISMATCH = "version_mismatch"  # the peer speaks another protocol version
UNAVAILABLE = "unavailable"  # the service is shutting down; try another replica

CODES = frozenset(
    {
        BAD_REQUEST,
        NOT_FOUND,
        UNSUPPORTED,
        OVERLOADED,
        TIMEOUT,
        INTERNAL,
        VERSION_MISMATCH,
        UNAVAILABLE,
    }
)
RETRYABLE = frozenset({OVERLOADED, UNAVAILABLE})


class ServiceError(Exception):
    """An error a handler raises on purpose; it becomes an error reply with `code`."""

    code = INTERNAL

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        if code is not None:
            if code not in CODES:
                raise ValueError(f"code: unknown error code {code!r}; use one of {sorted(CODES)}")
            self.code = code
        self.message = message
        self.retryable = self.code in RETRYABLE if retryable is None else retryable

    def to_wire(self) -> dict:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class BadRequest(ServiceError):
    code = BAD_REQUEST


class NotFound(ServiceError):
    code = NOT_FOUND


class Unsupported(ServiceError):
    code = UNSUPPORTED


class Overloaded(ServiceError):
    code = OVERLOADED


class Timeout(ServiceError):
    code = TIMEOUT


class Internal(ServiceError):
    code = INTERNAL


class VersionMismatch(ServiceError):
    code = VERSION_MISMATCH


class RemoteError(Exception):
    """The service answered with an error reply. `code`, `message`, `retryable` come from it."""

    def __init__(
        self, code: str, message: str, retryable: bool = False, *, op: str = "", endpoint: str = ""
    ):
        where = f" from {op!r} at {endpoint}" if op or endpoint else ""
        super().__init__(f"[{code}]{where}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.op = op
        self.endpoint = endpoint


class ServiceUnavailable(Exception):
    """No replica answered in time (after the configured retries): the service, not the request, failed."""

    def __init__(self, message: str, *, endpoint: str = "", op: str = ""):
        super().__init__(message)
        self.endpoint = endpoint  # the replica that failed ("" when not known)
        self.op = op


class Stalled(ServiceUnavailable):
    """The replica answers, but the worker running the request made no progress within the
    stall window (a stuck or dead worker); `endpoint` names the replica."""
