"""One call per request with one deadline, and how the orchestrator classifies failures.

Usage:
    out = call(reader, "frames", body, stop=stop_event, stats=stats)
    policy = RetryPolicy.from_run(cfg.run)      # pauses between episode attempts

One deadline per call, owned by the caller (the service's timeout_s, or propagate_timeout_s):
the protocol client re-sends, inside it, the idempotent requests a replica lost (it went
silent or restarted: protocol/README.md, liveness) and `overloaded` answers; a long op whose
worker stops reporting progress fails as Stalled within the stall window. Nothing here adds
retries on top. A failed episode is retried whole by the scheduler (run.episode_retries,
pausing backoff_s, 2x, ... at most backoff_max_s); `retryable()` says whether retrying can
help at all (a bad prompt fails the same way again).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from protocol.client import Client
from protocol.errors import RemoteError, ServiceUnavailable

PERMANENT_CODES = frozenset({"bad_request", "unsupported", "version_mismatch"})


class Interrupted(Exception):
    """The run was asked to stop (Ctrl-C, --fail-fast); not an episode failure."""


class EpisodeRefused(Exception):
    """The episode's result must not be exported (e.g. stage B produced no gripper mask)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Pauses between attempts of a failed episode."""

    backoff_s: float = 0.5  # first pause, doubled per try
    backoff_max_s: float = 10.0

    @classmethod
    def from_run(cls, run) -> RetryPolicy:
        return cls(run.backoff_s, run.backoff_max_s)

    def pause(self, attempt: int) -> float:
        """Pause before retry number `attempt` (0-based)."""
        return min(self.backoff_max_s, self.backoff_s * 2**attempt)


@dataclass
class Stats:
    """Per-episode-attempt counters, filled by call()."""

    request_retries: int = 0  # re-sends inside the client (lost requests, `overloaded`)


def retryable(exc: BaseException) -> bool:
    """Whether the same episode may succeed on another attempt."""
    if isinstance(exc, Interrupted | EpisodeRefused):
        return False
    if isinstance(exc, ServiceUnavailable):
        return True
    if isinstance(exc, RemoteError):
        return exc.code not in PERMANENT_CODES
    return False  # a bug or a validation error on our side: the same input fails again


def wait(stop: threading.Event | None, seconds: float) -> None:
    """Sleep that ends early (raising Interrupted) when `stop` is set."""
    if stop is None:
        threading.Event().wait(seconds)
    elif stop.wait(seconds):
        raise Interrupted("stopped")


def call(
    client: Client,
    op: str,
    body: dict,
    *,
    stop: threading.Event | None = None,
    stats: Stats | None = None,
    timeout: float | None = None,
) -> dict:
    """One request within one deadline (`timeout`, default the service's timeout_s).

    Retries happen inside the client, within that deadline (re-sends of idempotent ops the
    replica lost, `overloaded` backoff); nothing here multiplies them. Counts the re-sends."""
    if stop is not None and stop.is_set():
        raise Interrupted("stopped")
    if not hasattr(client, "submit"):  # a stand-in answering call() only (unit tests)
        return client.call(op, body, timeout=timeout)
    fut = client.submit(op, body, timeout=timeout)
    try:
        return fut.result()
    finally:
        if stats is not None:
            stats.request_retries += max(0, fut.attempts - 1) + fut.overloads


def describe_error(exc: BaseException) -> str:
    """One line for logs and the report."""
    if isinstance(exc, RemoteError | ServiceUnavailable | EpisodeRefused | Interrupted):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
