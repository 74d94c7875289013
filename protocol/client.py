"""Client for mesh services: sync calls, pipelining, timeouts, Lazy Pirate retries, replicas.

Usage:
    c = Client(["tcp://127.0.0.1:5552", "tcp://127.0.0.1:5562"], timeout=30, retries=3)
    out = c.call("start_session", {"height": 480, "width": 640, "n_frames": 100}, idempotent=False)
    futs = [c.submit("put_frames", {...}) for chunk in chunks]   # several in flight
    for f in futs: f.result()
    c.close()

Each replica gets a DEALER socket (so several requests can be in flight; replies are matched
by id). A call that gets no reply within its timeout is retried on a FRESH socket, possibly on
another replica, if the op is idempotent (zguide "Lazy Pirate": a socket left waiting on a
dead peer would deliver stale traffic later, so it is closed with linger 0 and remade); the
replica that went quiet is skipped for a cool-off. After `retries` the call raises
ServiceUnavailable. An error reply raises RemoteError with its code; `overloaded` and
`unavailable` replies are retried with exponential backoff (the server did not do the work).

A Client is not thread-safe: give each thread its own (they are cheap).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any

import zmq

from . import security
from .errors import UNAVAILABLE, RemoteError, ServiceUnavailable
from .server import DEFAULT_MAX_MSG_BYTES
from .wire import WireError, decode, encode
from .zio import POLLIN, poll, recv_parts, send_parts

log = logging.getLogger(__name__)

# A replica that timed out is skipped this long if others exist (doubling per failure, <= 16x).
COOL_OFF_S = 2.0
BACKOFF_S = (0.005, 0.5)  # first and largest pause between `overloaded` retries
OVERLOAD_RETRIES = 200  # `overloaded` replies tolerated per call before giving up

_DONE, _PENDING = "done", "pending"


class Future:
    """A request in flight. result() pumps the client's sockets until this one is answered."""

    __slots__ = ("client", "id", "op", "frames", "timeout", "idempotent", "attempts", "overloads",
                 "replica", "expires", "retry_at", "_value", "_error", "state")  # fmt: skip

    def __init__(
        self, client: Client, rid: int, op: str, frames: list, timeout: float, idempotent: bool
    ):
        self.client, self.id, self.op, self.frames = client, rid, op, frames
        self.timeout, self.idempotent = timeout, idempotent
        self.attempts = 0  # sends so far
        self.overloads = 0
        self.replica: _Replica | None = None
        self.expires = 0.0
        self.retry_at: float | None = None  # set while waiting out a backoff
        self._value: Any = None
        self._error: BaseException | None = None
        self.state = _PENDING

    def done(self) -> bool:
        return self.state == _DONE

    def result(self) -> dict:
        while self.state != _DONE:
            self.client._step(self)
        if self._error is not None:
            raise self._error
        return self._value

    def _finish(self, value: Any = None, error: BaseException | None = None) -> None:
        self.state, self._value, self._error = _DONE, value, error
        self.frames = []  # release the request's buffers


class _Replica:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.sock: zmq.Socket | None = None
        self.pending: dict[int, Future] = {}
        self.down_until = 0.0
        self.failures = 0


