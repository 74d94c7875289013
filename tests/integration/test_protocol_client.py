"""The client's timing rules against real processes (and a hand-driven ROUTER where a reply must
be malformed): a timeout touches only the request that timed out, parked `overloaded` requests
are resent whichever future is awaited and failed by close(), a call ends at its deadline.

Usage: python3 -m pytest tests/integration/test_protocol_client.py -q
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
import zmq

from protocol import client as client_module
from protocol.client import Client, RemoteError, ServiceUnavailable
from protocol.echo_api import CONTRACT as ECHO
from protocol.errors import Stalled
from protocol.wire import decode, encode
from protocol.zio import recv_parts, send_parts
from tests.helpers import ROOT, spawn_service, start_service, stop_process


def echo_service(**kw):
    return start_service("echo", backend="echo", module="protocol.echo", **kw)


def test_a_deadline_does_not_fail_or_resend_its_neighbours():
    # One worker: the count and the echo wait behind the sleep, which outlives its deadline.
    with echo_service(timeout=5.0, retries=1) as svc:
        c = svc.client
        t = time.monotonic()
        slow = c.submit("sleep", {"seconds": 0.8}, timeout=0.3)
        count = c.submit("count", timeout=5.0)
        echo = c.submit("echo", {"x": 1}, timeout=5.0)
        with pytest.raises(ServiceUnavailable, match="within the call's deadline of 0.3s"):
            slow.result()
        assert time.monotonic() - t < 0.6  # the caller's deadline, not the sleep's 0.8 s
        assert slow.attempts == 1  # the replica was alive: nothing to re-send
        assert count.result() == {"n": 1}  # the service ran it: the client says so
        assert echo.result() == {"x": 1} and echo.attempts == 1  # not resent
        assert c.call("info")["count"] == 1
        assert len(c._socks) == 1  # no socket retired: the replica never went silent


def test_a_slow_op_past_the_stall_window_is_waited_for_not_resent():
    # The replica answers the probe ("running"): silence of the reply is not death.
    with echo_service(timeout=10.0, retries=3) as svc:
        c = Client(svc.endpoint, timeout=10.0, retries=3, stall_s=0.4, probe_s=0.1, contract=ECHO)
        try:
            fut = c.submit("sleep", {"seconds": 1.2})
            assert fut.result() == {"slept": 1.2} and fut.attempts == 1
            assert c.call("info")["requests_served"] == 1  # the one sleep (probes not counted)
        finally:
            c.close()


def test_a_long_op_reports_progress_and_a_stuck_one_is_stalled_naming_the_replica():
    with echo_service(timeout=10.0) as svc:
        c = Client(svc.endpoint, timeout=10.0, stall_s=0.5, probe_s=0.1, contract=ECHO)
        try:
            fut = c.submit("work", {"seconds": 1.5, "steps": 15})  # progress every 0.1 s
            assert fut.result() == {"slept": 1.5, "steps": 15} and fut.attempts == 1
            assert fut.progress is not None and fut.progress[1] == 15
            t = time.monotonic()
            stuck = c.submit("work", {"seconds": 3.0, "steps": 1})  # no progress for 3 s
            with pytest.raises(
                Stalled, match=r"'work' at tcp://127.0.0.1:\d+ made no progress"
            ) as ei:
                stuck.result()
            assert 0.4 < time.monotonic() - t < 1.2  # within the stall window, not the 10 s
            assert ei.value.endpoint == svc.endpoint and stuck.attempts == 1  # never re-sent
        finally:
            c.close()


def test_inflight_probe_reports_queued_running_and_unknown_requests():
    with echo_service(timeout=10.0) as svc:
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(svc.endpoint)
        try:
            send_raw(raw, "work", 1, {"seconds": 0.6, "steps": 6})
            send_raw(raw, "sleep", 2, {"seconds": 0.01})  # queued behind the one worker
            time.sleep(0.25)
            send_raw(raw, "inflight", 3, {"ids": [1, 2, 99]})
            replies = {}
            while 3 not in replies:
                head = decode(recv_parts(raw)[1:])
                replies[head["id"]] = head
            body = replies[3]["body"]
            by_id = {e["id"]: e for e in body["requests"]}
            assert by_id[1]["state"] == "running" and by_id[1]["total"] == 6
            assert 1 <= by_id[1]["done"] < 6 and by_id[1]["idle_s"] < 0.2
            assert by_id[2]["state"] == "queued" and body["unknown"] == [99]
            send_raw(raw, "inflight", 4, {"ids": "x"})
            while 4 not in replies:
                head = decode(recv_parts(raw)[1:])
                replies[head["id"]] = head
            assert replies[4]["error"]["code"] == "bad_request"
        finally:
            raw.close()


@pytest.fixture()
def two_workers_queue_of_one():
    with echo_service(timeout=10.0, options={"workers": 2, "queue_size": 1}) as svc:
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(svc.endpoint)
        yield svc, raw
        raw.close()


def send_raw(raw: zmq.Socket, op: str, rid: int, body: dict) -> None:
    raw.send_multipart([b"", *encode({"op": op, "id": rid, "body": body})], copy=False)


def test_parked_requests_are_resent_while_another_future_is_awaited(two_workers_queue_of_one):
    svc, raw = two_workers_queue_of_one
    c = svc.client
    long = c.submit("sleep", {"seconds": 1.2})  # worker 1
    time.sleep(0.1)
    send_raw(raw, "sleep", 1, {"seconds": 0.4})  # worker 2
    time.sleep(0.05)
    send_raw(raw, "sleep", 2, {"seconds": 0.01})  # waits: the queue of one is full
    time.sleep(0.05)
    count = c.submit("count")  # answered `overloaded`, parked
    assert long.result() == {"slept": 1.2}  # only `long` is awaited ...
    assert count.overloads >= 1
    assert count.done() and count.result() == {"n": 1}  # ... `count` was resent meanwhile


def test_close_fails_parked_requests_and_sends_nothing_after(two_workers_queue_of_one):
    svc, raw = two_workers_queue_of_one
    for i in range(3):  # both workers busy, the queue full
        send_raw(raw, "sleep", i, {"seconds": 0.6})
        time.sleep(0.05)  # a worker takes it before the next arrives
    c = Client(svc.endpoint, timeout=5.0, contract=ECHO)
    fut = c.submit("count")
    c.ping()  # pumps the socket: the `overloaded` reply to `count` comes in before the pong
    assert fut.overloads >= 1 and not fut.done()
    c.close()
    assert fut.done()
    with pytest.raises(ServiceUnavailable, match="client closed"):
        fut.result()
    assert not c._socks  # nothing reopened
    time.sleep(0.8)  # the sleeps are over: a resend would have run by now
    assert svc.client.call("info")["count"] == 0


def test_calls_end_at_their_deadline_against_a_draining_service():
    proc, ep, _ = spawn_service("echo", backend="echo", module="protocol.echo")
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(ep)
    c = Client(ep, timeout=0.25, retries=1, contract=ECHO)
    try:
        send_raw(raw, "sleep", 1, {"seconds": 2.0})  # keeps the drain going
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the service now answers `unavailable`
        t = time.monotonic()
        with pytest.raises(RemoteError) as e:  # a health check reports what it sees
            c.ping(timeout=0.5)
        assert e.value.code == "unavailable" and time.monotonic() - t < 0.3
        t = time.monotonic()
        with pytest.raises(RemoteError) as e:
            c.call("echo", {"x": 1})  # resent with backoff, up to 0.25 s x (1 + 1)
        assert e.value.code == "unavailable" and "deadline" in e.value.message
        assert time.monotonic() - t < 0.5 + 0.2
        with pytest.raises(RemoteError) as e:
            c.call("info")  # not resent either
        assert e.value.code == "unavailable"
    finally:
        c.close()
        raw.close()
        stop_process(proc)


@pytest.fixture()
def router():
    """A hand-driven ROUTER socket standing in for a service."""
    s = zmq.Context.instance().socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    yield s, f"tcp://127.0.0.1:{port}"
    s.close()


def serve_one(sock: zmq.Socket, reply: dict | None = None) -> tuple[list, dict]:
    """Receive one request; answer it with `reply` (its id filled in unless given)."""
    assert sock.poll(5000)
    msg = recv_parts(sock)
    head = decode(msg[2:])
    if reply is not None:
        send_parts(sock, [*msg[:2], *encode({"op": head["op"], "id": head["id"], **reply})])
    return msg[:2], head


def test_a_reply_with_an_unhashable_id_is_dropped(router, caplog):
    sock, ep = router
    with Client(ep, timeout=5.0, contract=ECHO) as c:
        fut = c.submit("echo", {"x": 1})
        env, head = serve_one(sock)
        send_parts(sock, [*env, *encode({"op": "echo", "id": [head["id"]], "ok": True})])
        send_parts(sock, [*env, *encode({"op": "echo", "id": head["id"], "ok": True,
                                         "body": {"x": 1}})])  # fmt: skip
        assert fut.result() == {"x": 1}
    assert "reply with id [1]" in caplog.text and "dropped" in caplog.text


def test_the_first_overload_pause_is_the_one_the_readme_states(router):
    readme = (ROOT / "protocol" / "README.md").read_text()
    first_ms, last_ms = map(int, re.search(r"\((\d+) ms doubling to (\d+) ms\)", readme).groups())
    sock, ep = router
    busy = {"ok": False, "error": {"code": "overloaded", "message": "full", "retryable": True}}
    with Client(ep, timeout=5.0, contract=ECHO) as c:
        fut = c.submit("echo")
        serve_one(sock, busy)
        t0 = time.monotonic()  # the reply can only be read after this
        while not fut.overloads:
            c._step(fut)
        t1 = time.monotonic()
        assert fut.retry_at - t1 <= first_ms / 1000 <= fut.retry_at - t0
    pause = client_module.backoff_s
    assert pause(2) == 2 * first_ms / 1000 and pause(30) == last_ms / 1000


def test_a_config_workers_value_equal_to_the_default_still_applies(tmp_path: Path):
    # The exporter's own default is 2 workers; the file says 1.
    cfg = tmp_path / "services.yaml"
    cfg.write_text("services:\n  exporter:\n    endpoints: [tcp://127.0.0.1:5554]\n"
                   "    backend: local\n    workers: 1\n    queue_size: 64\n")  # fmt: skip
    proc, ep, _ = spawn_service("exporter", backend="local", extra_args=["--config", str(cfg)])
    try:
        with Client(ep, timeout=10.0, contract=ECHO) as c:
            info = c.call("info")
        assert info["workers"] == 1 and info["queue_size"] == 64
    finally:
        stop_process(proc)


def test_a_resend_carries_the_time_the_caller_has_left(router):
    """One deadline per call: a re-send (here after `overloaded`) tells the service how long
    the caller still waits, not the whole timeout again (a handler plans its work by it)."""
    sock, ep = router
    busy = {"ok": False, "error": {"code": "overloaded", "message": "full", "retryable": True}}
    with Client(ep, timeout=4.0, contract=ECHO) as c:
        fut = c.submit("echo", {"x": [1, 2, 3]})
        _, first = serve_one(sock, busy)
        time.sleep(0.5)  # the caller's clock runs on while the service is full
        while not fut.overloads:
            c._step(fut)
        while sock.poll(0) == 0:
            c._step(fut)
        _, again = serve_one(sock, {"ok": True, "body": {"x": [1, 2, 3]}})
        assert fut.result() == {"x": [1, 2, 3]}
    assert first["deadline"] == 4.0 and again["body"] == first["body"]
    assert again["id"] == first["id"] and again["deadline"] < 3.6, again["deadline"]
