"""Reliability with real processes: Lazy Pirate retries across a restart, replica failover,
`overloaded` on a full queue, deadlines answered `timeout` without the work, SIGTERM drain.

Usage: python3 -m pytest tests/integration/test_protocol_reliability.py -q
"""

from __future__ import annotations

import signal
import socket
import time

import numpy as np
import pytest
import zmq

from protocol.client import Client, ServiceUnavailable
from protocol.echo_api import CONTRACT as ECHO
from protocol.wire import decode, encode
from tests.helpers import spawn_service, start_service, stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_echo(bind: str = "tcp://127.0.0.1:0", **options):
    return spawn_service("echo", backend="echo", module="protocol.echo", bind=bind, options=options)


class Raw:
    """A DEALER socket that sends hand-made requests and collects replies by id."""

    def __init__(self, endpoint: str):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, op: str, rid: int, body: dict | None = None, deadline: float | None = None):
        head = {"op": op, "id": rid, "body": body or {}}
        if deadline is not None:
            head["deadline"] = deadline
        self.sock.send_multipart([b"", *encode(head)], copy=False)

    def replies(self, n: int, timeout: float = 15.0) -> dict[int, dict]:
        out, end = {}, time.monotonic() + timeout
        while len(out) < n and self.sock.poll(max(1, int((end - time.monotonic()) * 1000))):
            head = decode(self.sock.recv_multipart()[1:])
            out[head["id"]] = head
        return out

    def close(self):
        self.sock.close()


def test_server_stopped_and_restarted_while_the_client_retries():
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    proc, _, _ = spawn_echo(ep)
    c = Client(ep, timeout=30, retries=20, stall_s=0.6, probe_s=0.2, contract=ECHO)
    try:
        assert c.call("echo", {"n": 1}) == {"n": 1}
        proc.kill()  # no drain, no reply: the next request is lost with it
        proc.wait()
        fut = c.submit("echo", {"n": 2})
        time.sleep(1.3)  # at least one stall window passes while nothing listens
        proc, _, _ = spawn_echo(ep)
        assert fut.result() == {"n": 2}  # re-sent on a fresh socket, or queued by the
        # DEALER until it reconnected: either way the call outlived the restart
        assert fut.attempts <= 21
        assert c.call("count", {}) == {"n": 1}  # a fresh server
    finally:
        c.close()
        stop_process(proc)


def test_non_idempotent_op_is_not_resent_when_the_replica_lost_it():
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    proc, _, _ = spawn_echo(ep)
    c = Client(ep, timeout=60, retries=3, stall_s=30.0, probe_s=0.2, contract=ECHO)
    try:
        fut = c.submit("count", {"seconds": 3.0})
        time.sleep(0.4)  # the count is running
        proc.kill()  # the request dies with it
        proc.wait()
        proc, _, _ = spawn_echo(ep)  # the same address: the probe reaches the new process
        t = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="no longer knows the request.*not idempotent"):
            fut.result()
        assert time.monotonic() - t < 5.0  # the first probe after the restart, not stall_s
        assert fut.attempts == 1 and c.call("info")["count"] == 0  # never re-sent
    finally:
        c.close()
        stop_process(proc)


def test_idempotent_op_lost_by_a_restart_is_resent_at_once():
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    proc, _, _ = spawn_echo(ep)
    c = Client(ep, timeout=60, retries=3, stall_s=30.0, probe_s=0.2, contract=ECHO)
    try:
        fut = c.submit("sleep", {"seconds": 3.0})
        time.sleep(0.4)
        proc.kill()
        proc.wait()
        proc, _, _ = spawn_echo(ep)
        t = time.monotonic()
        assert fut.result() == {"slept": 3.0} and fut.attempts == 2
        assert time.monotonic() - t < 3.0 + 3.0  # noticed at the first probe, not after 20 s
    finally:
        c.close()
        stop_process(proc)


