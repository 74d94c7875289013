"""Bad input sent with a raw zmq socket to a real server process: an error reply naming the
problem every time, and the server still answers ping and real requests afterwards.

Usage: python3 -m pytest tests/integration/test_protocol_badinput.py -q
"""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
import zmq

from protocol.client import Client, ServiceUnavailable
from protocol.echo_api import CONTRACT as ECHO
from protocol.wire import MAGIC, PREFIX, PROTOCOL_VERSION, decode, encode
from tests.helpers import start_service

REF0 = msgpack.ExtType(1, struct.pack(">I", 0))
A48 = np.arange(12, dtype="<i4").tobytes()


def frame0(head=None, *, raw: bytes | None = None, magic=MAGIC, version=PROTOCOL_VERSION) -> bytes:
    h = raw if raw is not None else msgpack.packb(head, use_bin_type=True)
    return PREFIX.pack(magic, version, 0, len(h)) + h


def with_array(entry, *frames):
    return [frame0({"op": "echo", "id": 42, "arrays": [entry], "body": {"a": REF0}}), *frames]


@pytest.fixture(scope="module")
def echo():
    with start_service("echo", backend="echo", module="protocol.echo", timeout=20.0) as svc:
        yield svc


@pytest.fixture()
def req(echo):
    s = zmq.Context.instance().socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 10_000)
    s.connect(echo.endpoint)
    yield s
    s.close()


def ask(sock: zmq.Socket, parts: list) -> dict:
    sock.send_multipart(parts, copy=False)
    return decode(sock.recv_multipart(copy=False))


BAD = [
    ("truncated-prefix", [b"MMSH\x00"], "bad_request", ["prefix", "5 bytes"]),
    ("empty-frame", [b""], "bad_request", ["prefix", "0 bytes"]),
    ("wrong-magic", [frame0({"op": "ping"}, magic=b"GET ")], "bad_request", ["wrong magic"]),
    ("other-version", [frame0({"op": "ping"}, version=9)], "version_mismatch", ["protocol version 9"]),
    ("header-length", [PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, 99) + b"\x80"], "bad_request",
     ["declared header length 99"]),
    ("not-msgpack", [frame0(raw=b"\xc1garbage")], "bad_request", ["not valid msgpack"]),
    ("not-a-map", [frame0([1, "ping"])], "bad_request", ["must be a msgpack map"]),
    ("missing-frame", with_array(["<i4", [3, 4], 48, 1]), "bad_request", ["index 1", "frames 1..0"]),
    ("extra-frame", with_array(["<i4", [3, 4], 48, 1], A48, b"more"), "bad_request",
     ["frames [2]", "not referenced"]),
    ("byte-length", with_array(["<i4", [3, 4], 48, 1], A48[:-4]), "bad_request",
     ["declared 48 bytes", "carries 44"]),
    ("shape", with_array(["<i4", [4, 4], 48, 1], A48), "bad_request", ["nbytes", "= 64"]),
    ("absurd-size", with_array(["<f8", [1 << 40, 1 << 40], 1 << 62, 1], A48), "bad_request",
     ["nbytes"]),
    ("object-dtype", with_array(["|O", [6], 48, 1], A48), "bad_request", ["'|O'", "not supported"]),
    ("no-op", [frame0({"id": 1, "body": {}})], "bad_request", ["op: missing"]),
    ("op-type", [frame0({"op": 5, "id": 1})], "bad_request", ["op: missing or not a string"]),
    ("id-type", [frame0({"op": "ping", "id": "x"})], "bad_request", ["id: must be an integer"]),
    ("deadline-type", [frame0({"op": "ping", "id": 1, "deadline": "soon"})], "bad_request",
     ["deadline: must be a number"]),
    ("unknown-op", [frame0({"op": "launch", "id": 1, "body": {}})], "unsupported",
     ["'launch' is not offered", "echo"]),
    ("field-type", [frame0({"op": "typed", "id": 1, "body": {"n": "1", "name": "a"}})],
     "bad_request", ["n: expected int, got str"]),
    ("unknown-field", [frame0({"op": "typed", "id": 1, "body": {"n": 1, "name": "a", "x": 0}})],
     "bad_request", ["x: unknown field"]),
    ("body-type", [frame0({"op": "typed", "id": 1, "body": [1]})], "bad_request",
     ["body: must be a map"]),
]  # fmt: skip


@pytest.mark.parametrize("name, parts, code, fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_an_error_reply_naming_the_problem(echo, req, name, parts, code, fragments):
    reply = ask(req, parts)
    assert reply["ok"] is False
    err = reply["error"]
    assert err["code"] == code and err["retryable"] is False
    for f in fragments:
        assert f in err["message"], err["message"]
    # ... and the server still answers ping and real requests
    assert ask(req, encode({"op": "ping", "id": 2, "body": {}}))["body"] == {"service": "echo"}
    a = np.arange(5000, dtype=np.float32)
    out = ask(req, encode({"op": "echo", "id": 3, "body": {"a": a}}))
    assert out["id"] == 3 and np.array_equal(out["body"]["a"], a)


def test_error_reply_carries_the_request_id_when_it_was_readable(req):
    reply = ask(req, with_array(["<i4", [3, 4], 48, 1], A48[:8]))
    assert reply["id"] == 42 and reply["op"] == "echo"


def test_all_bad_inputs_in_a_burst_then_real_work(echo):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(echo.endpoint)
    try:
        for _, parts, _, _ in BAD:
            s.send_multipart([b"", *parts])
        codes = []
        for _ in BAD:
            assert s.poll(10_000)
            codes.append(decode(s.recv_multipart()[1:])["error"]["code"])
        assert sorted(codes) == sorted(b[2] for b in BAD)
    finally:
        s.close()
    assert echo.client.call("echo", {"x": 1}) == {"x": 1}
    assert echo.client.call("info")["requests_served"] >= len(BAD)


def test_an_envelope_without_a_message_gets_bad_request(echo):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(echo.endpoint)
    try:
        s.send(b"")  # the delimiter a REQ socket (or a broker) puts in front, then nothing
        assert s.poll(5000), "no reply: a REQ client would wait forever"
        delim, *payload = s.recv_multipart()
        reply = decode(payload)
        assert delim == b"" and reply["id"] is None and reply["error"]["code"] == "bad_request"
        assert "empty message" in reply["error"]["message"]
    finally:
        s.close()
    assert echo.client.call("echo", {"x": 1}) == {"x": 1}


def test_message_over_max_msg_bytes_is_dropped_and_the_server_lives_on():
    with start_service("echo", backend="echo", module="protocol.echo", timeout=1.0, retries=0,
                       extra_args=["--max-msg-bytes", "65536"]) as svc:  # fmt: skip
        with pytest.raises(ServiceUnavailable):
            svc.client.call("echo", {"a": np.zeros(200_000, np.uint8)})  # libzmq drops the peer
        c = Client(svc.endpoint, timeout=10, contract=ECHO)
        try:
            assert c.call("echo", {"a": np.ones(10_000, np.uint8)})["a"].sum() == 10_000
        finally:
            c.close()
        assert svc.proc.poll() is None
