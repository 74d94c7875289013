"""The streaming scheduler: reader thread(s) -> one worker per SAM replica -> export thread.

Usage:
    sched = Scheduler(plans, mesh, ds, run_id="a1b2", cfg=pipeline_cfg, progress=progress)
    records = sched.run()          # blocks; Ctrl-C (KeyboardInterrupt) stops cleanly

    reader thread(s) ──streams──► [ready: prefetch] ──► worker per SAM replica ──► [export q] ──► export thread
       frames op, VLM bbox          bounded queue        session, put_frames as      bounded      put_masks,
       (next episodes)                                   chunks arrive, prompts,                  finish_episode
                                                         propagate, masks

Overlap: the reader reads (and VLM-boxes) the next episodes while SAM works on this one; a
worker puts frames to SAM as the reader delivers them; the export thread writes episode i
while the worker propagates episode i+1. Episodes spread over the SAM replicas (each worker
pins its episodes to its replica). Memory: at most prefetch + one stream per worker hold
frames, plus the bit-packed masks of the export queue (one job per worker).

Failures: an attempt that fails is retried (re-read from the start, after a backoff) up to
episode_retries times when retrying can help, then recorded failed; the run goes on unless
fail_fast. An episode whose export failed but that the exporter reports done (a lost or late
finish_episode reply) counts as done. A worker whose replica stops answering pings it for
replica_down_s, then leaves the run; when no worker is left the remaining episodes fail, except
those already handed to the export thread, which still exports them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.calls import Interrupted, RetryPolicy, describe_error, retryable
from orchestrator.closer import SessionCloser
from orchestrator.config import PipelineConfig
from orchestrator.episode import ExportJob, ExportRunner, SamRunner
from orchestrator.plan import DatasetInfo, EpisodePlan
from orchestrator.report import EpisodeRecord, Progress
from orchestrator.stream import POLL_S, EpisodeStream, read_episode
from protocol.client import Client
from protocol.errors import RemoteError, ServiceUnavailable

log = logging.getLogger(__name__)

SHUTDOWN_CLOSE_WAIT_S = 2.0  # Ctrl-C: how long to wait for the answers to the last closes


@dataclass
class Mesh:
    """Client factories for each thread (Clients are not thread-safe: one per thread)."""

    reader: Callable[[], Client]
    sam_endpoints: list[str]
    sam: Callable[[str], Client]  # endpoint -> a Client for that one replica
    exporter: Callable[[], Client]
    vlm: Callable[[], Client] | None = None  # when a plan needs the VLM


@dataclass
class _Pending:
    plan: EpisodePlan
    attempt: int
    not_before: float = 0.0


class Scheduler:
    def __init__(self, plans: list[EpisodePlan], mesh: Mesh, ds: DatasetInfo, *, run_id: str,
                 cfg: PipelineConfig, export_open: dict, export_id: str | None = None,
                 progress: Progress | None = None):  # fmt: skip
        self.plans = plans
        self.mesh = mesh
        self.ds = ds
        self.run_id = run_id
        self.cfg = cfg
        self.run_cfg = cfg.run
        self.policy = RetryPolicy.from_run(cfg.run)
        self.export_open = export_open
        self.export_id = export_id
        self.progress = progress or Progress(enabled=False)
        self.stop = threading.Event()  # Ctrl-C / fail-fast / no replica left
        self.finished = threading.Event()  # every episode reached a final result
        self.records = {p.episode: EpisodeRecord(p.episode, p.n_frames, round=p.prompts_round,
                                                 prompts_fingerprint=p.prompts_fingerprint,
                                                 prompt=dict(p.prompt_info))
                        for p in plans}  # fmt: skip
        self._cv = threading.Condition()
        self._todo: deque[_Pending] = deque(_Pending(p, 1) for p in plans)
        self._outstanding = len(plans)
        self._ready: queue.Queue[EpisodeStream] = queue.Queue(
            maxsize=self.run_cfg.prefetch_episodes
        )
        self._export_q: queue.Queue[ExportJob] = queue.Queue(
            maxsize=max(1, len(mesh.sam_endpoints))
        )
        self._live_workers = len(mesh.sam_endpoints)
        self.sessions: dict[str, str] = {}  # open SAM sessions -> endpoint (closed on Ctrl-C)
        self.closer = SessionCloser(mesh.sam, deadline_s=self.run_cfg.propagate_timeout_s,
                                    sessions=self.sessions)  # fmt: skip
        self._exporting: set[int] = set()  # episodes with an ExportJob (queued or exporting)
        self._no_replicas = False  # every SAM worker left the run
        self.busy = {"read": 0.0, "vlm": 0.0, "sam": 0.0, "export": 0.0}
        self.threads: list[threading.Thread] = []
        self.interrupted = False
        self.wall_s = 0.0
        if not plans:
            self.finished.set()

    # -- public -------------------------------------------------------------------------
    def run(self) -> dict[int, EpisodeRecord]:
        t0 = time.perf_counter()
        spawn = [(self._reader_loop, f"reader-{i}", ()) for i in range(self.run_cfg.reader_threads)]
        spawn += [
            (self._worker_loop, f"sam-{i}", (ep,)) for i, ep in enumerate(self.mesh.sam_endpoints)
        ]
        spawn.append((self._export_loop, "export", ()))
        for fn, name, args in spawn:
            t = threading.Thread(
                target=self._guard, args=(fn, *args), name=f"orc-{name}", daemon=True
            )
            self.threads.append(t)
            t.start()
        try:
            while not self.finished.wait(POLL_S):
                if self.stop.is_set() and not any(t.is_alive() for t in self.threads):
                    break
        except KeyboardInterrupt:
            self.interrupted = True
            log.warning("interrupted: closing sessions, keeping finished episodes")
            self.stop.set()
            self._shutdown()
        else:
            self.stop.set()
            for t in self.threads:
                t.join(timeout=self.run_cfg.stop_grace_s)
        for rec in self.records.values():
            if rec.result == "pending":
                rec.result = "interrupted"
                rec.error = rec.error or "the run stopped before this episode finished"
        self.wall_s = time.perf_counter() - t0
        return self.records

    # -- bookkeeping ----------------------------------------------------------------------
    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except Interrupted:
            pass
        except BaseException:  # a bug in a thread must not hang the run
            log.exception("%s crashed; stopping the run", threading.current_thread().name)
            self.stop.set()

    def _add_busy(self, stage: str, seconds: float) -> None:
        with self._cv:  # several worker threads add to "sam"
            self.busy[stage] += seconds

    def _final(self, ep: int) -> None:
        with self._cv:
            self._outstanding -= 1
            if self._outstanding <= 0:
                self.finished.set()
            self._cv.notify_all()

    def _complete(self, job: ExportJob, outputs: dict, export_s: float) -> None:
        rec = self.records[job.plan.episode]
        rec.result, rec.outputs, rec.error = "done", outputs, None
        rec.add_times({"export": export_s})
        self.progress.episode_done()
        self._final(job.plan.episode)

    def _failed(self, plan: EpisodePlan, attempt: int, exc: BaseException, stage: str) -> None:
        rec = self.records[plan.episode]
        if isinstance(exc, Interrupted) or self.stop.is_set():
            rec.error = rec.error or "interrupted"
            return  # recorded as interrupted at the end
        msg = f"{stage}: {describe_error(exc)}"
        rec.errors.append(f"attempt {attempt}: {msg}")
        if self._no_replicas:
            msg += " (not retried: no SAM replica is left)"
        elif retryable(exc) and attempt <= self.run_cfg.episode_retries:
            pause = self.policy.pause(attempt - 1)
            log.warning("episode %d attempt %d failed (%s); retrying in %.1fs", plan.episode,
                        attempt, msg, pause)  # fmt: skip
            with self._cv:
                self._todo.appendleft(_Pending(plan, attempt + 1, time.monotonic() + pause))
                self._cv.notify_all()
            return
        log.error("episode %d failed for good after %d attempt(s): %s", plan.episode, attempt, msg)
        rec.result, rec.error = "failed", msg
        self.progress.episode_failed()
        self._final(plan.episode)
        if self.run_cfg.fail_fast:
            log.error("--fail-fast: stopping the run")
            self.stop.set()

    # -- reader ---------------------------------------------------------------------------
    def _next_pending(self) -> _Pending | None:
        with self._cv:
            while not self.stop.is_set() and not self.finished.is_set():
                now = time.monotonic()
                due = [p for p in self._todo if p.not_before <= now]
                if due:
                    self._todo.remove(due[0])
                    return due[0]
                wait = min((p.not_before - now for p in self._todo), default=POLL_S)
                self._cv.wait(timeout=max(0.01, min(POLL_S, wait)))
        return None

    def _reader_loop(self) -> None:
        reader = self.mesh.reader()
        vlm = self.mesh.vlm() if self.mesh.vlm else None
        try:
            while (p := self._next_pending()) is not None:
                stream = EpisodeStream(p.plan, p.attempt)
                while True:  # bounded: blocks while `prefetch` streams wait for a worker
                    try:
                        self._ready.put(stream, timeout=POLL_S)
                        break
                    except queue.Full:
                        if self.stop.is_set():
                            return
                read_episode(stream, reader, vlm, self.ds, self.policy, self.stop)
                self.records[p.plan.episode].add_times(
                    {"read": stream.read_s - stream.vlm_s, "vlm": stream.vlm_s}
                )
                self.records[p.plan.episode].prompt.update(stream.prompt_info)  # held object
                self._add_busy("read", stream.read_s - stream.vlm_s)
                self._add_busy("vlm", stream.vlm_s)
        finally:
            reader.close()
            if vlm is not None:
                vlm.close()

    # -- SAM workers ----------------------------------------------------------------------
    def _worker_loop(self, endpoint: str) -> None:
        client = self.mesh.sam(endpoint)
        runner = SamRunner(client, run_id=self.run_id, direction=self.cfg.direction,
                           run=self.run_cfg, pipeline=self.cfg.pipeline, stop=self.stop,
                           closer=self.closer)  # fmt: skip
        try:
            while not self.stop.is_set() and not self.finished.is_set():
                try:
                    stream = self._ready.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                plan, rec = stream.plan, self.records[stream.plan.episode]
                rec.attempts = max(rec.attempts, stream.attempt)
                rec.replica = endpoint
                t0 = time.perf_counter()
                try:
                    job = runner.run(stream)
                except BaseException as e:  # noqa: BLE001 - classified by _failed
                    stream.discard()
                    rec.request_retries += stream.stats.request_retries
                    self._add_busy("sam", time.perf_counter() - t0)
                    self._failed(plan, stream.attempt, e, "sam")
                    if isinstance(e, ServiceUnavailable) and not self._wait_replica(client):
                        return
                    continue
                busy = time.perf_counter() - t0 - job.times["wait_frames"]
                self._add_busy("sam", busy)
                rec.add_times({**job.times, "sam": busy})
                with self._cv:
                    self._exporting.add(plan.episode)
                while True:
                    try:
                        self._export_q.put(job, timeout=POLL_S)
                        break
                    except queue.Full:
                        if self.stop.is_set():
                            with self._cv:
                                self._exporting.discard(plan.episode)
                            return
        finally:
            with self._cv:
                self._live_workers -= 1
                last = self._live_workers == 0 and not self.stop.is_set()
            if last and not self.finished.is_set():
                self._no_replica_left()
            client.close()

    def _wait_replica(self, client: Client) -> bool:
        """After ServiceUnavailable: ping until the replica answers, up to replica_down_s."""
        end = time.monotonic() + self.run_cfg.replica_down_s
        pause = self.policy.backoff_s
        while time.monotonic() < end and not self.stop.is_set():
            try:
                client.ping(timeout=min(2.0, self.run_cfg.replica_down_s))
                return True
            except (ServiceUnavailable, RemoteError):
                self.stop.wait(pause)
                pause = min(self.policy.backoff_max_s, max(0.1, pause * 2))
        log.error("sam replica %s did not answer for %.0fs; leaving the run", client.endpoints[0],
                  self.run_cfg.replica_down_s)  # fmt: skip
        return False

    def _no_replica_left(self) -> None:
        """Fail the episodes no worker can run; those with an ExportJob are left to the export
        thread, which drains its queue (the run ends when they settle)."""
        log.error("no SAM replica answers; the remaining episodes fail")
        with self._cv:
            self._no_replicas = True
            self._todo.clear()
            for rec in self.records.values():
                if rec.result == "pending" and rec.episode not in self._exporting:
                    rec.result, rec.error = "failed", "no SAM replica answers (all left the run)"
                    self.progress.episode_failed()
                    self._final(rec.episode)

    # -- export ---------------------------------------------------------------------------
    def _export_loop(self) -> None:
        runner = ExportRunner(self.mesh.exporter(), self.export_open, run=self.run_cfg,
                              stop=self.stop, export_id=self.export_id)  # fmt: skip
        try:
            while not self.finished.is_set():
                try:
                    job = self._export_q.get(timeout=POLL_S)
                except queue.Empty:
                    if self.stop.is_set():
                        return
                    continue
                if self.stop.is_set() and self.interrupted:
                    return  # Ctrl-C: queued jobs are dropped (their episodes re-run next time)
                self._export_one(runner, job)
        finally:
            runner.close()
            runner.client.close()

    def _export_one(self, runner: ExportRunner, job: ExportJob) -> None:
        t0 = time.perf_counter()
        rec = self.records[job.plan.episode]
        sent = 0

        def on_frames(n: int) -> None:
            nonlocal sent
            sent += n
            self.progress.frames(n)

        error: BaseException | None = None
        try:
            outputs = runner.export(job, on_frames)
        except BaseException as e:  # noqa: BLE001 - classified by _failed
            error = e  # done in the exporter after all? (a late finish, "already exported")
            outputs = (
                runner.exported(job) if isinstance(e, RemoteError | ServiceUnavailable) else None
            )
        dt = time.perf_counter() - t0
        self._add_busy("export", dt)
        rec.request_retries += job.stats.request_retries
        with self._cv:  # settled in one step: _no_replica_left sees it exporting or settled
            self._exporting.discard(job.plan.episode)
            if outputs is None:
                self.progress.frames(-sent)
                self._failed(job.plan, job.attempt, error, "export")
                return
            if error is not None:
                log.warning("episode %d: export answered %s, but the exporter has it done",
                            job.plan.episode, describe_error(error))  # fmt: skip
                self.progress.frames(job.plan.n_frames - sent)
            self._complete(job, outputs, dt)

    # -- Ctrl-C ---------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Give workers stop_grace_s to close their sessions, then close what is left: the
        closes outlast a propagate still running there; we wait SHUTDOWN_CLOSE_WAIT_S for them."""
        end = time.monotonic() + self.run_cfg.stop_grace_s
        try:
            for t in self.threads:
                t.join(timeout=max(0.0, end - time.monotonic()))
        except KeyboardInterrupt:
            log.warning("second Ctrl-C: not waiting for workers")
        if not self.sessions:
            return
        try:
            left = self.closer.close(dict(self.sessions), SHUTDOWN_CLOSE_WAIT_S)
        except KeyboardInterrupt:
            left = list(self.sessions)
        if left:
            log.warning("SAM session(s) %s: close sent but not answered yet (the replica is "
                        "busy or down); it closes them when free", ", ".join(left))  # fmt: skip
