"""The echo service in a real process: round trips, pipelining, plain REQ clients, error codes.

Usage: python3 -m pytest tests/integration/test_protocol_roundtrip.py -q
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from protocol.client import Client, RemoteError
from protocol.echo_api import CONTRACT as ECHO
from protocol.wire import PROTOCOL_VERSION, decode, encode
from protocol.zio import recv_parts, send_parts
from tests.helpers import start_service

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64"]  # fmt: skip


@pytest.fixture(scope="module")
def echo():
    with start_service("echo", backend="echo", module="protocol.echo", options={"workers": 2},
                       timeout=20.0) as svc:  # fmt: skip
        yield svc


def test_every_dtype_and_layout_round_trips_through_a_service(echo):
    rng = np.random.default_rng(1)
    body = {}
    for dt in DTYPES:
        body[dt] = (rng.standard_normal((37, 29)) * 100).astype(dt)
    base = rng.standard_normal((300, 200)).astype(np.float32)
    body.update(zero_d=np.array(3.5), empty=np.zeros((0, 7), np.int16),
                strided=base[::3, ::2], fortran=np.asfortranarray(base), transposed=base.T,
                inline=np.arange(5, dtype=np.uint8), big=rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))  # fmt: skip
    out = echo.client.call("echo", body)
    assert set(out) == set(body)
    for k, v in body.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape, k
        assert np.array_equal(out[k], v), k
        assert not out[k].flags.writeable  # views of the received frames


def test_a_100mb_array_round_trips(echo):
    a = np.zeros((25, 1024, 1024), np.float32)  # 100 MiB
    a[::5, ::97, ::89] = np.arange(5 * 11 * 12, dtype=np.float32).reshape(5, 11, 12)
    out = echo.client.call("echo", {"a": a}, timeout=60)["a"]
    assert out.shape == a.shape and np.array_equal(out, a)


def test_pipelined_requests_all_answer_in_any_order(echo):
    c = Client(echo.endpoint, timeout=20, contract=ECHO)
    try:
        futs = [c.submit("echo", {"i": i, "a": np.full(3000, i, np.int32)}) for i in range(40)]
        futs.insert(0, c.submit("sleep", {"seconds": 0.2}))
        for i, f in enumerate(reversed(futs[1:])):
            out = f.result()
            assert out["i"] == 39 - i and out["a"][0] == 39 - i
        assert futs[0].result() == {"slept": 0.2}
    finally:
        c.close()


def test_plain_req_client_works_and_reply_frame_count_is_exact(echo):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 10_000)
    s.connect(echo.endpoint)
    try:
        big = [np.full((100, 100), i, np.float64) for i in range(3)]
        s.send_multipart(
            encode({"op": "echo", "id": 7, "body": {"xs": big, "small": np.ones(3)}}), copy=False
        )
        reply = s.recv_multipart(copy=False)
        assert len(reply) == 1 + 3  # header + one frame per out-of-band array (small is inline)
        head = decode(reply)
        assert head["ok"] is True and head["id"] == 7 and head["op"] == "echo"
        assert [float(x[0, 0]) for x in head["body"]["xs"]] == [0.0, 1.0, 2.0]
        s.send_multipart(encode({"op": "ping", "id": 8, "body": {}}))
        reply = s.recv_multipart()
        assert len(reply) == 1 and decode(reply)["body"] == {"service": "echo"}
    finally:
        s.close()


def test_dealer_reply_keeps_the_envelope(echo):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(echo.endpoint)
    try:
        send_parts(
            s, [b"", *encode({"op": "echo", "id": 1, "body": {"a": np.zeros(5000, np.uint8)}})]
        )
        assert s.poll(10_000)
        reply = recv_parts(s)
        assert len(reply) == 3 and len(reply[0]) == 0  # delimiter, header, array
    finally:
        s.close()


def test_info_reports_the_service(echo):
    echo.client.call("echo", {})
    info = echo.client.call("info")
    assert info["service"] == "echo" and info["backend"] == "echo"
    assert info["protocol_version"] == PROTOCOL_VERSION
    assert {"python", "numpy", "pyzmq", "libzmq", "msgpack"} <= set(info["versions"])
    assert info["requests_served"] >= 1 and info["uptime_s"] > 0
    assert info["queue_depth"] == 0 and info["workers"] == 2
    assert info["ops"]["typed"]["body"]["tags"] == "list[str] | None"
    assert info["ops"]["count"]["idempotent"] is False
    assert "count" in info  # the service's add_info hook
    assert isinstance(info["capabilities"], dict)


@pytest.mark.parametrize(
    "body, fragments",
    [
        ({"n": "3", "name": "a"}, ["n: expected int, got str"]),
        ({"n": 3}, ["name: required field is missing"]),
        ({"n": 3, "name": "a", "tags": [1]}, ["tags[0]: expected str, got int"]),
        ({"n": 3, "name": "a", "colour": "red"}, ["colour: unknown field", "valid fields"]),
        ({"n": 3, "name": "a", "arr": [1, 2]}, ["arr: expected array"]),
        ({"n": True, "name": "a"}, ["n: expected int, got bool"]),
    ],
    ids=["type", "missing", "list-item", "unknown", "array", "bool"],
)
def test_wrong_field_types_get_bad_request_naming_the_field(echo, body, fragments):
    with pytest.raises(RemoteError) as e:
        echo.client.call("typed", body)
    assert e.value.code == "bad_request" and not e.value.retryable
    for f in fragments:
        assert f in e.value.message


def test_typed_op_accepts_a_valid_body(echo):
    out = echo.client.call("typed", {"n": 3, "name": "x", "tags": ["a"], "arr": np.ones((10, 10))})
    assert out == {"n": 3, "name": "x", "tags": ["a"], "sum": 100.0}


def test_unknown_op_is_unsupported_and_lists_ops(echo):
    with pytest.raises(RemoteError) as e:
        echo.client.call("ehco", {})
    assert e.value.code == "unsupported"
    assert "'ehco'" in e.value.message and "echo" in e.value.message


@pytest.mark.parametrize(
    "code", ["bad_request", "not_found", "unsupported", "internal", "version_mismatch"]
)
def test_handler_errors_become_error_replies_with_their_code(echo, code):
    with pytest.raises(RemoteError) as e:
        echo.client.call("fail", {"code": code, "message": f"asked for {code}"})
    assert e.value.code == code and e.value.message == f"asked for {code}"


def test_a_crashing_handler_is_internal_and_the_service_lives_on(echo):
    with pytest.raises(RemoteError) as e:
        echo.client.call("fail", {"code": "crash", "message": "boom"})
    assert e.value.code == "internal" and "RuntimeError: boom" in e.value.message
    assert echo.client.call("ping") == {"service": "echo"}


def test_ping_is_answered_while_workers_are_busy(echo):
    c = Client(echo.endpoint, timeout=20, contract=ECHO)
    try:
        slow = [c.submit("sleep", {"seconds": 1.0}) for _ in range(2)]  # both workers busy
        time.sleep(0.2)
        t = time.monotonic()
        assert c.call("ping", timeout=5) == {"service": "echo"}
        assert time.monotonic() - t < 0.7  # answered on the socket thread, not after the sleeps
        for f in slow:
            f.result()
    finally:
        c.close()


def test_dealer_without_delimiter_is_answered_without_one(echo):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(echo.endpoint)
    try:
        send_parts(
            s, encode({"op": "echo", "id": 3, "body": {"a": np.arange(2000, dtype=np.int64)}})
        )
        assert s.poll(10_000)
        reply = recv_parts(s)
        assert len(reply) == 2 and bytes(reply[0].buffer[:4]) == b"MMSH"
        assert decode(reply)["body"]["a"][-1] == 1999
    finally:
        s.close()


def test_a_service_behind_a_broker_keeps_the_whole_envelope(echo):
    ctx = zmq.Context.instance()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (front, back):
        s.setsockopt(zmq.LINGER, 0)
    port = front.bind_to_random_port("tcp://127.0.0.1")
    back.connect(echo.endpoint)
    with Client(f"tcp://127.0.0.1:{port}", timeout=10, contract=ECHO) as c:
        fut = c.submit("echo", {"via": "broker", "a": np.ones(5000, np.uint8)})
        for src, dst in ((front, back), (back, front)):  # one hop each way, by hand
            assert src.poll(10_000)
            msg = src.recv_multipart(copy=False)
            assert len(msg) == 4  # [client id, "", header, array], both ways
            dst.send_multipart(msg, copy=False)
        out = fut.result()
        assert out["via"] == "broker" and out["a"].sum() == 5000
    front.close()
    back.close()
