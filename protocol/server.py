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
and hands the rest to `workers` threads. Workers send replies back over an inproc socket;
the socket thread forwards their frames without copying. A bad message always gets an
error reply, never a dead server. Plain REQ clients work (ROUTER envelopes are kept).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from . import errors, security
from .errors import ServiceError
from .schema import describe, parse
from .wire import PROTOCOL_VERSION, WireError, decode, encode

log = logging.getLogger(__name__)

DEFAULT_MAX_MSG_BYTES = 1 << 30  # 1 GiB per frame: a 100-frame 480x640x4 episode fits 8 times
POLL_MS = 100  # how often the socket thread looks at the stop flag
DRAIN_TIMEOUT_S = 30.0  # SIGTERM: how long in-flight work may take before we exit anyway


@dataclass(frozen=True)
class OpSpec:
    name: str
    fn: Callable[[Any], Any]
    body: type | None
    idempotent: bool


@dataclass
class _Job:
    envelope: list
    msg_id: Any
    op: OpSpec
    body: Any
    deadline: float | None  # monotonic seconds, or None
    frames: list = field(repr=False)  # keeps the received buffers alive until the reply is sent


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
        self.ops: dict[str, OpSpec] = {}
        self._info_hooks: list[Callable[[], dict]] = []
        self._close_hooks: list[Callable[[], None]] = []
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)  # remade by serve()
        self._in_flight = 0
        self._served = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self.endpoint: str | None = None  # the bound address, once serving

    # -- registration -----------------------------------------------------------------
    def op(self, name: str, *, body: type | None = None, idempotent: bool = True):
        """Register a handler. `body` is a @message class (or None for a raw dict)."""
        if name in ("ping", "info") or name in self.ops:
            raise ValueError(f"op {name!r} is already registered (ping and info are built in)")

        def deco(fn):
            self.ops[name] = OpSpec(name, fn, body, idempotent)
            return fn

        return deco

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
            "ops": {
                n: {"idempotent": s.idempotent, "body": describe(s.body) if s.body else None}
                for n, s in self.ops.items()
            },  # fmt: skip
            "endpoint": self.endpoint,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started, 3),
            "requests_served": self._served,
            "queue_depth": self._queue.qsize(),
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
        self._queue = queue.Queue(maxsize=self.queue_size)
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
            ctx.term()
            log.info("%s stopped after %d requests", self.name, self._served)

    def _loop(self, sock: zmq.Socket, replies: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(replies, zmq.POLLIN)
        while not self._stop.is_set():
            events = dict(poller.poll(POLL_MS))
            if replies in events:
                self._forward_replies(sock, replies)
            if sock in events:
                for _ in range(64):  # bounded burst, then look at replies again
                    try:
                        msg = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_request(sock, msg)

    def _forward_replies(self, sock: zmq.Socket, replies: zmq.Socket) -> None:
        while True:
            try:
                out = replies.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            sock.send_multipart(out, copy=False)

    def _drain(
        self, sock: zmq.Socket, replies: zmq.Socket, threads: list[threading.Thread]
    ) -> None:
        """Stop taking work, let queued and in-flight requests finish, send their replies."""
        log.info(
            "%s: stopping; draining %d queued, %d in flight",
            self.name,
            self._queue.qsize(),
            self._in_flight,
        )
        for _ in threads:
            self._queue.put(None)  # after the queued jobs: workers finish those first
        end = time.monotonic() + DRAIN_TIMEOUT_S
        poller = zmq.Poller()
        poller.register(replies, zmq.POLLIN)
        poller.register(sock, zmq.POLLIN)
        while any(t.is_alive() for t in threads) and time.monotonic() < end:
            events = dict(poller.poll(50))
            if replies in events:
                self._forward_replies(sock, replies)
            if sock in events:  # new requests during the drain: tell them to go elsewhere
                while True:
                    try:
                        msg = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    env, payload = _split_envelope(msg)
                    if payload:
                        sock.send_multipart(env + _error_frames(None, None, errors.UNAVAILABLE,
                                                                f"{self.name} is shutting down"), copy=False)  # fmt: skip
        self._forward_replies(sock, replies)

    def _on_request(self, sock: zmq.Socket, msg: list) -> None:
        env, payload = _split_envelope(msg)
        if not payload:
            return  # an envelope with nothing in it: nothing to answer
        try:
            head = decode(payload)
        except WireError as e:
            sock.send_multipart(env + _error_frames(e.msg_id, e.op, e.code, e.message), copy=False)
            return
        msg_id, op_name = head.get("id"), head.get("op")
        if not isinstance(op_name, str):
            sock.send_multipart(env + _error_frames(msg_id, None, errors.BAD_REQUEST,
                                                    "op: missing or not a string"), copy=False)  # fmt: skip
            return
        if not (msg_id is None or (isinstance(msg_id, int) and not isinstance(msg_id, bool))):
            sock.send_multipart(env + _error_frames(None, op_name, errors.BAD_REQUEST,
                                                    "id: must be an integer"), copy=False)  # fmt: skip
            return
        deadline = head.get("deadline")
        if deadline is not None:
            if (
                not isinstance(deadline, int | float)
                or isinstance(deadline, bool)
                or deadline != deadline
            ):
                sock.send_multipart(env + _error_frames(msg_id, op_name, errors.BAD_REQUEST,
                                    "deadline: must be a number of seconds"), copy=False)  # fmt: skip
                return
            if deadline <= 0:
                sock.send_multipart(env + _error_frames(msg_id, op_name, errors.TIMEOUT,
                                    "deadline already passed when the request arrived"), copy=False)  # fmt: skip
                return
            deadline = time.monotonic() + float(deadline)
        if op_name == "ping":
            self._served += 1
            out = encode({"id": msg_id, "op": "ping", "ok": True, "body": {"service": self.name}})
            sock.send_multipart(env + out, copy=False)
            return
        if op_name == "info":
            self._served += 1
            sock.send_multipart(env + encode({"id": msg_id, "op": "info", "ok": True, "body": self.info()}),
                                copy=False)  # fmt: skip
            return
        spec = self.ops.get(op_name)
        if spec is None:
            known = ", ".join(sorted(["ping", "info", *self.ops]))
            sock.send_multipart(env + _error_frames(msg_id, op_name, errors.UNSUPPORTED,
                                f"op {op_name!r} is not offered by {self.name}; ops: {known}"), copy=False)  # fmt: skip
            return
        job = _Job(env, msg_id, spec, head.get("body"), deadline, payload)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            sock.send_multipart(env + _error_frames(msg_id, op_name, errors.OVERLOADED,
                                f"{self.name}: queue full ({self.queue_size} waiting); retry later"), copy=False)  # fmt: skip

    def _worker(self, ctx: zmq.Context, inproc: str) -> None:
        out = ctx.socket(zmq.PUSH)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(inproc)
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                with self._lock:
                    self._in_flight += 1
                try:
                    frames = self._run(job)
                finally:
                    with self._lock:
                        self._in_flight -= 1
                        self._served += 1
                out.send_multipart(job.envelope + frames, copy=False)
                job = None  # drop references to the request's buffers promptly
        finally:
            out.close()

    def _run(self, job: _Job) -> list:
        name = job.op.name
        if job.deadline is not None and time.monotonic() > job.deadline:
            return _error_frames(job.msg_id, name, errors.TIMEOUT,
                                 "deadline passed while the request waited in the queue; work not done")  # fmt: skip
        try:
            arg = parse(job.op.body, job.body) if job.op.body is not None else job.body
            result = job.op.fn(arg)
            if result is None:
                result = {}
            return encode({"id": job.msg_id, "op": name, "ok": True, "body": result})
        except ServiceError as e:
            return _error_frames(job.msg_id, name, e.code, e.message, e.retryable)
        except Exception as e:
            log.exception("%s: op %s failed", self.name, name)
            return _error_frames(job.msg_id, name, errors.INTERNAL, f"{type(e).__name__}: {e}")


def _split_envelope(msg: list) -> tuple[list, list]:
    """ROUTER frames -> (envelope, payload). REQ (and our DEALER) put an empty delimiter."""
    if len(msg) >= 2 and len(msg[1]) == 0:
        return msg[:2], msg[2:]
    return msg[:1], msg[1:]


def service_main(
    name: str, build: Callable[[str, dict], Service], argv: list[str] | None = None
) -> None:
    """The command line of every `python -m services.NAME`; see protocol/runner.py."""
    from .runner import service_main as _main

    _main(name, build, argv)
