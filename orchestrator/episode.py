"""One episode on one SAM replica, and its export: the steps a worker thread runs.

Usage (each on its own thread, with its own Clients):
    sam = SamRunner(sam_client, run_id="a1b2", direction="both", run=cfg.run, stop=stop)
    job = sam.run(stream)                    # session, frames, prompts, propagate, masks
    out = exporter.export(job)               # put_masks chunks + finish_episode -> outputs

SAM session per episode attempt, named `orc-<run>-e<episode>-a<attempt>`: start_session is
not idempotent, so a known name lets us close the session even when its reply was lost. The
session is always closed (close_session is idempotent), on success, failure or Ctrl-C, by a
SessionCloser: its close outlasts a propagate still running on the replica (closer.py).

Which ops may be re-sent is the services' contracts' call (services/<name>/api.py): propagate
is idempotent and long-running; the client judges it alive by the frames it reports done and
re-sends it only when the replica lost it (restart), never while it runs. A failed attempt is
retried whole by the scheduler. finish_episode: the exporter answers a repeat with the result
of the finish in progress (or done).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from orchestrator.calls import EpisodeRefused, Interrupted, RetryPolicy, Stats, call
from orchestrator.closer import SessionCloser
from orchestrator.plan import EpisodePlan, Stage
from orchestrator.stream import EpisodeStream
from protocol.client import Client
from protocol.errors import RemoteError, ServiceUnavailable
from services.exporter.api import CONTRACT as EXPORTER
from services.sam.api import CONTRACT as SAM

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0  # how long cleanup waits for an answer (exporter calls; SAM closes)
QUIET_CLOSE_TIMEOUT_S = 1.0  # ... for a SAM close when the replica already did not answer
STATUS_TIMEOUT_S = 10.0  # exporter `status` after a failed export (no request-level retries)


@dataclass
class ExportJob:
    """An episode's masks, bit-packed as SAM sent them, ready for the exporter."""

    plan: EpisodePlan
    attempt: int
    obj_ids: list[int]
    chunks: list[tuple[int, np.ndarray]]  # (start, (n_obj, n, H, ceil(W/8)) uint8 packed)
    width: int
    meta: dict
    replica: str
    times: dict[str, float] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)


def prompts_record(plan: EpisodePlan) -> dict:
    """What the done record says about the episode's prompts (the exporter's `status` reports
    these keys back): who exported it, the prompts-file entry's fingerprint and round."""
    return {"source": "orchestrator", "approved": False, "round": plan.prompts_round,
            "prompts_fingerprint": plan.prompts_fingerprint}  # fmt: skip


def _now() -> float:
    return time.perf_counter()


