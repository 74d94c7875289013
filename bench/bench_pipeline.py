"""Pipeline benchmark: is IO hidden behind SAM compute, and do SAM replicas scale?

Usage:
    python -m bench.bench_pipeline [--episodes 16 --frames 30 --delay 0.03 --replicas 4
                                    --height 96 --width 128 --check]
    (`make bench-pipeline`; the last line printed is one JSON object)

One run, side by side, on a generated buffer (tools.demo_data), real services (reader,
exporter, SAM replicas as subprocesses) and the rgbm pipeline (target boxes from the
generated prompts file, export of data/rgbm):
  (a) one SAM replica:  overlap_ratio = wall / (frames x delay); target <= 1.15
      (reading, uploading, prompting and exporting hidden behind SAM compute)
  (b) `--replicas` SAM replicas: scaling_4x = throughput(b) / throughput(a); target >= 3.2

Benchmark knob: the GPU time SAM would spend is stood in for by an artificial per-frame delay,
`bench_delay_per_frame_s`, added by a thin wrapper around the classical backend (below:
DelayedClassicalBackend): every propagated frame takes that long in total - the classical
backend's real work (whose masks are returned), then a sleep for the rest of the budget.
The SAM replicas run it through this module's service mode (what tests/helpers.spawn_service
starts): `python -m bench.bench_pipeline --bind tcp://127.0.0.1:0 --backend bench_delay
--option bench_delay_per_frame_s=0.03`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from services.sam.backends.classical import ClassicalBackend

BENCH_BACKEND = "bench_delay"
# classical options of the stand-in: one OpenCV thread per replica and the fastest optical
# flow and the lighter flow_colour tracker (the default `local` one costs about twice its CPU), so
# the replicas' own CPU work stays small next to the simulated GPU time
SAM_OPTIONS = {"threads": 1, "flow_preset": "ultrafast", "tracker": "flow_colour"}
TARGET_OVERLAP = 1.15
TARGET_SCALING = 3.2


class DelayedClassicalBackend(ClassicalBackend):
    """The classical backend whose propagation takes `bench_delay_per_frame_s` per frame: after
    each frame's real classical work it sleeps until that frame's time budget is used up (a
    stand-in for a GPU model with that per-frame time: it blocks the replica's worker without
    using a CPU core). BENCHMARK ONLY: never configure it for real labelling."""

    name = BENCH_BACKEND

    def __init__(self, bench_delay_per_frame_s: float = 0.0, **classical_options):
        if bench_delay_per_frame_s < 0:
            raise ValueError(
                f"bench_delay_per_frame_s: must be >= 0, got {bench_delay_per_frame_s}"
            )
        super().__init__(**classical_options)
        self.bench_delay_per_frame_s = float(bench_delay_per_frame_s)

    def propagate(self, state, windows):
        due = time.perf_counter()
        for t, masks in super().propagate(state, windows):
            due += self.bench_delay_per_frame_s  # the benchmark knob: simulated GPU time
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            yield t, masks

    def info(self) -> dict:
        return {**super().info(), "bench_delay_per_frame_s": self.bench_delay_per_frame_s}


def serve_sam(argv: list[str]) -> None:
    """Service mode: the sam service with the delayed backend registered as `bench_delay`."""
    from protocol.runner import service_main
    from services.sam.backends import BACKENDS
    from services.sam.service import build_service

    BACKENDS[BENCH_BACKEND] = "bench.bench_pipeline:DelayedClassicalBackend"
    service_main("sam", build_service, argv)


def _services_yaml(path: Path, endpoints: dict[str, list[str]]) -> Path:
    doc = {"version": 1, "services": {
        name: {"endpoints": eps, "backend": "bench", "timeout_s": 600, "retries": 1}
        for name, eps in endpoints.items()}}  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


def _warm_up(endpoint: str, height: int, width: int) -> None:
    """One tiny session per replica first, so OpenCV's first-call set-up is not timed."""
    import numpy as np

    from protocol.client import Client
    from services.sam.api import CONTRACT

    with Client(endpoint, timeout=60, contract=CONTRACT) as c:
        frames = np.zeros((2, height, width, 3), np.uint8)  # (2, H, W, 3) uint8
        frames[:, height // 4 : height // 2, width // 4 : width // 2] = 200
        sid = c.call("start_session", {"height": height, "width": width, "n_frames": 2})["session"]
        c.call("put_frames", {"session": sid, "start": 0, "frames": frames})
        box = [width / 5, height / 5, width / 1.8, height / 1.8]
        c.call("add_prompt", {"session": sid, "frame": 0, "obj_id": 1, "box": box})
        c.call("propagate", {"session": sid})
        c.call("close_session", {"session": sid})


def _run(cfg: dict, buffer: Path, out: Path, services: Path) -> tuple[float, dict]:
    from orchestrator.run import run_pipeline

    t0 = time.perf_counter()
    report = run_pipeline(cfg, str(buffer), str(out), str(services))
    wall = time.perf_counter() - t0
    if report["totals"]["done"] != report["totals"]["episodes"]:
        bad = [(e["episode"], e["error"]) for e in report["episodes"] if e["result"] != "done"]
        raise SystemExit(f"bench: episodes failed: {bad}")
    return wall, report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--bind" in argv:
        serve_sam(argv)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--frames", type=int, default=30, help="frames per episode")
    ap.add_argument(
        "--delay", type=float, default=0.03, help="bench_delay_per_frame_s (simulated GPU s/frame)"
    )
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument(
        "--keep", action="store_true", help="keep the temp folder (data, outputs, logs)"
    )
    args = ap.parse_args(argv)

    from tests.helpers import spawn_service, stop_process
    from tools.demo_data import DemoConfig, write_demo

    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    paths = write_demo(DemoConfig(seed=0, episodes=args.episodes, frames=args.frames,
                                  height=args.height, width=args.width), tmp / "data")  # fmt: skip
    procs = []
    try:
        eps: dict[str, list[str]] = {}
        for name, backend in (("reader", "zarr"), ("exporter", "local")):
            proc, ep, _ = spawn_service(name, backend=backend, log_path=tmp / f"{name}.log")
            procs.append(proc)
            eps[name] = [ep]
        eps["sam"] = []
        for i in range(args.replicas):
            proc, ep, _ = spawn_service("sam", backend=BENCH_BACKEND, module="bench.bench_pipeline",
                                        options={"bench_delay_per_frame_s": args.delay, **SAM_OPTIONS},
                                        log_path=tmp / f"sam{i}.log")  # fmt: skip
            procs.append(proc)
            eps["sam"].append(ep)
        for ep in eps["sam"]:
            _warm_up(ep, args.height, args.width)
        one = _services_yaml(tmp / "services_1.yaml", {**eps, "sam": eps["sam"][:1]})
        many = _services_yaml(tmp / "services_n.yaml", eps)
        cfg = {"pipeline": "rgbm", "camera_key": "head_cam_img", "outputs": ["rgbm"],
               "prompts_file": str(paths["prompts"]), "prompt": {"source": "file"},
               "run": {"progress": False}}  # fmt: skip
        frames = args.episodes * args.frames
        compute = frames * args.delay
        wall_1, rep_1 = _run(cfg, paths["data"], tmp / "out_1", one)
        wall_n, rep_n = _run(cfg, paths["data"], tmp / "out_n", many)
    finally:
        for p in procs:
            stop_process(p)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    overlap = wall_1 / compute
    scaling = wall_1 / wall_n  # same frames: throughput ratio = wall-time ratio
    print(f"pipeline rgbm, {args.episodes} episodes x {args.frames} frames of {args.width}x{args.height}, "
          f"SAM bench_delay_per_frame_s={args.delay} (simulated GPU time {compute:.2f}s per replica-run)")  # fmt: skip
    print(
        f"{'setup':<14} {'wall s':>7} {'frames/s':>9} {'sam busy':>9} {'read busy':>10} {'export busy':>12}"
    )
    for label, wall, rep in (
        ("1 replica", wall_1, rep_1),
        (f"{args.replicas} replicas", wall_n, rep_n),
    ):
        b = rep["totals"]["busy"]
        print(
            f"{label:<14} {wall:>7.2f} {frames / wall:>9.1f} {b['sam']:>9.0%} {b['read']:>10.0%} {b['export']:>12.0%}"
        )
    ok_overlap, ok_scaling = overlap <= TARGET_OVERLAP, scaling >= TARGET_SCALING
    print(f"(a) overlap_ratio = wall / (frames x delay) = {wall_1:.2f} / {compute:.2f} = {overlap:.3f} "
          f"(target <= {TARGET_OVERLAP}: {'ok' if ok_overlap else 'MISSED'})")  # fmt: skip
    print(f"(b) scaling_{args.replicas}x = throughput({args.replicas}) / throughput(1) = {scaling:.2f} "
          f"(target >= {TARGET_SCALING}: {'ok' if ok_scaling else 'MISSED'})")  # fmt: skip
    result = {
        "overlap_ratio": round(overlap, 4),
        "scaling_4x": round(scaling, 3),
        "replicas": args.replicas,
        "wall_1_s": round(wall_1, 3),
        "wall_n_s": round(wall_n, 3),
        "frames": frames,
        "delay_per_frame_s": args.delay,
        "frames_per_s_1": round(frames / wall_1, 2),
        "frames_per_s_n": round(frames / wall_n, 2),
        "sam_busy_1": rep_1["totals"]["busy"]["sam"],
        "sam_busy_n": rep_n["totals"]["busy"]["sam"],
        "targets": {"overlap_ratio": TARGET_OVERLAP, "scaling_4x": TARGET_SCALING},
        "pass": ok_overlap and ok_scaling,
    }
    print(json.dumps(result))
    return 1 if args.check and not result["pass"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
