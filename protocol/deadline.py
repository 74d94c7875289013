"""The deadline of the request a handler is serving: one way for every service to learn it.

Usage (inside a handler, or anything it calls on the same thread):
    from protocol import deadline
    left = deadline.left()              # seconds until the caller gives up; None = no deadline
    deadline.check("vlm openai: retry 2")   # DeadlineExceeded naming the deadline, if it passed

    with deadline.scope(time.monotonic() + 3.0):   # what the server does around a handler
        backend.bbox(image, "the cup")

The caller owns the deadline (protocol/README.md "one deadline per call"): the client sends
`deadline` = its call's timeout, the server (protocol/server.py) turns it into a monotonic time
and sets it here for the worker thread while the handler runs. Work that waits (HTTP calls to
a model server, back-off sleeps, retries) caps each wait by `left()` and does not start what it
cannot finish, so a 3 s call never holds a worker for the backend's own 25 s x 3 retries.
Dependency-free: backends import it without zmq.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "mesh_request_deadline", default=None
)


class DeadlineExceeded(TimeoutError):
    """The caller's deadline passed (or leaves no time for the next step)."""


def current() -> float | None:
    """The monotonic time the current request's caller stops waiting; None = no deadline."""
    return _DEADLINE.get()


def left(now: float | None = None) -> float | None:
    """Seconds until the current request's deadline (may be <= 0); None = no deadline."""
    d = _DEADLINE.get()
    if d is None:
        return None
    return d - (time.monotonic() if now is None else now)


def check(what: str) -> None:
    """Raise DeadlineExceeded naming `what` when the current request's deadline has passed."""
    t = left()
    if t is not None and t <= 0:
        raise DeadlineExceeded(f"{what}: the caller's deadline passed {-t:.2f}s ago; not started")


@contextlib.contextmanager
def scope(deadline: float | None) -> Iterator[None]:
    """Run the block under `deadline` (monotonic seconds; None = none); nests, restores."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


__all__ = ["DeadlineExceeded", "check", "current", "left", "scope"]
