"""Requests with retries and backoff, and how the orchestrator classifies failures.

Usage:
    policy = RetryPolicy.from_run(cfg.run)
    out = call(reader, "frames", body, policy=policy, stop=stop_event, stats=stats)

The protocol client already retries idempotent calls that get no reply (Lazy Pirate) and
`overloaded` replies. On top of that, a request that still fails with ServiceUnavailable or a
transient error code is retried here `request_retries` times, pausing backoff_s, 2x, 4x ...
(at most backoff_max_s). A whole episode is retried by the scheduler; `retryable()` says
whether retrying can help at all (a bad prompt will fail the same way again).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from protocol.client import Client
from protocol.errors import RemoteError, ServiceUnavailable

TRANSIENT_CODES = frozenset({"timeout", "overloaded", "unavailable"})
PERMANENT_CODES = frozenset({"bad_request", "unsupported", "version_mismatch"})


class Interrupted(Exception):
    """The run was asked to stop (Ctrl-C, --fail-fast); not an episode failure."""


class EpisodeRefused(Exception):
    """The episode's result must not be exported (e.g. stage B produced no gripper mask)."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2  # extra tries of a failed idempotent request
    backoff_s: float = 0.5  # first pause, doubled per try
    backoff_max_s: float = 10.0

    @classmethod
    def from_run(cls, run) -> RetryPolicy:
        return cls(run.request_retries, run.backoff_s, run.backoff_max_s)

    def pause(self, attempt: int) -> float:
        """Pause before retry number `attempt` (0-based)."""
        return min(self.backoff_max_s, self.backoff_s * 2**attempt)


@dataclass
class Stats:
    """Per-episode-attempt counters, filled by call()."""

    request_retries: int = 0


def retryable(exc: BaseException) -> bool:
    """Whether the same episode may succeed on another attempt."""
    if isinstance(exc, Interrupted | EpisodeRefused):
        return False
    if isinstance(exc, ServiceUnavailable):
        return True
    if isinstance(exc, RemoteError):
        return exc.code not in PERMANENT_CODES
    return False  # a bug or a validation error on our side: the same input fails again


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, ServiceUnavailable) or (
        isinstance(exc, RemoteError) and exc.code in TRANSIENT_CODES
    )


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
    policy: RetryPolicy,
    stop: threading.Event | None = None,
    stats: Stats | None = None,
    timeout: float | None = None,
) -> dict:
    """client.call with request-level retries (idempotent ops only) and backoff."""
    idempotent = client.idempotent(op)  # the service's contract decides
    attempt = 0
    while True:
        if stop is not None and stop.is_set():
            raise Interrupted("stopped")
        try:
            return client.call(op, body, timeout=timeout)
        except (RemoteError, ServiceUnavailable) as e:
            if not idempotent or not _transient(e) or attempt >= policy.retries:
                raise
        if stats is not None:
            stats.request_retries += 1
        wait(stop, policy.pause(attempt))
        attempt += 1


def describe_error(exc: BaseException) -> str:
    """One line for logs and the report."""
    if isinstance(exc, RemoteError | ServiceUnavailable | EpisodeRefused | Interrupted):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
