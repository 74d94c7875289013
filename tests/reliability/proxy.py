"""A counting pass-through in front of one service: every request and reply, by reply code.

Usage:
    with CountingProxy("tcp://127.0.0.1:5552") as px:   # a thread; px.endpoint for clients
        ... clients use px.endpoint ...
    px.requests, px.replies, px.codes["overloaded"]

Each client connection gets its own DEALER to the service, so the service sees ordinary
one-hop envelopes and answers exactly as it would answer the client directly.
"""

from __future__ import annotations

import threading
from collections import Counter

import msgpack
import zmq

from tests.reliability.fuzzgen import PREFIX


def reply_code(frame0: bytes) -> str:
    """ "ok" or the error code of a reply's header frame (arrays are not decoded)."""
    head = msgpack.unpackb(frame0[PREFIX.size :], raw=False, strict_map_key=False,
                           ext_hook=lambda code, data: None)  # fmt: skip
    if head.get("ok"):
        return "ok"
    return str((head.get("error") or {}).get("code"))


class CountingProxy(threading.Thread):
    def __init__(self, target: str):
        super().__init__(name="counting-proxy", daemon=True)
        self.target = target
        self.ctx = zmq.Context.instance()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.LINGER, 0)
        port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.requests = 0
        self.replies = 0
        self.codes: Counter = Counter()
        self.clients: set[bytes] = set()
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def __enter__(self) -> CountingProxy:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        back: dict[bytes, zmq.Socket] = {}
        owner: dict[zmq.Socket, bytes] = {}
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        try:
            while not self._halt.is_set():
                for sock, _ in poller.poll(50):
                    while True:
                        try:
                            msg = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        if sock is self.front:
                            ident = msg[0].bytes
                            b = back.get(ident)
                            if b is None:
                                b = back[ident] = self.ctx.socket(zmq.DEALER)
                                b.setsockopt(zmq.LINGER, 0)
                                b.connect(self.target)
                                owner[b] = ident
                                poller.register(b, zmq.POLLIN)
                                self.clients.add(ident)
                            self.requests += 1
                            b.send_multipart(msg[1:], copy=False)
                        else:
                            self.replies += 1
                            frames = msg[1:] if len(msg[0]) == 0 else msg
                            self.codes[reply_code(frames[0].bytes)] += 1
                            self.front.send_multipart([owner[sock], *msg], copy=False)
        except BaseException as e:  # surfaced by the test through .error
            self.error = e
        finally:
            for b in back.values():
                b.close(0)
            self.front.close(0)
