"""Benchmark the sam service's sessions on the demo replay buffer: speed and mask IoU per role.

Usage:
    python -m tools.demo_data --out data/demo --seed 0      # once: demo data + GT + prompts
    python -m bench.bench_sam [--data data/demo] [--episodes 0 1] [--threads 2] \
        [--backend classical] [--option flow_scale=0.5]

Runs the two pipelines per episode through the SessionManager (the service's code path minus
the socket): rgbm (target box on its frame, propagate both ways) and arm_only (stage A arm
points/boxes + refinements, propagate both; stage B gripper boxes on keyframes as new ids,
propagate both). Prints a table, then as the LAST line one JSON object:
    {"fps": object-frames per second (prompts + propagation), "iou": mean over roles,
     "iou_per_role": {...}, "fps_propagate": ..., "fps_target": ..., ...}
IoU per role = mean over frames where the GT or the prediction is non-empty.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from protocol.masks import unpack
from services.sam.backends import create_backend
from services.sam.sessions import SessionManager

ROLES = ["arm_left", "arm_right", "gripper_left", "gripper_right", "target"]
TARGET_ID = 9  # obj id for the target in the rgbm session


def load_demo(data: Path):
    import zarr  # bench-only dependency (the reader service's environment has it)

    src = zarr.open(str(data / "demo.zarr"), mode="r")
    gt = zarr.open(str(data / "demo_gt.zarr"), mode="r")
    prompts = yaml.safe_load((data / "prompts.yaml").read_text())
    ends = np.asarray(src["meta/episode_ends"][:])
    return src, gt, prompts, ends


def iou_series(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    """(T, H, W) bool each -> IoU per frame where either is non-empty."""
    out = []
    for p, g in zip(pred, gt, strict=True):
        union = np.count_nonzero(p | g)
        if union:
            out.append(np.count_nonzero(p & g) / union)
    return out


def fetch(mgr: SessionManager, sid: str, oid: int, n: int, w: int) -> np.ndarray:
    chunks, start = [], 0
    while start < n:
        _, _, stop, packed = mgr.masks(sid, start, n, [oid])
        chunks.append(unpack(packed[0], w))  # (n, H, W) bool
        start = stop
    return np.concatenate(chunks)


def run_episode(mgr: SessionManager, frames: np.ndarray, ep: dict) -> tuple[dict, dict]:
    """Both pipelines on one episode; returns ({role: (T, H, W) bool}, timings)."""
    t_len, h, w, _ = frames.shape
    tm = {"put": 0.0, "prompt": 0.0, "propagate": 0.0, "object_frames": 0}
    preds: dict[str, np.ndarray] = {}

    def session() -> str:
        sid = mgr.start(h, w, t_len)
        t0 = time.perf_counter()
        for s in range(0, t_len, 16):
            mgr.put_frames(sid, s, frames[s : s + 16])
        tm["put"] += time.perf_counter() - t0
        return sid

    def prompt(sid, oid, p):
        t0 = time.perf_counter()
        mgr.add_prompt(sid, p["frame"], oid, p.get("points"), p.get("labels"), False,
                       p.get("box"), None, None)  # fmt: skip
        tm["prompt"] += time.perf_counter() - t0

    def propagate(sid):
        t0 = time.perf_counter()
        mgr.propagate(sid, "both")
        tm["propagate"] += time.perf_counter() - t0

    # rgbm: the target from one box
    sid = session()
    prompt(sid, TARGET_ID, ep["target"])
    propagate(sid)
    preds["target"] = fetch(mgr, sid, TARGET_ID, t_len, w)
    tm["object_frames"] += t_len
    mgr.close(sid)
    # arm_only: stage A arms (+ refinements), stage B grippers as new ids at keyframes
    objs = ep["objects"]
    sid = session()
    for role in ("arm_left", "arm_right"):
        for p in objs[role]["prompts"]:
            prompt(sid, objs[role]["obj_id"], p)
    propagate(sid)
    for r in ep.get("refinements") or []:
        prompt(sid, r["obj_id"], r)
    for role in ("gripper_left", "gripper_right"):
        for p in objs[role]["prompts"]:
            prompt(sid, objs[role]["obj_id"], p)
    propagate(sid)
    for role in ("arm_left", "arm_right", "gripper_left", "gripper_right"):
        preds[role] = fetch(mgr, sid, objs[role]["obj_id"], t_len, w)
        tm["object_frames"] += t_len
    mgr.close(sid)
    return preds, tm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.bench_sam", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--data", default="data/demo", help="folder written by tools.demo_data")
    ap.add_argument("--episodes", type=int, nargs="*", help="episode indices (default: all)")
    ap.add_argument("--backend", default="classical")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="backend option, VALUE read as YAML (repeatable)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2, help="OpenCV threads (cores to use)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    data = Path(args.data)
    if not (data / "demo.zarr").exists():
        print(f"no demo data in {data}; run: python -m tools.demo_data --out {data} --seed 0",
              file=sys.stderr)  # fmt: skip
        return 2
    cv2.setNumThreads(args.threads)
    options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.option)}
    backend = create_backend(args.backend, options)
    backend.setup()
    mgr = SessionManager(backend, max_sessions=2)
    src, gt, prompts, ends = load_demo(data)
    episodes = args.episodes if args.episodes else list(range(len(ends)))
    per_role: dict[str, list[float]] = {r: [] for r in ROLES}
    total = {"put": 0.0, "prompt": 0.0, "propagate": 0.0, "object_frames": 0, "target_s": 0.0}
    print(
        f"{'episode':>7} " + " ".join(f"{r:>13}" for r in ROLES) + f" {'prompt_s':>9} {'prop_s':>7}"
    )
    for e in episodes:
        lo = 0 if e == 0 else int(ends[e - 1])
        hi = int(ends[e])
        frames = np.asarray(src["data/head_cam_img"][lo:hi])  # (T, H, W, 3) uint8
        preds, tm = run_episode(mgr, frames, prompts["episodes"][e])
        row = []
        for r in ROLES:
            s = iou_series(preds[r], np.asarray(gt[f"data/gt_{r}"][lo:hi]))
            per_role[r] += s
            row.append(float(np.mean(s)) if s else float("nan"))
        for k in ("put", "prompt", "propagate", "object_frames"):
            total[k] += tm[k]
        print(f"{e:>7} " + " ".join(f"{v:>13.3f}" for v in row) +
              f" {tm['prompt']:>9.2f} {tm['propagate']:>7.2f}")  # fmt: skip
    # single-object speed: the target alone, prompt + propagation, one more pass on episode 0
    lo, hi = 0, int(ends[episodes[0]] - (0 if episodes[0] == 0 else ends[episodes[0] - 1]))
    frames = np.asarray(src["data/head_cam_img"][: hi - lo] if episodes[0] == 0 else
                        src["data/head_cam_img"][int(ends[episodes[0] - 1]) : int(ends[episodes[0]])])  # fmt: skip
    sid = mgr.start(*frames.shape[1:3], len(frames))
    mgr.put_frames(sid, 0, frames)
    t0 = time.perf_counter()
    mgr.add_prompt(sid, prompts["episodes"][episodes[0]]["target"]["frame"], TARGET_ID,
                   box=prompts["episodes"][episodes[0]]["target"]["box"])  # fmt: skip
    mgr.propagate(sid, "both")
    target_fps = len(frames) / (time.perf_counter() - t0)
    mgr.close(sid)
    role_iou = {r: round(float(np.mean(v)), 4) for r, v in per_role.items() if v}
    busy = total["prompt"] + total["propagate"]
    result = {
        "backend": args.backend,
        "episodes": episodes,
        "size": [int(frames.shape[1]), int(frames.shape[2])],
        "threads": args.threads,
        "fps": round(total["object_frames"] / busy, 2),
        "fps_propagate": round(total["object_frames"] / total["propagate"], 2),
        "fps_target": round(target_fps, 2),
        "iou": round(float(np.mean(list(role_iou.values()))), 4),
        "iou_per_role": role_iou,
        "seconds": {k: round(total[k], 2) for k in ("put", "prompt", "propagate")},
    }
    print(f"mean IoU {result['iou']:.3f}; {result['fps']:.1f} object-frames/s "
          f"(propagation alone {result['fps_propagate']:.1f}); target alone {target_fps:.1f} fps")  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