def test_replicas_share_work_and_fail_over_when_one_stops_answering():
    (p1, e1, _), (p2, e2, _) = spawn_echo(), spawn_echo()
    c = Client([e1, e2], timeout=30, retries=3, stall_s=0.8, probe_s=0.2, contract=ECHO)
    try:
        futs = [c.submit("echo", {"i": i, "a": np.full(2000, i, np.int32)}) for i in range(20)]
        assert [f.result()["i"] for f in futs] == list(range(20))
        served = [
            Client(e, timeout=5, contract=ECHO).call("info")["requests_served"] for e in (e1, e2)
        ]
        assert all(s >= 3 for s in served), served  # work spread over both replicas
        p1.kill()
        p1.wait()
        t = time.monotonic()
        for i in range(10):
            assert c.call("echo", {"i": i}) == {"i": i}
        assert time.monotonic() - t < 8  # one stall window to notice, then the live replica
        with pytest.raises(ServiceUnavailable):  # ping does not retry: it reports what it sees
            c.ping(timeout=0.5)
    finally:
        c.close()
        stop_process(p1)
        stop_process(p2)


@pytest.fixture()
def busy_echo():
    """One worker, a queue of two: easy to fill."""
    with start_service("echo", backend="echo", module="protocol.echo", timeout=10.0,
                       options={"workers": 1, "queue_size": 2}) as svc:  # fmt: skip
        raw = Raw(svc.endpoint)
        yield svc, raw
        raw.close()


def test_overloaded_when_the_queue_is_full(busy_echo):
    svc, raw = busy_echo
    raw.send("sleep", 1, {"seconds": 0.8})  # the worker takes it
    time.sleep(0.3)
    raw.send("echo", 2, {"x": 2})  # queued
    raw.send("echo", 3, {"x": 3})  # queued (queue of 2 is now full)
    raw.send("echo", 4, {"x": 4})  # refused at once
    first = raw.replies(1, timeout=0.7)
    assert list(first) == [4]
    err = first[4]["error"]
    assert (
        err["code"] == "overloaded" and err["retryable"] is True and "queue full" in err["message"]
    )
    rest = raw.replies(3)
    assert rest[1]["ok"] and rest[2]["body"] == {"x": 2} and rest[3]["body"] == {"x": 3}
    # the Client retries `overloaded` with backoff and gets through
    raw.send("sleep", 5, {"seconds": 0.5})
    futs = [svc.client.submit("echo", {"i": i}) for i in range(6)]
    assert [f.result()["i"] for f in futs] == list(range(6))
    assert sum(f.overloads for f in futs) >= 1


def test_expired_deadline_is_answered_timeout_without_doing_the_work(busy_echo):
    svc, raw = busy_echo
    raw.send("sleep", 1, {"seconds": 0.8})
    time.sleep(0.2)
    raw.send("count", 2, deadline=0.2)  # waits behind the sleep and expires in the queue
    raw.send("count", 3, deadline=-1.0)  # already expired on arrival
    got = raw.replies(3)
    assert (
        got[3]["error"]["code"] == "timeout"
        and "when the request arrived" in got[3]["error"]["message"]
    )
    assert got[2]["error"]["code"] == "timeout" and "work not done" in got[2]["error"]["message"]
    assert got[1]["ok"]
    assert svc.client.call("info")["count"] == 0  # the count op never ran
    assert svc.client.call("count", {}) == {"n": 1}  # it does run in time


def test_per_call_timeout_is_the_whole_call(busy_echo):
    svc, _ = busy_echo
    c = Client(svc.endpoint, timeout=10, retries=1, contract=ECHO)
    try:
        t = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="within the call's deadline of 0.2"):
            c.call("sleep", {"seconds": 0.6}, timeout=0.25)
        assert time.monotonic() - t < 0.25 + 0.2  # the caller's deadline, not 10 s nor 2 x
    finally:
        c.close()


def test_sigterm_drains_in_flight_requests_and_exits_0():
    proc, ep, log = spawn_echo(workers=1)
    raw = Raw(ep)
    try:
        raw.send("sleep", 1, {"seconds": 1.2})
        raw.send("count", 2)  # queued behind it
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.4)  # the socket thread sees the stop flag within POLL_MS (0.1 s)
        raw.send("echo", 3, {"late": True})  # arrives during the drain
        raw.sock.send(b"")  # and an envelope with no message (answered too, id nil)
        got = raw.replies(4)
        assert got[None]["error"]["code"] == "unavailable"
        assert got[1]["ok"] and got[1]["body"] == {"slept": 1.2}
        assert got[2]["ok"] and got[2]["body"] == {"n": 1}
        assert got[3]["error"]["code"] == "unavailable" and got[3]["error"]["retryable"]
        assert proc.wait(15) == 0
        assert "stopping; draining" in log.read_text()
    finally:
        raw.close()
        stop_process(proc)
