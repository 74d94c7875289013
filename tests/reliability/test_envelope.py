"""A service behind a ROUTER/DEALER broker (zguide "extended request-reply") still answers.

Usage:
    pytest -m reliability tests/reliability/test_envelope.py

A broker (zmq.proxy) prepends its own routing frame, so the service receives
[broker id, client id, "", payload...]. The reply must go back with the whole envelope up to
the empty delimiter, or the broker cannot route it and the client waits forever.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import zmq

from protocol.wire import decode, encode
from tests.reliability.procs import spawn

pytestmark = pytest.mark.reliability


def test_service_behind_a_zmq_proxy_answers(tmp_path: Path) -> None:
    svc = spawn("echo", cwd=tmp_path, module="protocol.echo")
    ctx = zmq.Context()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    port = front.bind_to_random_port("tcp://127.0.0.1")
    back.connect(svc.endpoint)
    ctl_in, ctl_out = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    ctl_in.bind("inproc://broker-control")
    ctl_out.connect("inproc://broker-control")
    broker = threading.Thread(target=zmq.proxy_steerable, args=(front, back, None, ctl_in))
    broker.start()
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(f"tcp://127.0.0.1:{port}")
    try:
        direct = ctx.socket(zmq.DEALER)
        direct.setsockopt(zmq.LINGER, 0)
        direct.connect(svc.endpoint)
        direct.send_multipart([b"", *encode({"op": "ping", "id": 1, "body": {}})])
        assert direct.poll(5000), "control: no direct reply"
        direct.close(0)
        client.send_multipart([b"", *encode({"op": "echo", "id": 7, "body": {"x": 1}})])
        assert client.poll(5000), "no reply through the broker: the envelope was cut"
        frames = client.recv_multipart()
        head = decode(frames[1:])
        assert head["ok"] and head["id"] == 7 and head["body"] == {"x": 1}, head
    finally:
        ctl_out.send(b"TERMINATE")
        broker.join(10)
        for sock in (client, front, back, ctl_in, ctl_out):
            sock.close(0)
        ctx.term()
        svc.stop()