class SamRunner:
    """Runs episodes on ONE SAM replica (its own Client: a session lives on one replica)."""

    def __init__(self, client: Client, *, run_id: str, direction: str, run, pipeline: str,
                 stop: threading.Event, closer: SessionCloser):  # fmt: skip
        self.client = client
        self.endpoint = client.endpoints[0]
        self.run_id = run_id
        self.direction = direction
        self.run_cfg = run
        self.pipeline = pipeline
        self.stop = stop
        self.policy = RetryPolicy.from_run(run)
        self.closer = closer
        self.sessions = closer.sessions  # open sessions (for Ctrl-C)

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted("stopped")

    def run(self, stream: EpisodeStream) -> ExportJob:
        plan, attempt = stream.plan, stream.attempt
        sid = f"orc-{self.run_id}-e{plan.episode}-a{attempt}"
        times = {"wait_frames": 0.0, "upload": 0.0, "prompt": 0.0, "propagate": 0.0, "masks": 0.0}
        stats = stream.stats
        t = _now()
        body = SAM.request("start_session", height=plan.height, width=plan.width,
                           n_frames=plan.n_frames, session=sid)  # fmt: skip
        self.sessions[sid] = self.endpoint  # registered first: a lost reply still gets closed
        quiet = False  # the replica stopped answering: do not wait long to close
        try:
            self.client.call("start_session", body)
            times["upload"] += _now() - t
            self._upload(sid, stream, times)
            meta_stages = []
            for stage in plan.stages:
                self._check_stop()
                t = _now()
                for op in stage.prompts:
                    box = stream.boxes.get(op) if op.vlm is not None else None
                    self.client.call("add_prompt", op.body(sid, box))  # built by SAM.request
                times["prompt"] += _now() - t
                t = _now()
                self._check_stop()
                body = SAM.request("propagate", session=sid, direction=plan.direction)  # one call,
                self.client.call("propagate", body, timeout=self.run_cfg.propagate_timeout_s)
                times["propagate"] += _now() - t
                meta_stages.append(self._stage_meta(stage, stream))
            self._check_stop()
            t = _now()
            chunks, width = self._masks(sid, plan, stats)
            times["masks"] += _now() - t
        except ServiceUnavailable:
            quiet = True
            raise
        finally:
            self.close(sid, wait_s=QUIET_CLOSE_TIMEOUT_S if quiet else CLOSE_TIMEOUT_S)
        self._check_required(plan, chunks)
        meta = {"pipeline": self.pipeline, "direction": plan.direction, "stages": meta_stages,
                **prompts_record(plan)}  # fmt: skip
        if plan.prompt_info:  # rgbm: where the target prompt went and why (+ the held object)
            meta["prompt"] = {**plan.prompt_info, **stream.prompt_info}
        return ExportJob(
            plan, attempt, plan.obj_ids, chunks, width, meta, self.endpoint, times, stats
        )

    @staticmethod
    def _stage_meta(stage: Stage, stream: EpisodeStream) -> dict:
        """What was prompted (and what the VLM answered), for the export's metadata."""
        prompts = []
        for op in stage.prompts:
            m = op.as_meta()
            if op in stream.vlm_answers:
                m["vlm_answer"] = stream.vlm_answers[op]
            prompts.append(m)
        return {"stage": stage.name, "prompts": prompts}

    def _upload(self, sid: str, stream: EpisodeStream, times: dict) -> None:
        """put_frames each chunk as it arrives, up to max_inflight_puts requests in flight."""
        inflight: deque = deque()
        t = _now()
        it = stream.chunks(self.stop)
        while True:
            w = _now()
            try:
                start, frames = next(it)  # frames (n, H, W, 3) uint8
            except StopIteration:
                times["wait_frames"] += _now() - w
                break
            times["wait_frames"] += _now() - w
            body = SAM.request("put_frames", session=sid, start=start, frames=frames)
            inflight.append(self.client.submit("put_frames", body))
            while len(inflight) >= self.run_cfg.max_inflight_puts:
                inflight.popleft().result()
        while inflight:
            inflight.popleft().result()
        times["upload"] += _now() - t - times["wait_frames"]

    def _masks(self, sid: str, plan: EpisodePlan, stats: Stats) -> tuple[list, int]:
        """Fetch every frame's masks in the bounded chunks SAM answers with."""
        chunks: list[tuple[int, np.ndarray]] = []
        start, width = 0, plan.width
        while start < plan.n_frames:
            body = SAM.request("masks", session=sid, start=start, stop=plan.n_frames,
                               obj_ids=plan.obj_ids)  # fmt: skip
            out = call(self.client, "masks", body, stop=self.stop, stats=stats)
            if list(out["obj_ids"]) != plan.obj_ids or int(out["start"]) != start:
                raise ValueError(
                    f"sam: masks answered objects {out['obj_ids']} from frame {out['start']}, "
                    f"asked for {plan.obj_ids} from frame {start}"
                )
            width = int(out["width"])
            chunks.append((start, out["masks"]))  # (n_obj, n, H, W8) uint8, kept packed
            start = int(out["stop"])
        return chunks, width

    @staticmethod
    def _check_required(plan: EpisodePlan, chunks: list) -> None:
        """arm_only: refuse when no gripper object got any mask pixel (padding bits are 0)."""
        if not plan.require_any:
            return
        idx = [plan.obj_ids.index(o) for o in plan.require_any]
        if not any(bool(bits[idx].any()) for _, bits in chunks):
            raise EpisodeRefused(
                f"episode {plan.episode}: refused to export: stage B produced no gripper mask "
                f"(objects {list(plan.require_any)} are empty on every frame); check the gripper "
                "prompts (boxes/points on frames where the gripper is visible)"
            )

    def close(self, sid: str, wait_s: float = CLOSE_TIMEOUT_S) -> None:
        """Close a session, waiting at most wait_s for the answer; never raises (cleanup path).
        Unanswered, the close stays queued on the replica (with a long deadline)."""
        if self.closer.close({sid: self.endpoint}, wait_s):
            log.warning("sam %s: close of session %s not answered within %.1fs; it stays queued "
                        "there", self.endpoint, sid, wait_s)  # fmt: skip