class Client:
    def __init__(
        self,
        endpoints: str | Iterable[str],
        *,
        timeout: float = 30.0,
        retries: int = 3,
        name: str | None = None,
        curve_server_key: str | bytes | None = None,
        curve_client_secret: str | None = None,
        max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES,
        context: zmq.Context | None = None,
    ):
        eps = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not eps:
            raise ValueError("endpoints: need at least one tcp://HOST:PORT")
        for e in eps:
            security.is_loopback(e)  # validates the address form
        if timeout <= 0:
            raise ValueError(f"timeout: must be > 0 seconds, got {timeout}")
        self.name = name or eps[0]
        self.timeout = timeout
        self.retries = retries
        self.max_msg_bytes = max_msg_bytes
        self._curve = (curve_server_key, curve_client_secret) if curve_server_key else None
        self._ctx = context or zmq.Context.instance()
        self._replicas = [_Replica(e) for e in eps]
        self._ids = itertools.count(1)
        self._rr = 0
        self._items: list[tuple[zmq.Socket, int]] = []  # poll list, kept as sockets come and go
        self._socks: dict[zmq.Socket, _Replica] = {}
        self._closed = False

    # -- public API ---------------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        return [r.endpoint for r in self._replicas]

    def call(self, op: str, body: dict | None = None, *, timeout: float | None = None,
             idempotent: bool = True) -> dict:  # fmt: skip
        """Send one request and wait for its reply body. Raises RemoteError / ServiceUnavailable."""
        return self.submit(op, body, timeout=timeout, idempotent=idempotent).result()

    def submit(self, op: str, body: dict | None = None, *, timeout: float | None = None,
               idempotent: bool = True) -> Future:  # fmt: skip
        """Send a request now and return its Future (pipelining: submit several, then result())."""
        if self._closed:
            raise RuntimeError(f"client {self.name}: closed")
        t = self.timeout if timeout is None else timeout
        rid = next(self._ids)
        fut = Future(self, rid, op, [], t, idempotent)
        fut.frames = encode({"op": op, "id": rid, "deadline": t, "body": body or {}})
        self._send(fut)
        return fut

    def ping(self, timeout: float = 2.0) -> list[dict]:
        """Ping every replica once (no retries); returns each one's reply or raises."""
        out = []
        for r in self._replicas:
            fut = Future(self, next(self._ids), "ping", [], timeout, True)
            fut.frames = encode({"op": "ping", "id": fut.id, "deadline": timeout, "body": {}})
            fut.attempts = self.retries  # no retry: a health check reports what it sees
            self._send(fut, replica=r)
            out.append(fut.result())
        return out

    def close(self) -> None:
        for r in self._replicas:
            for f in list(r.pending.values()):
                f._finish(
                    error=ServiceUnavailable(
                        f"{self.name}: client closed while {f.op!r} was in flight"
                    )
                )
            r.pending.clear()
            self._drop_socket(r)
        self._closed = True

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------
    def _socket(self, r: _Replica) -> zmq.Socket:
        if r.sock is None:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, self.max_msg_bytes)
            if self._curve:
                security.curve_client(s, server_public=self._curve[0], client_secret=self._curve[1])
            s.connect(r.endpoint)
            r.sock = s
            self._socks[s] = r
            self._items = [(x, POLLIN) for x in self._socks]
        return r.sock

    def _drop_socket(self, r: _Replica) -> None:
        """Close a replica's socket (linger 0): replies still in flight to it are lost."""
        if r.sock is not None:
            del self._socks[r.sock]
            self._items = [(x, POLLIN) for x in self._socks]
            r.sock.close(linger=0)
            r.sock = None

    def _pick(self) -> _Replica:
        reps = self._replicas
        if len(reps) == 1:
            return reps[0]
        now = time.monotonic()
        live = [r for r in reps if r.down_until <= now] or reps
        self._rr += 1
        n = len(live)
        # least loaded first; ties go round-robin so idle replicas share sequential calls
        return min((live[(self._rr + i) % n] for i in range(n)), key=lambda r: len(r.pending))

    def _send(self, fut: Future, replica: _Replica | None = None) -> None:
        r = replica or self._pick()
        fut.attempts += 1
        fut.replica, fut.retry_at = r, None
        fut.expires = time.monotonic() + fut.timeout
        r.pending[fut.id] = fut
        send_parts(self._socket(r), [b"", *fut.frames])

    def _step(self, waiting: Future) -> None:
        """Wait a little for replies; handle timeouts and due retries."""
        wake = waiting.retry_at if waiting.retry_at is not None else waiting.expires
        for r in self._replicas:
            for f in r.pending.values():
                if f.expires < wake:
                    wake = f.expires
        self._poll(wake - time.monotonic())
        if waiting.state == _DONE:
            return
        now = time.monotonic()
        if waiting.retry_at is not None and now >= waiting.retry_at:
            self._send(waiting)
        for r in self._replicas:
            expired = [f for f in r.pending.values() if f.expires <= now]
            if expired:
                self._on_timeout(r, expired)

    def _poll(self, wait_s: float) -> None:
        # One message per ready socket per poll: a sync call is one poll + one recv, and the
        # caller loops (polling again at once) until its own reply is in.
        ms = int(wait_s * 1000) + 1 if wait_s > 0 else 0
        for sock, _ in poll(self._items, ms):
            r = self._socks.get(sock)
            if r is not None:
                self._on_reply(r, recv_parts(sock))

    def _on_reply(self, r: _Replica, msg: list) -> None:
        payload = msg[1:] if msg and len(msg[0]) == 0 else msg
        try:
            head = decode(payload)
        except WireError as e:
            log.warning("%s: undecodable reply from %s dropped: %s", self.name, r.endpoint, e)
            return
        fut = r.pending.pop(head.get("id"), None)
        if fut is None:
            return  # a stale reply to a request we already gave up on
        r.failures, r.down_until = 0, 0.0
        if head.get("ok"):
            fut._finish(value=head.get("body") or {})
            return
        err = head.get("error")
        if not isinstance(err, dict):
            err = {"message": f"malformed error reply: {err!r}"}
        code = err.get("code", "internal")
        if code == UNAVAILABLE and len(self._replicas) > 1:
            r.down_until = time.monotonic() + COOL_OFF_S  # shutting down: prefer the others
        if err.get("retryable") and fut.overloads < OVERLOAD_RETRIES:
            fut.overloads += 1
            fut.retry_at = time.monotonic() + min(
                BACKOFF_S[1], BACKOFF_S[0] * 2 ** min(fut.overloads, 10)
            )
            fut.expires = fut.retry_at + fut.timeout
            fut.attempts -= 1  # overload retries do not use up the timeout retries
            return
        fut._finish(error=RemoteError(code, str(err.get("message", "")), bool(err.get("retryable")),
                                      op=fut.op, endpoint=r.endpoint))  # fmt: skip

    def _on_timeout(self, r: _Replica, expired: list[Future]) -> None:
        """Lazy Pirate: close the socket, remake it, resend idempotent requests."""
        r.failures += 1
        if len(self._replicas) > 1:  # skip it for a while, longer after each silent spell
            r.down_until = time.monotonic() + COOL_OFF_S * 2 ** min(r.failures - 1, 4)
        orphans = list(r.pending.values())  # the fresh socket cannot receive their replies
        r.pending.clear()
        self._drop_socket(r)
        log.warning("%s: no reply from %s within %.1fs (%s); socket reset", self.name, r.endpoint,
                    expired[0].timeout, ", ".join(f.op for f in expired[:4]))  # fmt: skip
        for f in orphans:
            if f.idempotent and f.attempts <= self.retries:
                self._send(f)
            else:
                why = (
                    "not retried: the op is not idempotent"
                    if not f.idempotent
                    else f"after {f.attempts} attempts"
                )
                f._finish(
                    error=ServiceUnavailable(
                        f"{self.name}: no reply to {f.op!r} from {r.endpoint} within {f.timeout:.1f}s ({why})"
                    )
                )
