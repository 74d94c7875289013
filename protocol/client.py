"""Client for mesh services: sync calls, pipelining, timeouts, Lazy Pirate retries, replicas.

Usage:
    c = Client(["tcp://127.0.0.1:5552", "tcp://127.0.0.1:5562"], timeout=30, contract=SAM)
    out = c.call("start_session", {"height": 480, "width": 640, "n_frames": 100})
    futs = [c.submit("put_frames", {...}) for chunk in chunks]   # several in flight
    for f in futs: f.result()
    c.close()

Each replica gets a DEALER socket (so several requests can be in flight; replies are matched
by id). Timing rules of one call (`timeout` T, `retries` R, `stall_s` S, `probe_s` P):

- Deadline: T is the whole call's time, owned by the caller: the call ends by submit time + T
  whatever happens inside; every retry below happens within it, and nothing multiplies it.
- Liveness, not silence of the reply: a request still unanswered after P seconds is asked
  about with the built-in `inflight` probe on the same socket (answered by the service's
  socket thread). "queued" or "running" keeps it alive; for a long-running op (contract)
  "running" counts only while its worker reports progress: no progress for S seconds fails
  the call as Stalled (naming the replica). An unanswered probe for S seconds means the
  replica is gone; an "unknown" answer means it lost the request (it restarted).
- Lost or gone, an idempotent request is re-sent (at most R times, within T) on a FRESH
  socket, possibly on another replica (zguide "Lazy Pirate": traffic still due on a socket
  that went quiet must not reach new requests); the replica that went quiet is skipped for a
  cool-off. The quiet socket is retired but stays open while other requests sent on it wait,
  so a silent spell does not fail or resend its neighbours. A reply to an earlier attempt of
  the same request is accepted (ids are unique per client). A request that is not idempotent
  is never re-sent: it fails with ServiceUnavailable.
- `overloaded` / `unavailable` replies (the service did no work) are resent after an
  exponential backoff (BACKOFF_S: 5 ms doubling to 500 ms), whichever future is being
  awaited, for as long as the resend is due before the deadline; then the call raises the
  RemoteError. Health checks (`ping()`, `info`) get no such resends: they report what they see.

An error reply raises RemoteError with its code. close() fails every unfinished call.
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
from .contract import Contract
from .errors import UNAVAILABLE, RemoteError, ServiceUnavailable, Stalled
from .server import DEFAULT_MAX_MSG_BYTES
from .wire import WireError, decode, encode, restamp_deadline
from .zio import POLLIN, poll, recv_parts, send_parts

log = logging.getLogger(__name__)

# A replica that timed out is skipped this long if others exist (doubling per failure, <= 16x).
COOL_OFF_S = 2.0
BACKOFF_S = (0.005, 0.5)  # first and largest pause between `overloaded` retries
HEALTH_OPS = frozenset({"ping", "info", "inflight"})  # built-ins: a retryable reply not resent
STALL_S = 25.0  # no sign of life (or, for a long op, of progress) this long: replica is lost;
# 25 s so that, with probe and scheduling delays, a dead or stuck replica is noticed in < 30 s
PROBE_S = 2.0  # ask about a request unanswered this long, then again at this interval

_DONE, _PENDING = "done", "pending"


def backoff_s(n: int) -> float:
    """The pause before resending after the n-th (1, 2, ...) `overloaded`/`unavailable` reply."""
    return min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** min(n - 1, 16))


class Future:
    """A request in flight. result() pumps the client's sockets until this one is answered."""

    __slots__ = ("client", "id", "op", "frames", "timeout", "idempotent", "retries", "backoff",
                 "attempts", "overloads", "replica", "sock", "expires", "deadline", "retry_at",
                 "long_running", "alive_until", "probe_at", "progress", "heard", "_value",
                 "_error", "state")  # fmt: skip

    def __init__(self, client: Client, rid: int, op: str, timeout: float, idempotent: bool,
                 retries: int, long_running: bool = False):  # fmt: skip
        self.client, self.id, self.op, self.frames = client, rid, op, []
        self.timeout, self.idempotent, self.retries = timeout, idempotent, retries
        self.long_running = long_running
        self.backoff = op not in HEALTH_OPS  # resend after `overloaded` / `unavailable`
        self.attempts = 0  # sends on a fresh socket so far (resends after `overloaded` not counted)
        self.overloads = 0
        self.replica: _Replica | None = None
        self.sock: zmq.Socket | None = None  # the socket the latest attempt went out on
        self.deadline = time.monotonic() + timeout  # the whole call's end (the caller's)
        self.alive_until = self.deadline  # the latest attempt is lost unless heard of by then
        self.expires = self.deadline  # min(alive_until, deadline)
        self.probe_at = self.deadline  # when to ask the replica about it next
        self.progress: tuple[int, int] | None = None  # (done, total) a long op reported
        self.heard = 0.0  # when the replica last answered a probe about this attempt
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
        self.sock: zmq.Socket | None = None  # where new requests go
        self.retired: list[zmq.Socket] = []  # went quiet; open while requests sent on it wait
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
        contract: Contract | None = None,
        stall_s: float = STALL_S,
        probe_s: float = PROBE_S,
    ):
        eps = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not eps:
            raise ValueError("endpoints: need at least one tcp://HOST:PORT")
        for e in eps:
            security.is_loopback(e)  # validates the address form
        if timeout <= 0:
            raise ValueError(f"timeout: must be > 0 seconds, got {timeout}")
        if not 0 < probe_s < stall_s:
            raise ValueError(f"probe_s, stall_s: need 0 < probe_s < stall_s, got {probe_s}, "
                             f"{stall_s}")  # fmt: skip
        self.stall_s, self.probe_s = float(stall_s), float(probe_s)
        self.name = name or eps[0]
        self.timeout = timeout
        self.retries = retries
        self.max_msg_bytes = max_msg_bytes
        self.contract = contract
        self._curve = (curve_server_key, curve_client_secret) if curve_server_key else None
        self._ctx = context or zmq.Context.instance()
        self._replicas = [_Replica(e) for e in eps]
        self._ids = itertools.count(1)
        self._rr = 0
        self._items: list[tuple[zmq.Socket, int]] = []  # poll list, kept as sockets come and go
        self._socks: dict[zmq.Socket, _Replica] = {}
        self._parked: list[Future] = []  # answered `overloaded`/`unavailable`: resent at retry_at
        self._probes: dict[int, tuple[zmq.Socket, list[Future]]] = {}  # probe id -> asked about
        self._closed = False

    # -- public API ---------------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        return [r.endpoint for r in self._replicas]

    def call(self, op: str, body: dict | None = None, *, timeout: float | None = None,
             idempotent: bool | None = None) -> dict:  # fmt: skip
        """Send one request and wait for its reply body. Raises RemoteError / ServiceUnavailable."""
        return self.submit(op, body, timeout=timeout, idempotent=idempotent).result()

    def idempotent(self, op: str) -> bool:
        """Whether `op` may be re-sent: the contract's table decides (no contract: only the
        built-in health checks)."""
        if self.contract is not None:
            return self.contract.idempotent(op)
        return op in HEALTH_OPS

    def submit(self, op: str, body: dict | None = None, *, timeout: float | None = None,
               idempotent: bool | None = None) -> Future:  # fmt: skip
        """Send a request now and return its Future (pipelining: submit several, then result()).

        Idempotency comes from the client's contract; `idempotent` is only for a client
        without one (a raw protocol client), and is refused next to a contract."""
        if self._closed:
            raise RuntimeError(f"client {self.name}: closed")
        if idempotent is None:
            idempotent = self.idempotent(op)
        elif self.contract is not None:
            raise TypeError(f"{op}: idempotency comes from the {self.contract.service} contract, "
                            "not from the caller; drop idempotent=")  # fmt: skip
        t = self.timeout if timeout is None else timeout
        if not t > 0:
            raise ValueError(f"timeout: must be > 0 seconds, got {t}")
        long_running = self.contract is not None and self.contract.long_running(op)
        fut = Future(self, next(self._ids), op, t, idempotent, self.retries, long_running)
        fut.frames = encode({"op": op, "id": fut.id, "deadline": float(t), "body": body or {}})
        self._send(fut)
        return fut

    def ping(self, timeout: float = 2.0) -> list[dict]:
        """Ping every replica once (no retries); returns each one's reply or raises."""
        out = []
        for r in self._replicas:
            fut = Future(self, next(self._ids), "ping", timeout, True, retries=0)
            fut.frames = encode({"op": "ping", "id": fut.id, "deadline": timeout, "body": {}})
            self._send(fut, replica=r)
            out.append(fut.result())
        return out

    def close(self) -> None:
        """Fail every unfinished call (ServiceUnavailable) and close the sockets."""
        self._closed = True
        waiting = self._parked + [f for r in self._replicas for f in r.pending.values()]
        self._parked = []
        for f in waiting:
            f._finish(error=ServiceUnavailable(f"{self.name}: client closed while {f.op!r} was in flight"))  # fmt: skip
        for r in self._replicas:
            r.pending.clear()
            for s in [*r.retired, r.sock]:
                self._close_socket(s)
            r.sock, r.retired = None, []

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

    def _close_socket(self, s: zmq.Socket | None) -> None:
        """Close a socket (linger 0): replies still in flight to it are lost."""
        if s is not None:
            del self._socks[s]
            self._items = [(x, POLLIN) for x in self._socks]
            for pid in [p for p, (ps, _) in self._probes.items() if ps is s]:
                del self._probes[pid]
            s.close(linger=0)

    def _prune(self, r: _Replica) -> None:
        """Close the replica's retired sockets that no request waits on any more."""
        if r.retired:
            used = {f.sock for f in r.pending.values()}
            for s in [s for s in r.retired if s not in used]:
                r.retired.remove(s)
                self._close_socket(s)

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

    def _send(self, fut: Future, replica: _Replica | None = None, attempt: bool = True) -> None:
        """(Re)send a request; `attempt` False for resends after `overloaded`/`unavailable`."""
        if self._closed:
            raise RuntimeError(f"client {self.name}: closed; {fut.op!r} not sent")
        r = replica or self._pick()
        fut.attempts += attempt
        fut.replica, fut.retry_at = r, None
        now = time.monotonic()
        if fut.op in HEALTH_OPS:  # answered by the socket thread: its own timeout says it all
            fut.alive_until = fut.probe_at = fut.deadline
        else:
            # a replica that just went silent must answer the first probe (a restarted one
            # does at once): no second full stall window per resend
            window = self.stall_s if r.failures == 0 else min(self.stall_s, 2 * self.probe_s + 0.5)
            fut.alive_until = now + window
            fut.probe_at = now + self.probe_s
        fut.heard = now
        fut.expires = min(fut.alive_until, fut.deadline)
        if fut.attempts > 1 or not attempt:  # a re-send carries the time the caller has left
            fut.frames[0] = restamp_deadline(fut.frames[0], max(fut.deadline - now, 1e-3))
        fut.sock = sock = self._socket(r)
        r.pending[fut.id] = fut
        send_parts(sock, [b"", *fut.frames])

    def _step(self, waiting: Future) -> None:
        """Wait a little for replies; probe, expire, and resend parked requests when due."""
        wake = waiting.retry_at if waiting.retry_at is not None else waiting.expires
        for r in self._replicas:
            for f in r.pending.values():
                if f.expires < wake:
                    wake = f.expires
                if f.probe_at < wake:
                    wake = f.probe_at
        for f in self._parked:
            if f.retry_at < wake:
                wake = f.retry_at
        self._poll(wake - time.monotonic())
        if waiting.state == _DONE:
            return
        now = time.monotonic()
        if self._parked:
            due = [f for f in self._parked if f.retry_at <= now]
            if due:
                self._parked = [f for f in self._parked if f.retry_at > now]
                for f in due:
                    self._send(f, attempt=False)
        for r in self._replicas:
            expired = [f for f in r.pending.values() if f.expires <= now]
            if expired:
                self._on_timeout(r, expired)
            ask = [f for f in r.pending.values() if f.probe_at <= now]
            if ask:
                self._probe(ask, now)

    def _probe(self, futs: list[Future], now: float) -> None:
        """Ask the replica (on each request's own socket) what became of these requests."""
        by_sock: dict[zmq.Socket, list[Future]] = {}
        for f in futs:
            f.probe_at = now + self.probe_s
            by_sock.setdefault(f.sock, []).append(f)
        for sock, group in by_sock.items():
            pid = next(self._ids)
            self._probes[pid] = (sock, group)
            frames = encode({"op": "inflight", "id": pid, "deadline": self.stall_s,
                             "body": {"ids": [f.id for f in group]}})  # fmt: skip
            send_parts(sock, [b"", *frames])

    def _on_probe(self, r: _Replica, sock: zmq.Socket, group: list[Future], head: dict) -> None:
        """What the replica said about requests in flight on `sock`: alive, stuck or lost."""
        now = time.monotonic()
        live = [
            f for f in group if f.state != _DONE and r.pending.get(f.id) is f and f.sock is sock
        ]
        body = head.get("body") if head.get("ok") else None
        if not isinstance(body, dict):  # a service without `inflight`: it answers, so it lives
            for f in live:
                f.alive_until = now + self.stall_s
                f.expires = min(f.alive_until, f.deadline)
            return
        known = {}
        for e in body.get("requests") or ():
            if isinstance(e, dict) and type(e.get("id")) is int:
                known[e["id"]] = e
        lost, stalled = [], []
        for f in live:
            e = known.get(f.id)
            if e is None:
                if f.id in (body.get("unknown") or ()):
                    lost.append(f)
                continue
            f.heard = now
            idle = e.get("idle_s")
            idle = float(idle) if type(idle) in (int, float) and idle >= 0 else 0.0
            if f.long_running and e.get("state") == "running":
                done, total = e.get("done"), e.get("total")
                if type(done) is int and type(total) is int:
                    f.progress = (done, total)
                f.alive_until = max(f.alive_until, now - idle + self.stall_s)
                if f.alive_until <= now:
                    stalled.append((f, idle))
            else:  # queued, or a short op at work: the replica holds it
                f.alive_until = now + self.stall_s
            f.expires = min(f.alive_until, f.deadline)
        if lost:
            for f in lost:
                del r.pending[f.id]
            self._lost(r, lost, f"{r.endpoint} no longer knows the request (restarted?)")
        for f, idle in stalled:
            self._stalled(r, f, idle)

    def _stalled(self, r: _Replica, f: Future, idle: float) -> None:
        """A long op whose worker stopped reporting progress: fail it, naming the replica."""
        del r.pending[f.id]
        r.failures += 1
        if len(self._replicas) > 1:
            r.down_until = time.monotonic() + COOL_OFF_S * 2 ** min(r.failures - 1, 4)
        done = (
            "" if not f.progress or not f.progress[1] else f" (at {f.progress[0]}/{f.progress[1]})"
        )
        msg = (f"{self.name}: {f.op!r} at {r.endpoint} made no progress for {idle:.1f}s{done} "
               f"(stall window {self.stall_s:.0f}s): the replica's worker is stuck or dead")  # fmt: skip
        log.warning("%s", msg)
        f._finish(error=Stalled(msg, endpoint=r.endpoint, op=f.op))
        self._prune(r)

    def _lost(self, r: _Replica, futs: list[Future], why: str) -> None:
        """Requests the replica lost or that went unheard of: resend the idempotent ones."""
        now = time.monotonic()
        for f in futs:
            if f.idempotent and f.attempts <= f.retries and now < f.deadline:
                self._send(f)
                continue
            if not f.idempotent:
                how = "not re-sent: the op is not idempotent"
            else:
                how = f"after {f.attempts} attempts"
            f._finish(error=ServiceUnavailable(f"{self.name}: {f.op!r}: {why} ({how})",
                                               endpoint=r.endpoint, op=f.op))  # fmt: skip
        self._prune(r)

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
        rid = head.get("id")
        if type(rid) is not int:  # ours are ints; None = the service could not read the request
            log.warning("%s: reply with id %r from %s dropped (error: %s)", self.name, rid,
                        r.endpoint, head.get("error"))  # fmt: skip
            return
        probe = self._probes.pop(rid, None)
        if probe is not None:
            self._on_probe(r, probe[0], probe[1], head)
            return
        fut = r.pending.pop(rid, None)
        if fut is None:
            return  # a stale reply to a request we already gave up on
        if r.retired:
            self._prune(r)
        r.failures, r.down_until = 0, 0.0
        if head.get("ok"):
            fut._finish(value=head.get("body") or {})
            return
        err = head.get("error")
        if not isinstance(err, dict):
            err = {"message": f"malformed error reply: {err!r}"}
        code = err.get("code", "internal")
        message = str(err.get("message", ""))
        if code == UNAVAILABLE and len(self._replicas) > 1:
            r.down_until = time.monotonic() + COOL_OFF_S  # shutting down: prefer the others
        if err.get("retryable") and fut.backoff:
            retry_at = time.monotonic() + backoff_s(fut.overloads + 1)
            if retry_at < fut.deadline:
                fut.overloads += 1
                fut.retry_at = retry_at
                self._parked.append(fut)
                return
            message += f" (resent {fut.overloads} times until the call's deadline)"
        fut._finish(error=RemoteError(code, message, bool(err.get("retryable")), op=fut.op,
                                      endpoint=r.endpoint))  # fmt: skip

    def _on_timeout(self, r: _Replica, expired: list[Future]) -> None:
        """The call's deadline passed, or nothing was heard of the request for stall_s.

        Unheard of (Lazy Pirate): retire the quiet socket, resend the idempotent requests on a
        fresh one; requests that have not expired keep waiting on the retired socket.
        """
        now = time.monotonic()
        late = [f for f in expired if f.deadline <= now]
        # the replica answers probes, yet the long op's progress stopped: its worker is stuck
        stuck = [f for f in expired if f.deadline > now and f.long_running
                 and f.heard > f.alive_until - self.stall_s + self.probe_s / 2]  # fmt: skip
        for f in stuck:
            self._stalled(r, f, now - (f.alive_until - self.stall_s))
        expired = [f for f in expired if f not in stuck]
        quiet = [f for f in expired if f.deadline > now]
        for f in expired:
            del r.pending[f.id]
        for f in late:
            f._finish(error=ServiceUnavailable(
                f"{self.name}: no reply to {f.op!r} from {r.endpoint} within the call's "
                f"deadline of {f.timeout:.1f}s (attempts: {f.attempts})",
                endpoint=r.endpoint, op=f.op))  # fmt: skip
        if not quiet:
            self._prune(r)
            return
        r.failures += 1
        if len(self._replicas) > 1:  # skip it for a while, longer after each silent spell
            r.down_until = now + COOL_OFF_S * 2 ** min(r.failures - 1, 4)
        retire = r.sock is not None and any(f.sock is r.sock for f in quiet)
        if retire:
            r.retired.append(r.sock)  # new requests go to a fresh socket
            r.sock = None
        log.warning("%s: %s silent for %.1fs (%s)%s", self.name, r.endpoint, self.stall_s,
                    ", ".join(f.op for f in quiet[:4]), "; socket retired" if retire else "")  # fmt: skip
        self._lost(r, quiet, f"{r.endpoint} was silent for {self.stall_s:.1f}s")
