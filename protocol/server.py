"""Service runtime: a ROUTER socket thread in front of a bounded queue and worker threads.

Usage:
    svc = Service("reader", backend="zarr", capabilities={"codecs": [...]})

    @svc.op("frames", body=FramesReq)
    def frames(req: FramesReq) -> dict:
        return {"frames": arr}          # arrays travel out of band, zero-copy

    svc.serve("tcp://127.0.0.1:5551")    # blocks; SIGTERM drains and returns

The socket thread (the one that calls serve) only does IO: it decodes headers, answers the
built-in `ping` and `info` itself (so health checks answer even when workers are busy),
answers `timeout` for requests whose deadline passed, `overloaded` when the queue is full,
and hands the rest to `workers` threads. Workers put finished replies in an outbox and wake
the socket thread with an empty inproc message; it sends the frames without copying. A bad
message always gets an error reply, never a dead server. Plain REQ clients work (ROUTER
envelopes are kept).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import zmq

from . import errors, security
from .contract import BUILTIN_OPS, Contract
from .deadline import DeadlineExceeded
from .deadline import scope as deadline_scope
from .errors import ServiceError
from .schema import parse
from .wire import PROTOCOL_VERSION, WireError, decode, encode
from .zio import POLLIN, poll, recv_parts, send_parts, split_envelope

RUN_TOKEN_ENV = "MESH_RUN_TOKEN"  # a starter's token for this process, echoed by `info`

log = logging.getLogger(__name__)

DEFAULT_MAX_MSG_BYTES = 1 << 30  # 1 GiB per frame: a 100-frame 480x640x4 episode fits 8 times
POLL_MS = 100  # how often the socket thread looks at the stop flag
DRAIN_TIMEOUT_S = 30.0  # SIGTERM: how long in-flight work may take before we exit anyway


@dataclass(frozen=True)
class OpSpec:
    name: str
    fn: Callable[..., Any]  # fn(req), or fn(req, progress) for a long-running op
    body: type | None
    idempotent: bool
    long_running: bool = False
    raw: bool = False  # validate the body, hand the handler the dict


class _Job:
    """A request between the socket thread and a worker; workers update its progress."""

    __slots__ = ("key", "envelope", "msg_id", "op", "body", "deadline", "frames", "state",
                 "done", "total", "t_progress")  # fmt: skip

    def __init__(self, key: tuple, envelope: list, msg_id: Any, op: OpSpec, body: Any,
                 deadline: float | None, frames: list):  # fmt: skip
        self.key = key  # (routing frames, id): how the `inflight` probe finds it
        self.envelope, self.msg_id, self.op, self.body = envelope, msg_id, op, body
        self.deadline = deadline  # monotonic seconds, or None
        self.frames = frames  # keeps the received buffers alive until the reply is sent
        self.state = "queued"
        self.done = self.total = 0
        self.t_progress = time.monotonic()  # last sign of work: queued, started, progress

    def progress(self, done: int, total: int = 0) -> None:
        """Called by a long-running handler after each unit of work (frames done of total)."""
        self.done, self.total = int(done), int(total)
        self.t_progress = time.monotonic()


def _route(env: list) -> bytes:
    """The routing frames of an envelope as one key (the client's connection, via brokers)."""
    if len(env) <= 2:
        return env[0].bytes if isinstance(env[0], zmq.Frame) else bytes(env[0])
    return b"\0".join(f.bytes if isinstance(f, zmq.Frame) else bytes(f) for f in env)


def _error_frames(
    msg_id: Any, op: Any, code: str, message: str, retryable: bool | None = None
) -> list:
    if retryable is None:
        retryable = code in errors.RETRYABLE
    err = {"code": code, "message": message, "retryable": retryable}
    return encode({"id": msg_id if isinstance(msg_id, int) else None, "op": op if isinstance(op, str) else None,
                   "ok": False, "error": err})  # fmt: skip


class Service:
    """A named service: ops registered by name, served on one ROUTER socket."""

    def __init__(
        self,
        name: str,
        *,
        backend: str = "",
        version: str = "0.1.0",
        capabilities: dict | None = None,
        workers: int = 1,
        queue_size: int = 64,
        versions: dict[str, str] | None = None,
        contract: Contract | None = None,
    ):
        if workers < 1:
            raise ValueError(f"workers: must be >= 1, got {workers}")
        if queue_size < 1:
            raise ValueError(f"queue_size: must be >= 1, got {queue_size}")
        self.name = name
        self.backend = backend
        self.version = version
        self.capabilities = dict(capabilities or {})
        self.workers = workers
        self.queue_size = queue_size
        self.extra_versions = dict(versions or {})
        self.contract = contract
        self.ops: dict[str, OpSpec] = {}
        self._info_hooks: list[Callable[[], dict]] = []
        self._close_hooks: list[Callable[[], None]] = []
        # Jobs for the workers. A SimpleQueue (C, lock-free for the producer) is several times
        # cheaper than queue.Queue; the bound is kept by counting: _submitted is written only by
        # the socket thread, _taken only under _lock by workers.
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # remade by serve()
        self._outbox: collections.deque[tuple] = collections.deque()  # (job key, reply frames)
        # Requests accepted and not yet answered, by (routing frames, id): what the `inflight`
        # probe reports. Only the socket thread adds and removes; workers update the jobs.
        self._jobs: dict[tuple, _Job] = {}
        self._submitted = 0
        self._taken = 0
        self._in_flight = 0
        self._served_io = 0  # answered on the socket thread (ping, info, errors); only it writes
        self._served = 0  # answered by workers, under _lock
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self.endpoint: str | None = None  # the bound address, once serving

    # -- registration -----------------------------------------------------------------
    def op(self, name: str, *, raw: bool = False):
        """Register the handler of contract op `name`: fn(req), or fn(req, progress) where
        the op is long-running (progress(done, total) after each unit of work). `raw`: the
        body is validated against the request struct but handed over as the dict received
        (for test doubles)."""
        if name in BUILTIN_OPS or name in self.ops:
            raise ValueError(f"op {name!r} is already registered ({BUILTIN_OPS} are built in)")
        if self.contract is None:
            raise ValueError(f"{self.name}: Service(contract=...) is needed to register ops")
        spec = self.contract.op(name)

        def deco(fn):
            self.ops[name] = OpSpec(name, fn, spec.request, spec.idempotent, spec.long_running, raw)
            return fn

        return deco

    def check_contract(self) -> None:
        """Every op of the contract has a handler (the services' tests call it); an op
        without one is answered `unsupported`."""
        if self.contract is not None:
            missing = sorted(set(self.contract.ops) - set(self.ops))
            if missing:
                raise ValueError(f"{self.name}: no handler for contract op(s) {missing}")

    def add_info(self, fn: Callable[[], dict]) -> None:
        self._info_hooks.append(fn)

    def on_close(self, fn: Callable[[], None]) -> None:
        self._close_hooks.append(fn)

    # -- built-ins ----------------------------------------------------------------------
    def info(self) -> dict:
        out = {
            "service": self.name,
            "backend": self.backend,
            "version": self.version,
            "protocol_version": PROTOCOL_VERSION,
            "versions": {
                "python": sys.version.split()[0],
                "numpy": np.__version__,
                "pyzmq": zmq.__version__,
                "libzmq": zmq.zmq_version(),
                "msgpack": ".".join(map(str, msgpack.version)),
                **self.extra_versions,
            },
            "capabilities": self.capabilities,
            "ops": {n: self.contract.op(n).describe() for n in self.ops} if self.contract else {},
            "endpoint": self.endpoint,
            "pid": os.getpid(),
            # Set by the starter (tools/launch.py: make up) so it can tell its own process
            # from another one answering on the same port.
            "run_token": os.environ.get(RUN_TOKEN_ENV),
            "uptime_s": round(time.monotonic() - self._started, 3),
            "requests_served": self._served + self._served_io,
            "queue_depth": self.queue_depth,
            "in_flight": self._in_flight,
            "workers": self.workers,
            "queue_size": self.queue_size,
        }
        for hook in self._info_hooks:
            try:
                out.update(hook())
            except Exception as e:  # an info hook must never take `info` down
                out.setdefault("info_errors", []).append(f"{type(e).__name__}: {e}")
        return out

    @property
    def queue_depth(self) -> int:
        """Requests accepted but not yet picked up by a worker."""
        return self._submitted - self._taken

    # -- serving ------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def serve(
        self,
        bind: str = "tcp://127.0.0.1:0",
        *,
        insecure: bool = False,
        curve_secret: str | None = None,
        curve_clients: str | None = None,
        max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES,
        ready: Callable[[str], None] | None = None,
        install_signals: bool = True,
    ) -> None:
        """Bind and serve until SIGTERM/SIGINT (or request_stop()); then drain and return."""
        security.check_bind(bind, curve=curve_secret is not None, insecure=insecure)
        if self.workers < 1 or self.queue_size < 1:
            raise ValueError(
                f"workers and queue_size: must be >= 1, got {self.workers} and {self.queue_size}"
            )
        self._queue = queue.SimpleQueue()
        self._outbox = collections.deque()
        self._jobs = {}
        self._submitted = self._taken = 0
        self._stop.clear()
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.MAXMSGSIZE, max_msg_bytes)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a vanished client's reply is dropped quietly
        auth = None
        if curve_secret is not None:
            auth = security.curve_server(
                sock, security.ServerKeys.load(curve_secret), authorized_dir=curve_clients, ctx=ctx
            )
        if bind.endswith(":0"):
            port = sock.bind_to_random_port(bind.rsplit(":", 1)[0])
            self.endpoint = f"{bind.rsplit(':', 1)[0]}:{port}"
        else:
            sock.bind(bind)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        inproc = f"inproc://replies-{id(self)}"
        replies = ctx.socket(zmq.PULL)
        replies.bind(inproc)
        threads = [
            threading.Thread(
                target=self._worker, args=(ctx, inproc), name=f"{self.name}-worker-{i}", daemon=True
            )
            for i in range(self.workers)
        ]
        for t in threads:
            t.start()
        old = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, lambda *_: self._stop.set())
        log.info("%s (%s) serving on %s with %d worker(s), queue %d", self.name, self.backend,
                 self.endpoint, self.workers, self.queue_size)  # fmt: skip
        if ready is not None:
            ready(self.endpoint)
        try:
            self._loop(sock, replies)
            self._drain(sock, replies, threads)
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
            for hook in self._close_hooks:
                try:
                    hook()
                except Exception:
                    log.exception("close hook failed")
            replies.close(0)
            sock.close(linger=2000)
            if auth is not None:
                auth.stop()
            stuck = [t.name for t in threads if t.is_alive()]
            if stuck:  # their sockets stay open, so ctx.term() would wait for them forever
                log.warning("%s: %s still busy after %.0f s; exiting without them", self.name,
                            ", ".join(stuck), DRAIN_TIMEOUT_S)  # fmt: skip
            else:
                ctx.term()
            log.info("%s stopped after %d requests", self.name, self._served + self._served_io)

    def _loop(self, sock: zmq.Socket, replies: zmq.Socket) -> None:
        # One message per ready socket per poll: a sync request costs one poll and one recv
        # (no failing NOBLOCK recv to end a burst), and bursts still drain at poll(0) speed.
        items = [(sock, POLLIN), (replies, POLLIN)]
        stop = self._stop
        while not stop.is_set():
            for s, _ in poll(items, POLL_MS):
                try:
                    if s is replies:
                        self._forward_reply(sock, replies)
                    else:
                        self._on_request(sock, recv_parts(sock))
                except Exception:  # never let one message take the socket thread down
                    log.exception("%s: socket thread error (message dropped)", self.name)

    def _forward_reply(self, sock: zmq.Socket, replies: zmq.Socket) -> None:
        """One wake-up from a worker = one finished reply waiting in the outbox: send it."""
        replies.recv(0, True)  # the empty wake-up frame
        key, frames = self._outbox.popleft()
        send_parts(sock, frames)
        self._jobs.pop(key, None)

    def _forward_replies(self, sock: zmq.Socket, replies: zmq.Socket) -> None:
        while poll([(replies, POLLIN)], 0):
            self._forward_reply(sock, replies)

    def _drain(
        self, sock: zmq.Socket, replies: zmq.Socket, threads: list[threading.Thread]
    ) -> None:
        """Stop taking work, let queued and in-flight requests finish, send their replies."""
        log.info("%s: stopping; draining %d queued, %d in flight", self.name, self.queue_depth,
                 self._in_flight)  # fmt: skip
        for _ in threads:
            self._queue.put(None)  # after the queued jobs: workers finish those first
        end = time.monotonic() + DRAIN_TIMEOUT_S
        items = [(replies, POLLIN), (sock, POLLIN)]
        while any(t.is_alive() for t in threads) and time.monotonic() < end:
            for s, _ in poll(items, 50):
                if s is replies:
                    self._forward_reply(sock, replies)
                    continue
                # A new request during the drain: tell it to go elsewhere (retryable).
                env, payload = split_envelope(recv_parts(sock))
                msg_id = op = None
                try:
                    head = decode(payload)
                    msg_id, op = head.get("id"), head.get("op")
                    if op == "inflight":  # the requests being drained are still at work
                        self._answer_inflight(sock, env, msg_id, head.get("body"))
                        continue
                except WireError as e:
                    msg_id, op = e.msg_id, e.op
                except Exception:
                    pass
                send_parts(sock, env + _error_frames(msg_id, op, errors.UNAVAILABLE,
                                    f"{self.name} is shutting down; try another replica"))  # fmt: skip
        self._forward_replies(sock, replies)

    def _reply_error(self, sock: zmq.Socket, env: list, msg_id: Any, op: Any, code: str,
                     message: str) -> None:  # fmt: skip
        self._served_io += 1
        send_parts(sock, env + _error_frames(msg_id, op, code, message))

    def _answer_inflight(self, sock: zmq.Socket, env: list, msg_id: Any, body: Any) -> None:
        """Built-in `inflight {ids}`: what became of this client's requests (same socket)."""
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or len(ids) > 100_000 or any(type(i) is not int for i in ids):
            return self._reply_error(sock, env, msg_id, "inflight", errors.BAD_REQUEST,
                                     "ids: expected a list of request ids (ints) sent on this "
                                     "connection")  # fmt: skip
        route, now, jobs = _route(env), time.monotonic(), self._jobs
        found, unknown = [], []
        for i in ids:
            job = jobs.get((route, i))
            if job is None:
                unknown.append(i)
            else:
                found.append({"id": i, "state": job.state, "done": job.done, "total": job.total,
                              "idle_s": round(now - job.t_progress, 3)})  # fmt: skip
        out = encode({"id": msg_id, "op": "inflight", "ok": True,
                      "body": {"requests": found, "unknown": unknown}})  # fmt: skip
        send_parts(sock, env + out)

    def _on_request(self, sock: zmq.Socket, msg: list) -> None:
        env, payload = split_envelope(msg)
        if not payload:  # routing frames and a delimiter, no message: answer so a REQ is not stuck
            return self._reply_error(sock, env, None, None, errors.BAD_REQUEST,
                                     "empty message: no frames after the envelope delimiter; "
                                     "send frame 0 (prefix + header) after it")  # fmt: skip
        try:
            head = decode(payload)
        except WireError as e:
            return self._reply_error(sock, env, e.msg_id, e.op, e.code, e.message)
        except Exception as e:  # a decoder bug must not take the socket thread down
            log.exception("%s: decoding a request failed", self.name)
            return self._reply_error(sock, env, None, None, errors.INTERNAL,
                                     f"decoding failed: {type(e).__name__}: {e}")  # fmt: skip
        msg_id, op_name = head.get("id"), head.get("op")
        if not isinstance(op_name, str):
            return self._reply_error(sock, env, msg_id, None, errors.BAD_REQUEST,
                                     f"op: missing or not a string (got {op_name!r}); "
                                     f"send the op name, e.g. \"ping\"")  # fmt: skip
        if not (msg_id is None or (type(msg_id) is int)):
            return self._reply_error(sock, env, None, op_name, errors.BAD_REQUEST,
                                     f"id: must be an integer, got {type(msg_id).__name__}")  # fmt: skip
        deadline = head.get("deadline")
        if deadline is not None:
            if type(deadline) not in (int, float) or deadline != deadline:
                return self._reply_error(sock, env, msg_id, op_name, errors.BAD_REQUEST,
                                         "deadline: must be a number of seconds (the time the "
                                         "client still waits), or absent")  # fmt: skip
            if deadline <= 0:
                return self._reply_error(sock, env, msg_id, op_name, errors.TIMEOUT,
                                         "deadline already passed when the request arrived; "
                                         "work not done")  # fmt: skip
            deadline = time.monotonic() + deadline
        spec = self.ops.get(op_name)
        if spec is None:
            if op_name == "ping":
                self._served_io += 1
                out = encode({"id": msg_id, "op": "ping", "ok": True,
                              "body": {"service": self.name}})  # fmt: skip
                return send_parts(sock, env + out)
            if op_name == "inflight":
                return self._answer_inflight(sock, env, msg_id, head.get("body"))
            if op_name == "info":
                try:
                    out = encode({"id": msg_id, "op": "info", "ok": True, "body": self.info()})
                except TypeError as e:  # an add_info hook returned something msgpack cannot carry
                    return self._reply_error(sock, env, msg_id, op_name, errors.INTERNAL,
                                             f"info: {e}")  # fmt: skip
                self._served_io += 1
                return send_parts(sock, env + out)
            known = ", ".join(sorted(["ping", "info", *self.ops]))
            return self._reply_error(sock, env, msg_id, op_name, errors.UNSUPPORTED,
                                     f"op {op_name!r} is not offered by {self.name}; ops: {known}")  # fmt: skip
        if self._submitted - self._taken >= self.queue_size:
            return self._reply_error(sock, env, msg_id, op_name, errors.OVERLOADED,
                                     f"{self.name}: queue full ({self.queue_size} waiting); "
                                     f"retry later or add a replica")  # fmt: skip
        self._submitted += 1
        key = (_route(env), msg_id)
        job = _Job(key, env, msg_id, spec, head.get("body"), deadline, payload)
        if msg_id is not None:
            self._jobs[key] = job
        self._queue.put(job)

    def _worker(self, ctx: zmq.Context, inproc: str) -> None:
        # A finished reply goes into the outbox (a deque: thread-safe append/popleft) and an
        # empty frame on the inproc PUSH wakes the socket thread, which sends it. Passing the
        # frames themselves through inproc would cost a second multipart send and receive.
        wake = ctx.socket(zmq.PUSH)
        wake.setsockopt(zmq.LINGER, 0)
        wake.connect(inproc)
        lock, outbox = self._lock, self._outbox
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                with lock:
                    self._taken += 1
                    self._in_flight += 1
                job.state, job.t_progress = "running", time.monotonic()
                try:
                    frames = self._run(job)
                finally:
                    with lock:
                        self._in_flight -= 1
                        self._served += 1
                outbox.append((job.key, job.envelope + frames))
                wake.send(b"", 0, True)
                job = frames = None  # drop references to the request's buffers promptly
        finally:
            wake.close()

    def _run(self, job: _Job) -> list:
        name = job.op.name
        if job.deadline is not None and time.monotonic() > job.deadline:
            return _error_frames(job.msg_id, name, errors.TIMEOUT,
                                 "deadline passed while the request waited in the queue; work not done")  # fmt: skip
        try:
            op = job.op
            arg = parse(op.body, job.body) if op.body is not None else job.body
            if op.raw:
                arg = job.body if job.body is not None else {}
            with deadline_scope(job.deadline):  # protocol.deadline.left() in the handler
                result = job.op.fn(arg, job.progress) if job.op.long_running else job.op.fn(arg)
            if result is None:
                result = {}
            return encode({"id": job.msg_id, "op": name, "ok": True, "body": result})
        except ServiceError as e:
            return _error_frames(job.msg_id, name, e.code, e.message, e.retryable)
        except DeadlineExceeded as e:  # the handler stopped at the caller's deadline
            return _error_frames(job.msg_id, name, errors.TIMEOUT, str(e))
        except Exception as e:
            log.exception("%s: op %s failed", self.name, name)
            return _error_frames(job.msg_id, name, errors.INTERNAL, f"{type(e).__name__}: {e}")
