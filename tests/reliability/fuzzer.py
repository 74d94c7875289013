"""Drive fuzz cases at a live service and check every reply.

Usage:
    report = run_cases("tcp://127.0.0.1:5552", cases, window=32)
    report.violations        # [] when every case got one well-formed reply with an allowed code
    report.by_kind           # kind -> Counter(code)
    dropped = oversize_probe(endpoint, n=8, size=2 << 20)   # frames over MAXMSGSIZE: no reply

Op-layer cases (their reply must echo the request id) go pipelined on one DEALER socket, at
most `window` in flight; wire-level cases (answered with id None when the header cannot be
read) go one at a time on a second socket, so each reply is attributed exactly.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import zmq

from protocol.errors import CODES
from protocol.wire import WireError, decode
from tests.reliability.fuzzgen import Case

REPLY_TIMEOUT_S = 20.0  # no reply within this long = a lost message (a failure)


@dataclass
class Report:
    sent: int = 0
    replies: int = 0
    by_kind: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, limit: int = 12) -> str:
        """Violations grouped by their first 120 characters, most frequent first."""
        groups = Counter(v[:120] for v in self.violations)
        lines = [f"{n:5d} x {text}" for text, n in groups.most_common(limit)]
        return "\n".join([f"{len(self.violations)} violation(s) in {self.sent} messages:", *lines])

    def codes(self) -> Counter:
        total: Counter = Counter()
        for c in self.by_kind.values():
            total.update(c)
        return total


def parse_reply(frames: list) -> tuple[object, str, str]:
    """(id, code or "ok", message) of a reply; raises ValueError if it is not well-formed."""
    if frames and len(frames[0]) == 0:
        frames = frames[1:]
    try:
        head = decode(frames)
    except WireError as e:
        raise ValueError(f"reply does not decode: {e}") from None
    if not isinstance(head.get("ok"), bool):
        raise ValueError(f"reply has no boolean `ok`: {str(head)[:200]}")
    if head["ok"]:
        if not isinstance(head.get("body"), dict):
            raise ValueError(f"ok reply without a body map: {str(head)[:200]}")
        return head.get("id"), "ok", ""
    err = head.get("error")
    if not (isinstance(err, dict) and err.get("code") in CODES):
        raise ValueError(f"error reply without a known code: {str(head)[:200]}")
    if not (isinstance(err.get("message"), str) and err["message"].strip()):
        raise ValueError(f"error reply without a message: {str(head)[:200]}")
    if not isinstance(err.get("retryable"), bool):
        raise ValueError(f"error reply without a boolean `retryable`: {str(head)[:200]}")
    return head.get("id"), err["code"], err["message"]


class _Runner:
    def __init__(self, endpoint: str, window: int, report: Report):
        self.ctx = zmq.Context.instance()
        self.pipe = self._sock(endpoint)
        self.sync = self._sock(endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.pipe, zmq.POLLIN)
        self.poller.register(self.sync, zmq.POLLIN)
        self.window = window
        self.report = report
        self.pending: dict[int, Case] = {}
        self.sync_case: Case | None = None

    def _sock(self, endpoint: str) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(endpoint)
        return s

    def close(self) -> None:
        self.pipe.close(0)
        self.sync.close(0)

    def _judge(self, case: Case, rid: object, code: str, msg: str) -> None:
        self.report.replies += 1
        self.report.by_kind[case.kind][code] += 1
        if code not in case.expect:
            self.report.violations.append(
                f"{case.kind} op={case.op}: got {code} ({msg[:100]!r}), expected one of "
                f"{sorted(case.expect)}"
            )

    def _pump(self, timeout_s: float) -> bool:
        """Receive whatever is ready within timeout_s; False when nothing arrived."""
        events = dict(self.poller.poll(int(timeout_s * 1000)))
        if not events:
            return False
        for sock in events:
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_reply(sock, frames)
        return True

    def _on_reply(self, sock: zmq.Socket, frames: list) -> None:
        try:
            rid, code, msg = parse_reply(frames)
        except ValueError as e:
            self.report.replies += 1
            self.report.violations.append(f"malformed reply: {e}")
            if sock is self.sync:
                self.sync_case = None
            return
        if sock is self.sync:
            case, self.sync_case = self.sync_case, None
            if case is None:
                self.report.violations.append(
                    f"unsolicited reply on the one-at-a-time socket: {code}"
                )
                return
            if rid is not None and rid != case.rid:
                self.report.violations.append(f"{case.kind}: reply id {rid!r}, sent {case.rid!r}")
            self._judge(case, rid, code, msg)
            return
        case = self.pending.pop(rid, None) if isinstance(rid, int) else None
        if case is None:
            self.report.violations.append(f"reply with an unknown id {rid!r} ({code}: {msg[:120]})")
            return
        self._judge(case, rid, code, msg)

    def _wait(self, cond, what: str) -> bool:
        end = time.monotonic() + REPLY_TIMEOUT_S
        while not cond():
            if time.monotonic() > end:
                self.report.violations.append(f"no reply within {REPLY_TIMEOUT_S:.0f}s: {what}")
                return False
            self._pump(0.2)
        return True

    def send(self, case: Case) -> None:
        frames = ([b""] if case.delimiter else []) + case.frames
        self.report.sent += 1
        if case.pipelined:
            if case.rid is None or case.rid in self.pending:
                raise ValueError(
                    f"fuzz generator bug: pipelined case {case.kind} without a fresh id"
                )
            if not self._wait(lambda: len(self.pending) < self.window, "pipelined window"):
                self.pending.clear()
            self.pending[case.rid] = case
            self.pipe.send_multipart(frames, copy=False)
        else:
            self.sync_case = case
            self.sync.send_multipart(frames, copy=False)
            if not self._wait(lambda: self.sync_case is None, case.kind):
                self.sync_case = None

    def finish(self) -> None:
        if not self._wait(lambda: not self.pending, f"{len(self.pending)} pipelined requests"):
            kinds = Counter(c.kind for c in self.pending.values())
            self.report.violations.append(f"unanswered pipelined requests by kind: {dict(kinds)}")


def run_cases(endpoint: str, cases: list[Case], *, window: int = 32) -> Report:
    """Send every case; each must get exactly one well-formed reply with an allowed code."""
    report = Report()
    t0 = time.monotonic()
    r = _Runner(endpoint, window, report)
    try:
        for case in cases:
            r.send(case)
        r.finish()
    finally:
        r.close()
    report.seconds = time.monotonic() - t0
    return report


def oversize_probe(endpoint: str, *, n: int, size: int, quiet_s: float = 0.3) -> tuple[int, int]:
    """Send n messages with a frame of `size` bytes (over the server's MAXMSGSIZE), each on a
    fresh socket; returns (dropped, answered). A dropped message gets no reply at all."""
    ctx = zmq.Context.instance()
    dropped = answered = 0
    blob = b"\x00" * size
    for i in range(n):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        try:
            # a valid-looking prefix and header, then one huge frame (or a huge header frame)
            parts = [b"", blob] if i % 2 else [b"", b"MMSH" + blob[4:]]
            s.send_multipart(parts, copy=False)
            if s.poll(int(quiet_s * 1000)):
                s.recv_multipart()
                answered += 1
            else:
                dropped += 1
        finally:
            s.close(0)
    return dropped, answered