class ExportRunner:
    """Hands finished episodes to the exporter (its own Client, one thread)."""

    def __init__(self, client: Client, open_body: dict, *, run, stop: threading.Event,
                 export_id: str | None = None):  # fmt: skip
        self.client = client
        self.open_body = open_body
        self.policy = RetryPolicy.from_run(run)
        self.stop = stop
        self.export_id = export_id
        self.max_inflight = run.max_inflight_puts

    def open(self) -> dict:
        out = call(self.client, "open_export", self.open_body, stop=self.stop)
        self.export_id = out["export"]
        return out

    def export(self, job: ExportJob, on_frames=None) -> dict:
        """put_masks every chunk (pipelined), then finish_episode; returns the outputs."""
        if self.export_id is None:
            self.open()
        ep = job.plan.episode
        inflight: deque = deque()
        try:
            for start, bits in job.chunks:
                body = EXPORTER.request("put_masks", export=self.export_id, episode=ep,
                                        start=start, obj_ids=job.obj_ids, masks=bits,
                                        width=job.width)  # fmt: skip
                inflight.append((self.client.submit("put_masks", body), bits.shape[1]))
                while len(inflight) >= self.max_inflight:
                    fut, n = inflight.popleft()
                    fut.result()
                    if on_frames:
                        on_frames(n)
            while inflight:
                fut, n = inflight.popleft()
                fut.result()
                if on_frames:
                    on_frames(n)
            return self._finish(job)
        except (RemoteError, ServiceUnavailable) as e:
            if isinstance(e, ServiceUnavailable) or e.code == "not_found":
                self.export_id = None  # the exporter may have restarted: reopen next time
            else:
                self._discard(ep)
            raise

    def _finish(self, job: ExportJob) -> dict:
        """finish_episode, retried: a repeat waits for the finish in progress and returns its
        outputs; on a done episode it answers the outputs from the done marker."""
        body = EXPORTER.request("finish_episode", export=self.export_id,
                                episode=job.plan.episode, roles=job.plan.roles,
                                meta=job.meta)  # fmt: skip
        out = call(self.client, "finish_episode", body, stats=job.stats)
        return dict(out.get("outputs") or {})

    def exported(self, job: ExportJob) -> dict | None:
        """After export() failed: the episode's outputs if the exporter has it done anyway (a
        lost or late finish_episode reply, an "already exported" answer), else None."""
        ep = job.plan.episode
        try:  # bounded: a dead exporter already cost the export's own timeouts
            body = EXPORTER.request("status", output=self.open_body["output"])
            out = self.client.call("status", body, timeout=STATUS_TIMEOUT_S)
            if ep not in {int(e) for e in out.get("done", [])}:
                return None
        except (RemoteError, ServiceUnavailable) as e:
            log.warning("exporter: status after episode %d failed: %s", ep, e)
            return None
        if self.export_id is None:
            return {}
        try:
            return self._finish(job)
        except (RemoteError, ServiceUnavailable) as e:
            log.warning("exporter: outputs of done episode %d unknown: %s", ep, e)
            return {}

    def _discard(self, episode: int) -> None:
        """Free the masks the exporter holds for a failed attempt (best effort)."""
        try:
            body = EXPORTER.request("discard_episode", export=self.export_id, episode=episode)
            self.client.call("discard_episode", body, timeout=CLOSE_TIMEOUT_S)
        except (RemoteError, ServiceUnavailable) as e:
            log.warning("exporter: discard_episode %d failed: %s", episode, e)

    def close(self) -> None:
        if self.export_id is None:
            return
        try:  # the exporter may wait for a finish in progress before it answers
            body = EXPORTER.request("close_export", export=self.export_id)
            self.client.call("close_export", body, timeout=CLOSE_TIMEOUT_S)
        except (RemoteError, ServiceUnavailable) as e:
            log.warning("exporter: close_export failed: %s", e)
        self.export_id = None
