"""The scheduler against FAKE in-process service doubles (real protocol Services on real
loopback sockets, served from threads, with scripted behaviour): overlap, replicas, retries,
failures, bounded memory, Ctrl-C. The real services are exercised in tests/integration."""

from __future__ import annotations

import _thread
import threading
import time
from collections import defaultdict

import numpy as np
import pytest

from orchestrator.config import PipelineConfigError, parse_pipeline
from orchestrator.plan import DatasetInfo, build_plans
from orchestrator.scheduler import Mesh, Scheduler
from protocol.client import Client
from protocol.errors import BadRequest, Internal, NotFound, ServiceError
from protocol.masks import pack
from protocol.server import Service
from services.exporter.api import CONTRACT as EXPORTER
from services.reader.api import CONTRACT as READER
from services.sam.api import CONTRACT as SAM

H, W, T = 16, 24, 8  # frame size and frames per episode of the fake buffer
CHUNK = 3  # frames per reader reply


def frame_value(episode: int, t: int) -> int:
    return (episode * 37 + t * 11) % 256


class FakeMesh:
    """Service doubles: a reader of synthetic frames, a SAM whose masks are a threshold of the
    frames it received (with a per-frame propagate delay), an exporter that keeps the masks
    (like the real one: a repeated finish_episode waits for the one in progress and answers
    its outputs, put_masks of a done episode is refused, `status` lists the done ones)."""

    def __init__(self, n_sam: int = 1, delay_per_frame: float = 0.0, read_delay: float = 0.0,
                 export_delay: float = 0.0, export_workers: int = 1):  # fmt: skip
        self.lock = threading.Lock()
        self.events: list[tuple[float, str, int, str]] = []  # (time, what, episode, replica)
        self.fail: dict[tuple[str, int, int], Exception] = {}  # (op, episode, attempt) -> error
        self.read_calls: defaultdict[int, int] = defaultdict(int)
        self.read_fail_once: set[int] = set()
        self.exported: dict[int, np.ndarray] = {}
        self.finish_calls: defaultdict[int, int] = defaultdict(int)
        self.finish_fail: dict[int, str] = {}  # episode -> "after_write" | "late" (see finish)
        self.die_on_propagate: set[int] = set()  # episodes whose propagate stops their SAM
        self.started, self.closed = [], []
        self.delay, self.read_delay, self.export_delay = delay_per_frame, read_delay, export_delay
        self._svcs = (
            [self._reader()]
            + [self._sam(f"sam{i}") for i in range(n_sam)]
            + [self._exporter(export_workers)]
        )
        self.endpoints: dict[str, str] = {}
        self._threads = []
        for svc, name in self._svcs:
            ready = threading.Event()

            def on_ready(ep, name=name, ready=ready):
                self.endpoints[name] = ep
                ready.set()

            th = threading.Thread(
                target=svc.serve, kwargs={"ready": on_ready, "install_signals": False}, daemon=True
            )
            th.start()
            ready.wait(10)
            self._threads.append(th)

    def log(self, what: str, episode: int, replica: str = "") -> None:
        with self.lock:
            self.events.append((time.perf_counter(), what, episode, replica))

    def first(self, what: str, episode: int) -> float:
        return min(t for t, w, e, _ in self.events if w == what and e == episode)

    def last(self, what: str, episode: int) -> float:
        return max(t for t, w, e, _ in self.events if w == what and e == episode)

    def _reader(self):
        svc = Service("reader", workers=2, contract=READER)

        @svc.op("frames", raw=True)
        def frames(b: dict) -> dict:
            ep, start = b["episode"], b["start"]
            self.read_calls[ep] += 1
            if ep in self.read_fail_once:
                self.read_fail_once.discard(ep)
                raise ServiceError("deadline passed", code="timeout")
            self.log("read", ep)
            time.sleep(self.read_delay)
            stop = min(T, start + CHUNK)
            out = np.stack(
                [np.full((H, W, 3), frame_value(ep, t), np.uint8) for t in range(start, stop)]
            )
            return {"frames": out, "start": start, "stop": stop, "next": stop if stop < T else None}

        return svc, "reader"

    def _sam(self, name: str):
        svc = Service("sam", workers=1, contract=SAM)
        sessions: dict[str, dict] = {}

        def parse(sid: str) -> tuple[int, int]:  # orc-<run>-e<ep>-a<attempt>
            _, _, e, a = sid.split("-")
            return int(e[1:]), int(a[1:])

        def injected(op: str, sid: str) -> None:
            err = self.fail.get((op, *parse(sid)))
            if err is not None:
                raise err

        @svc.op("start_session", raw=True)
        def start(b: dict) -> dict:
            sessions[b["session"]] = {
                "frames": np.zeros((b["n_frames"], b["height"], b["width"], 3), np.uint8)
            }
            self.started.append(b["session"])
            return {"session": b["session"]}

        @svc.op("put_frames", raw=True)
        def put(b: dict) -> dict:
            s = sessions[b["session"]]
            s["frames"][b["start"] : b["start"] + len(b["frames"])] = b["frames"]
            self.log("put", parse(b["session"])[0], name)
            return {"received": len(s["frames"])}

        @svc.op("add_prompt", raw=True)
        def add_prompt(b: dict) -> dict:
            return {
                "frame": b["frame"],
                "obj_ids": [b["obj_id"]],
                "masks": pack(np.zeros((1, H, W), bool)),
                "width": W,
            }

        @svc.op("propagate", raw=True)
        def propagate(b: dict, progress) -> dict:
            ep = parse(b["session"])[0]
            self.log("propagate_start", ep, name)
            injected("propagate", b["session"])
            if ep in self.die_on_propagate:  # the replica goes away during this propagate
                svc.request_stop()
                time.sleep(0.5)
            time.sleep(self.delay * T)
            self.log("propagate_end", ep, name)
            return {"frames": T, "obj_ids": [1]}

        @svc.op("masks", raw=True)
        def masks(b: dict) -> dict:
            s = sessions.get(b["session"])
            if s is None:
                raise NotFound(f"Cannot find session {b['session']}")
            start, stop = b["start"], min(b["stop"], b["start"] + 5)
            m = s["frames"][start:stop, :, :, 0] > 100  # (n, H, W) bool: object 1; others empty
            ids = b["obj_ids"]
            out = np.stack([m if oid == 1 else np.zeros_like(m) for oid in ids])  # (n_obj, n, H, W)
            return {"obj_ids": ids, "start": start, "stop": stop, "masks": pack(out), "width": W}

        @svc.op("close_session", raw=True)
        def close(b: dict) -> dict:
            self.closed.append(b["session"])
            return {"closed": sessions.pop(b["session"], None) is not None}

        return svc, name

    def _exporter(self, workers: int):
        svc = Service("exporter", workers=workers, contract=EXPORTER)
        held: dict[int, np.ndarray] = {}
        finishing: set[int] = set()
        cv = threading.Condition()
        outputs = {"rgbm": "out/rgbm.zarr"}

        def mark_exported(ep: int, masks: np.ndarray) -> None:
            self.exported[ep] = masks
            self.log("exported", ep)

        @svc.op("open_export", raw=True)
        def open_export(b: dict) -> dict:
            return {"export": "x1", "done": [], "n_episodes": 99}

        @svc.op("put_masks", raw=True)
        def put_masks(b: dict) -> dict:
            if b["episode"] in self.exported:
                raise BadRequest(f"episode: {b['episode']} is already exported (done)")
            arr = held.setdefault(b["episode"], np.zeros((1, T, H, (W + 7) // 8), np.uint8))
            arr[:, b["start"] : b["start"] + b["masks"].shape[1]] = b["masks"]
            return {"received": T}

        @svc.op("finish_episode", raw=True)
        def finish(b: dict) -> dict:
            ep = b["episode"]
            with cv:
                self.finish_calls[ep] += 1
                while ep in finishing:  # a repeat waits for the finish in progress
                    cv.wait()
                if ep in self.exported:
                    return {"episode": ep, "outputs": outputs}
                finishing.add(ep)
            try:
                mode = self.finish_fail.pop(ep, None)
                if mode == "late":  # answers an error, yet the episode is written a bit later
                    threading.Timer(0.3, mark_exported, (ep, held.pop(ep))).start()
                    raise Internal("disk hiccup")
                time.sleep(self.export_delay)
                mark_exported(ep, held.pop(ep))
                if mode == "after_write":  # written (done marker), then the reply fails
                    raise Internal("ytvis annotations: disk hiccup")
            finally:
                with cv:
                    finishing.discard(ep)
                    cv.notify_all()
            return {"episode": ep, "outputs": outputs}

        @svc.op("status", raw=True)
        def status(b: dict) -> dict:
            return {"done": sorted(self.exported)}

        @svc.op("discard_episode", raw=True)
        def discard(b: dict) -> dict:
            return {"discarded": held.pop(b["episode"], None) is not None}

        @svc.op("close_export", raw=True)
        def close_export(b: dict) -> dict:
            return {}

        return svc, "exporter"

    def expected_mask(self, episode: int) -> np.ndarray:
        frames = np.array([frame_value(episode, t) for t in range(T)])
        return pack(np.broadcast_to((frames > 100)[None, :, None, None], (1, T, H, W)))

    def mesh(self) -> Mesh:
        sams = [self.endpoints[n] for n in sorted(self.endpoints) if n.startswith("sam")]
        return Mesh(
            reader=lambda: Client(self.endpoints["reader"], timeout=5, retries=0, contract=READER),
            sam_endpoints=sams,
            sam=lambda ep: Client(ep, timeout=5, retries=0, contract=SAM),
            exporter=lambda: Client(
                self.endpoints["exporter"], timeout=5, retries=0, contract=EXPORTER
            ),
        )

    def close(self) -> None:
        for svc, _ in self._svcs:
            svc.request_stop()
        for th in self._threads:
            th.join(10)


@pytest.fixture
def fake():
    meshes = []

    def make(**kw) -> FakeMesh:
        meshes.append(FakeMesh(**kw))
        return meshes[-1]

    yield make
    for m in meshes:
        m.close()


OPEN_BODY = {"output": "/o", "source": "/fake.zarr", "camera_key": "img", "outputs": ["rgbm"]}


def run(fake_mesh: FakeMesh, n_episodes: int, pipeline: dict | None = None,
        mesh: Mesh | None = None, **run_cfg):  # fmt: skip
    ends = tuple(T * (i + 1) for i in range(n_episodes))
    ds = DatasetInfo("/fake.zarr", "/fake.zarr", ends, "img", H, W)
    pipe = pipeline or {"pipeline": "rgbm", "prompt": {"source": "text", "text": "mug"}}
    run_cfg = {"progress": False, "backoff_s": 0.01, "replica_down_s": 0.5, **run_cfg}
    cfg = parse_pipeline({**pipe, "run": run_cfg})
    plans = build_plans(cfg, ds, list(range(n_episodes)), None)
    sched = Scheduler(
        plans,
        mesh or fake_mesh.mesh(),
        ds,
        run_id="t1",
        cfg=cfg,
        export_open=OPEN_BODY,
        export_id="x1",
    )
    records = sched.run()
    return sched, records


def test_streams_and_overlaps_every_stage(fake):
    m = fake(delay_per_frame=0.03, read_delay=0.01, export_delay=0.1)
    sched, recs = run(m, 4)
    assert [r.result for r in recs.values()] == ["done"] * 4
    for ep in range(4):
        np.testing.assert_array_equal(m.exported[ep], m.expected_mask(ep))
    # frames go to SAM while the episode is still being read (later ones were read ahead)
    assert m.first("put", 0) < m.last("read", 0)
    for ep in range(3):
        # the next episode is read while SAM propagates this one ...
        assert m.first("read", ep + 1) < m.last("propagate_end", ep)
        # ... and this one is exported while SAM propagates the next one
        assert (
            m.first("propagate_start", ep + 1)
            < m.last("exported", ep)
            < m.last("propagate_end", ep + 1)
        )
    assert set(m.started) == set(m.closed)
    assert recs[0].stages["propagate"] > 0.2 and sched.busy["sam"] > 0


def test_episodes_spread_over_replicas(fake):
    m = fake(n_sam=2, delay_per_frame=0.04)
    t0 = time.perf_counter()
    sched, recs = run(m, 4)
    wall = time.perf_counter() - t0
    assert [r.result for r in recs.values()] == ["done"] * 4
    by_replica = defaultdict(set)
    for _, what, ep, replica in m.events:
        if what == "propagate_start":
            by_replica[replica].add(ep)
    assert len(by_replica) == 2 and sum(map(len, by_replica.values())) == 4  # both worked
    assert wall < 4 * T * 0.04  # less than the serial compute alone (1.28 s)


def test_failed_episode_retried_then_recorded_and_run_goes_on(fake):
    m = fake()
    for attempt in (1, 2, 3):
        m.fail[("propagate", 1, attempt)] = Internal("GPU fell over")
    m.fail[("propagate", 2, 1)] = NotFound("Cannot find session; it might have expired")  # lost
    m.fail[("propagate", 3, 1)] = BadRequest("box: outside the image")  # retrying cannot help
    sched, recs = run(m, 5, episode_retries=2)
    assert {e: r.result for e, r in recs.items()} == {
        0: "done",
        1: "failed",
        2: "done",
        3: "failed",
        4: "done",
    }
    assert (recs[1].attempts, recs[2].attempts, recs[3].attempts) == (3, 2, 1)
    assert "GPU fell over" in recs[1].error and len(recs[1].errors) == 3
    np.testing.assert_array_equal(m.exported[2], m.expected_mask(2))  # same bytes after a retry
    assert set(m.started) == set(m.closed)  # every session closed, failed ones too


def test_a_failed_read_retries_the_episode_not_the_request(fake):
    m = fake()
    m.read_fail_once.add(1)  # answered `timeout` once: one layer retries, the episode's
    sched, recs = run(m, 2)
    assert recs[1].result == "done" and recs[1].attempts == 2 and recs[1].request_retries == 0


def test_request_retries_key_is_refused_naming_what_replaced_it():
    with pytest.raises(
        PipelineConfigError, match=r"run.request_retries: removed: .*episode_retries"
    ):
        parse_pipeline({"pipeline": "rgbm", "prompt": {"source": "text", "text": "mug"},
                        "run": {"request_retries": 1}})  # fmt: skip


def test_fail_fast_stops_the_run(fake):
    m = fake(delay_per_frame=0.02)
    m.fail[("propagate", 0, 1)] = BadRequest("bad prompt")
    sched, recs = run(m, 6, fail_fast=True, prefetch_episodes=1)
    assert recs[0].result == "failed"
    assert sum(r.result == "done" for r in recs.values()) < 5
    assert {r.result for r in recs.values()} <= {"failed", "done", "interrupted"}


def test_memory_bounded_by_prefetch_and_replicas(fake):
    m = fake(delay_per_frame=0.02)
    run(m, 8, prefetch_episodes=2)
    # episodes whose reading began before SAM had taken all frames of earlier ones
    worst = 0
    for ep in range(8):
        t = m.first("read", ep)
        in_memory = [
            e
            for e in range(ep + 1)
            if m.first("read", e) <= t and not m.first("propagate_start", e) < t
        ]
        worst = max(worst, len(in_memory))
    assert 2 <= worst <= 2 + 1  # prefetch + one per SAM worker


def test_ctrl_c_closes_sessions_and_keeps_finished(fake):
    m = fake(delay_per_frame=0.03)
    threading.Timer(0.6, _thread.interrupt_main).start()
    sched, recs = run(m, 8, stop_grace_s=5)
    assert sched.interrupted
    results = [r.result for r in recs.values()]
    assert "done" in results and "interrupted" in results
    assert set(results) <= {"done", "interrupted"}
    assert set(m.started) == set(m.closed)  # no session left open on the replica
    assert set(m.exported) == {e for e, r in recs.items() if r.result == "done"}


def test_dead_replica_leaves_the_run_and_its_episode_is_retried(fake):
    m = fake(n_sam=1, delay_per_frame=0.05)  # the live replica is busy 0.4 s per episode,
    mesh = m.mesh()  # so the dead one surely takes an episode while it works
    mesh.sam_endpoints = [*mesh.sam_endpoints, "tcp://127.0.0.1:9"]  # nothing listens there
    mesh.sam = lambda ep: Client(ep, timeout=0.5, retries=0, contract=SAM)
    ds = DatasetInfo("/fake.zarr", "/fake.zarr", tuple(T * (i + 1) for i in range(3)), "img", H, W)
    cfg = parse_pipeline({"pipeline": "rgbm", "prompt": {"source": "text", "text": "mug"},
                          "run": {"progress": False, "backoff_s": 0.01, "replica_down_s": 0.3}})  # fmt: skip
    plans = build_plans(cfg, ds, [0, 1, 2], None)
    sched = Scheduler(plans, mesh, ds, run_id="t2", cfg=cfg, export_open=OPEN_BODY, export_id="x1")
    recs = sched.run()
    assert [r.result for r in recs.values()] == ["done"] * 3
    assert max(r.attempts for r in recs.values()) == 2  # the one the dead replica took


def test_arm_only_refuses_export_when_stage_b_gives_no_gripper_mask(fake):
    m = fake()
    box = {"frame": 0, "box": [1, 1, 9, 9]}
    objects = {
        "arm_left": {"obj_id": 1, "prompts": [box]},
        "gripper_left": {"obj_id": 3, "prompts": [box]},
    }
    sched, recs = run(m, 2, pipeline={"pipeline": "arm_only", "arm_only": {"objects": objects}})
    assert [r.result for r in recs.values()] == ["failed", "failed"]
    assert recs[0].attempts == 1  # deterministic: not retried
    assert "refused to export: stage B produced no gripper mask (objects [3]" in recs[0].error
    assert m.exported == {}  # nothing reached the exporter
    assert set(m.started) == set(m.closed)
