"""The scheduler when requests outlive their timeouts, against the service doubles of
test_orchestrator_scheduler.py (real protocol Services on loopback sockets): a slow propagate is
sent once and its session still gets closed, Ctrl-C closes sessions behind a running
propagate without waiting for it, a slow or half-failed finish_episode counts as done, and the
export queue drains when the last SAM replica leaves.

Run: python3 -m pytest tests/unit/test_orchestrator_recovery.py -q
"""

from __future__ import annotations

import _thread
import threading
import time

import pytest

from protocol.client import Client
from protocol.errors import ServiceUnavailable
from services.exporter.api import CONTRACT as EXPORTER
from services.sam.api import CONTRACT as SAM
from tests.unit.test_orchestrator_scheduler import FakeMesh, run

OUTPUTS = {"rgbm": "out/rgbm.zarr"}


@pytest.fixture
def fake():
    meshes = []

    def make(**kw) -> FakeMesh:
        meshes.append(FakeMesh(**kw))
        return meshes[-1]

    yield make
    for m in meshes:
        m.close()


def _wait_for(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def _propagates(m: FakeMesh, episode: int) -> int:
    return sum(1 for _, what, ep, _ in m.events if what == "propagate_start" and ep == episode)


def test_timed_out_propagate_is_sent_once_and_its_session_still_closes(fake):
    m = fake(delay_per_frame=0.08)  # propagate takes 0.64 s, longer than its 0.4 s timeout
    mesh = m.mesh()
    mesh.sam = lambda ep: Client(
        ep, timeout=5, retries=2, contract=SAM
    )  # would resend idempotent calls
    sched, recs = run(m, 1, mesh=mesh, propagate_timeout_s=0.4, episode_retries=0)
    assert recs[0].result == "failed" and recs[0].attempts == 1
    sid = "orc-t1-e0-a1"
    # the close (sent after the timeout) waited behind the running propagate instead of expiring
    assert _wait_for(lambda: sid in m.closed, 3.0), m.closed
    assert _propagates(m, 0) == 1  # never resent: a copy would queue behind the running one
    assert sid not in sched.sessions


class _ExitingClient(Client):
    """A SAM client whose process 'exits' when `gone` is set: nothing is sent after that."""

    gone = threading.Event()

    def submit(self, op, body=None, **kw):
        if self.gone.is_set():
            raise ServiceUnavailable("the orchestrator process has exited")
        return super().submit(op, body, **kw)


def test_ctrl_c_close_outlasts_a_running_propagate_without_waiting_for_it(fake):
    m = fake(delay_per_frame=0.45)  # one propagate of 3.6 s, still running at Ctrl-C
    mesh = m.mesh()
    _ExitingClient.gone.clear()
    mesh.sam = lambda ep: _ExitingClient(ep, timeout=5, retries=0, contract=SAM)
    threading.Timer(0.5, _thread.interrupt_main).start()
    t0 = time.monotonic()
    try:
        sched, recs = run(m, 1, mesh=mesh, stop_grace_s=0.3)
    finally:
        _ExitingClient.gone.set()  # what the worker would send later is lost with the process
    wall = time.monotonic() - t0
    assert sched.interrupted and recs[0].result == "interrupted"
    assert wall < 3.3  # Ctrl-C did not wait for the propagate
    # the close sent at Ctrl-C waited in the replica's queue and ran when the propagate ended
    assert _wait_for(lambda: "orc-t1-e0-a1" in m.closed, 5.0), m.closed
    assert _propagates(m, 0) == 1


def test_slow_finish_is_waited_for_not_rerun(fake):
    m = fake(export_delay=0.8, export_workers=2)  # finish outlives the stall window (0.3 s)
    mesh = m.mesh()
    mesh.exporter = lambda: Client(m.endpoints["exporter"], timeout=5, retries=1, stall_s=0.3,
                                   probe_s=0.1, contract=EXPORTER)  # fmt: skip
    sched, recs = run(m, 2, mesh=mesh)
    assert [r.result for r in recs.values()] == ["done", "done"]
    assert [r.attempts for r in recs.values()] == [1, 1]  # not re-run through SAM
    assert all(r.outputs == OUTPUTS for r in recs.values())
    # the exporter said "running" when asked: the finish was waited for, never re-sent
    assert len(m.started) == 2 and m.finish_calls[0] == 1 and m.finish_calls[1] == 1


def test_finish_past_its_deadline_counts_as_done_by_status(fake):
    m = fake(export_delay=0.8, export_workers=2)  # finish outlives the call's deadline (0.5 s)
    mesh = m.mesh()
    mesh.exporter = lambda: Client(m.endpoints["exporter"], timeout=0.5, retries=1,
                                   contract=EXPORTER)  # fmt: skip
    sched, recs = run(m, 2, mesh=mesh)
    # the call failed at its deadline (not re-sent); the episode is done once, by status
    assert [r.result for r in recs.values()] == ["done", "done"]
    assert all(m.finish_calls[e] <= 2 for e in (0, 1)) and sorted(m.exported) == [0, 1]


def test_episode_written_despite_an_error_reply_counts_as_done(fake):
    m = fake()
    m.finish_fail[1] = "after_write"  # done marker written, then an error answered
    sched, recs = run(m, 3)
    assert [r.result for r in recs.values()] == ["done"] * 3
    assert recs[1].attempts == 1 and recs[1].outputs == OUTPUTS  # outputs asked again
    assert sum(s.startswith("orc-t1-e1-") for s in m.started) == 1  # not re-run
    assert sched.progress.failed == 0


def test_already_exported_answer_to_a_rerun_counts_as_done(fake):
    m = fake(delay_per_frame=0.05)  # the re-run reaches put_masks after the late write
    m.finish_fail[0] = "late"  # answers an error; the episode is written 0.3 s later
    sched, recs = run(m, 1)
    assert recs[0].result == "done" and recs[0].attempts == 2, recs[0].errors
    assert recs[0].outputs == OUTPUTS and sched.progress.failed == 0


def test_export_queue_drains_when_the_last_replica_leaves(fake):
    m = fake(export_delay=1.0)  # episodes 0 and 1 wait for the exporter while 2 kills SAM
    m.die_on_propagate.add(2)
    mesh = m.mesh()
    mesh.sam = lambda ep: Client(ep, timeout=0.2, retries=0, contract=SAM)
    sched, recs = run(m, 3, mesh=mesh, replica_down_s=0.3)
    assert [r.result for r in recs.values()] == ["done", "done", "failed"]
    assert "no SAM replica answers" in recs[2].error
    assert sorted(m.exported) == [0, 1]
    assert sched.progress.failed == 1  # each episode counted once
