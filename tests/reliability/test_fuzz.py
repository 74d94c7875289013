"""Fuzz every service's socket with >= 10,000 malformed or hostile messages (seeded).

Usage:
    pytest -m reliability tests/reliability/test_fuzz.py
    RELIABILITY_SEED=3 RELIABILITY_FUZZ_N=20000 pytest -m reliability tests/reliability/test_fuzz.py

Per service: a real request before and after (results must be identical and correct), a
warm-up, then N messages from tests/reliability/fuzzgen.py (every one must get exactly one
well-formed reply with an allowed code), frames over MAXMSGSIZE (must be dropped), VmRSS
sampled every 2,000 messages (must stay within RSS_BOUND_MIB of the warm-up level), ping.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from protocol.client import Client
from protocol.masks import pack, unpack
from tests.reliability.fuzzer import Report, oversize_probe, run_cases
from tests.reliability.fuzzgen import Generator, op_specs
from tests.reliability.outputs import tree_diff
from tests.reliability.procs import rss_kib, spawn

log = logging.getLogger(__name__)

SEED = int(os.environ.get("RELIABILITY_SEED", "0"))
FUZZ_N = max(10_000, int(os.environ.get("RELIABILITY_FUZZ_N", "10000")))
WARMUP_N = 1_000  # messages before the memory baseline (lazy imports, allocator arenas)
STEP_N = 2_000  # VmRSS is sampled after each step
RSS_BOUND_MIB = 32  # growth allowed over the warm-up level (measured plateau: < 16 MiB)
MAX_MSG_BYTES = 1 << 20  # the fuzzed service's MAXMSGSIZE, so oversize drops are cheap to test
OVERSIZE_N = 8
SERVICES = ["reader", "sam", "vlm", "exporter"]

pytestmark = pytest.mark.reliability


def _episode(demo: Path, key: str, ep: int, gt: bool = False) -> np.ndarray:
    g = zarr.open_group(str(demo / ("demo_gt.zarr" if gt else "demo.zarr")), mode="r")
    ends = g["meta/episode_ends"][:]
    start = 0 if ep == 0 else int(ends[ep - 1])
    return g[f"data/{key}"][start : int(ends[ep])]


class Target:
    """How to aim the fuzzer at one service and what a correct real request looks like."""

    options: dict = {}

    def __init__(self, demo: Path, work: Path):
        self.demo, self.work = demo, work
        self.source = str(demo / "demo.zarr")

    def prepare(self, c: Client) -> tuple[list[str], list[int]]:
        """Open real state for the fuzzer to hit; returns (string pool, int pool)."""
        return [self.source], [0, 1, 2]

    def real(self, c: Client, tag: str) -> object:
        """A real request whose result must be correct, and the same before and after."""
        raise NotImplementedError


class Reader(Target):
    def prepare(self, c):
        ds = c.call("open", {"path": self.source})["dataset"]
        return [self.source, ds, "head_cam_img", "right_state", "action", "nope"], [0, 1, 2, 19, 20]

    def real(self, c, tag):
        ds = c.call("open", {"path": self.source})["dataset"]
        got = c.call("frames", {"dataset": ds, "episode": 1, "key": "head_cam_img", "start": 2,
                                "stop": 9})  # fmt: skip
        want = _episode(self.demo, "head_cam_img", 1)[2:9]  # (7, 120, 160, 3) uint8
        np.testing.assert_array_equal(got["frames"], want)
        arr = c.call("arrays", {"dataset": ds, "episode": 0, "keys": ["right_state"]})["arrays"]
        np.testing.assert_array_equal(arr["right_state"], _episode(self.demo, "right_state", 0))
        return got["frames"].tobytes() + arr["right_state"].tobytes()


class Sam(Target):
    options = {"max_sessions": 32, "max_session_bytes": 64 << 20}  # fuzzed sessions stay small

    def prepare(self, c):
        frames = _episode(self.demo, "head_cam_img", 0)[:8, :48, :64]  # (8, 48, 64, 3) uint8
        c.call("start_session", {"height": 48, "width": 64, "n_frames": 8, "session": "fz-real"})  # fmt: skip
        c.call(
            "put_frames", {"session": "fz-real", "start": 0, "frames": np.ascontiguousarray(frames)}
        )
        return ["fz-real", "both", "forward", "backward", "fz-new"], [0, 1, 2, 7, 8, 48, 64]

    def real(self, c, tag):
        rgb = _episode(self.demo, "head_cam_img", 0)[:6]  # (6, 120, 160, 3) uint8
        box = [94, 43, 116, 62]  # the red mug (demo prompts file, episode 0)
        seg = c.call("segment_image", {"image": rgb[0], "boxes": [box]})
        m0 = unpack(seg["masks"], seg["width"])  # (1, H, W) bool
        sid = c.call("start_session", {"height": 120, "width": 160, "n_frames": 6})["session"]
        c.call("put_frames", {"session": sid, "start": 0, "frames": rgb})
        c.call("add_prompt", {"session": sid, "frame": 0, "obj_id": 1, "box": box})
        c.call("propagate", {"session": sid, "direction": "forward"})
        out = c.call("masks", {"session": sid, "start": 0, "stop": 6})
        assert c.call("close_session", {"session": sid})["closed"] is True
        video = unpack(out["masks"], out["width"])  # (1, 6, H, W) bool
        for m in (m0[0], video[0, 0]):
            ys, xs = np.nonzero(m)
            assert len(ys) > 50, f"{tag}: the mug mask is (nearly) empty"
            assert xs.min() >= box[0] - 4 and xs.max() <= box[2] + 4, f"{tag}: mask leaves the box"
        return seg["masks"].tobytes() + out["masks"].tobytes()


class Vlm(Target):
    def __init__(self, demo, work):
        super().__init__(demo, work)
        self.options = {"prompts_file": str(demo / "prompts.yaml")}

    def prepare(self, c):
        return ["the red mug", "classify", "decompose", "check_grasp_success"], [0, 1, 2]

    def real(self, c, tag):
        want = yaml.safe_load((self.demo / "prompts.yaml").read_text())["episodes"][0]["target"]
        rgb = _episode(self.demo, "head_cam_img", 0)[want["frame"]]  # (120, 160, 3) uint8
        got = c.call("bbox", {"image": rgb, "description": want["description"], "episode": 0,
                              "frame": want["frame"]})  # fmt: skip
        assert [round(v) for v in got["box"]] == want["box"], f"{tag}: {got}"
        return repr(got["box"]).encode()


class Exporter(Target):
    def prepare(self, c):
        r = c.call("open_export", {"output": "fz-out", "source": self.source,
                                   "camera_key": "head_cam_img", "outputs": ["npz"], "options": {}})  # fmt: skip
        return [self.source, r["export"], "fz-out", "head_cam_img", "npz", "rgbm", "target"], [
            0,
            1,
            20,
        ]

    def real(self, c, tag):
        out = self.work / f"real-{tag}"
        r = c.call("open_export", {"output": str(out), "source": self.source,
                                   "camera_key": "head_cam_img", "outputs": ["rgbm", "npz"], "options": {}})  # fmt: skip
        m = _episode(self.demo, "gt_target", 0, gt=True)  # (20, 120, 160) bool
        c.call("put_masks", {"export": r["export"], "episode": 0, "start": 0, "obj_ids": [1],
                             "masks": pack(m[None]), "width": m.shape[-1]})  # fmt: skip
        c.call(
            "finish_episode",
            {"export": r["export"], "episode": 0, "roles": {"target": 1}, "meta": {}},
        )
        c.call("close_export", {"export": r["export"]})
        assert c.call("status", {"output": str(out)})["done"] == [0]
        g = zarr.open_group(str(out / "rgbm.zarr"), mode="r")
        rgbm = g["data/rgbm"][:20]  # (20, 120, 160, 4) uint8
        np.testing.assert_array_equal(rgbm[..., 3] > 0, m)
        return out


TARGETS = {"reader": Reader, "sam": Sam, "vlm": Vlm, "exporter": Exporter}


@pytest.mark.parametrize("service", SERVICES)
def test_fuzz_service(service: str, demo_data: Path, tmp_path: Path, record_property) -> None:
    target = TARGETS[service](demo_data, tmp_path)
    svc = spawn(service, cwd=tmp_path, options=target.options,
                extra_args=["--max-msg-bytes", str(MAX_MSG_BYTES), "--log-level", "WARNING"])  # fmt: skip
    client = Client(svc.endpoint, timeout=30, retries=0, name=service)
    try:
        before = target.real(client, "before")
        strings, ints = target.prepare(client)
        ops = op_specs(service, client.call("info")["ops"])
        gen = Generator(random.Random(SEED * 1000 + SERVICES.index(service)), ops,
                        strings=strings, ints=ints)  # fmt: skip
        warm = run_cases(svc.endpoint, gen.cases(WARMUP_N))
        base = rss_kib(svc.proc.pid)
        samples, reports = [], []
        for _ in range(FUZZ_N // STEP_N):
            reports.append(run_cases(svc.endpoint, gen.cases(STEP_N)))
            assert svc.alive(), f"{service} died while fuzzed:\n{svc.log()[-3000:]}"
            samples.append(rss_kib(svc.proc.pid))
        dropped, answered = oversize_probe(svc.endpoint, n=OVERSIZE_N, size=2 * MAX_MSG_BYTES)
        pong = client.ping()
        after = target.real(client, "after")

        sent = sum(r.sent for r in reports)
        replies = sum(r.replies for r in reports)
        violations = [v for r in [warm, *reports] for v in r.violations]
        codes = sum((r.codes() for r in reports), start=warm.codes())
        figures = {"service": service, "seed": SEED, "fuzzed": sent + warm.sent, "replies":
                   replies + warm.replies, "codes": dict(codes), "oversize_dropped": dropped,
                   "rss_base_mib": base // 1024, "rss_max_mib": max(samples) // 1024,
                   "seconds": round(sum(r.seconds for r in [warm, *reports]), 1)}  # fmt: skip
        log.warning("fuzz figures: %s", figures)
        record_property("fuzz", figures)

        # 1. nothing lost: one well-formed reply per message, or a drop by the size limit
        assert sent >= 10_000 and replies == sent, f"{sent} sent, {replies} replies"
        assert dropped == OVERSIZE_N and answered == 0, f"{answered} oversized messages answered"
        lost = [v for v in violations if ": got " not in v]  # no/extra/malformed/misrouted replies
        assert not lost, "\n".join(lost[:20])
        # 2. alive, bounded, and still correct
        assert svc.alive() and pong and pong[0]["service"] == service
        growth = (max(samples) - base) / 1024
        assert growth < RSS_BOUND_MIB, (
            f"VmRSS grew {growth:.0f} MiB over {sent} messages: {samples}"
        )
        if isinstance(before, Path):
            assert not tree_diff(before, after), tree_diff(before, after)
        else:
            assert before == after, f"{service}: the real request answers differently after fuzzing"
        # 3. every reply had the expected code (e.g. bad_request naming the field, never `internal`)
        if violations:
            pytest.fail(
                Report(sent=sent + warm.sent, violations=violations).summary(), pytrace=False
            )
    finally:
        client.close()
        svc.stop()
