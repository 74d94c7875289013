"""`make demo`: the whole mesh end to end on generated data, scored against ground truth.

Usage:
    python -m tools.demo [--data data/demo] [--out out/demo] [--services configs/services.yaml]

The services config is --services, else $SERVICES_CONFIG, else configs/services.yaml
(protocol.config.services_config_path); the first line printed says which file is used.

Steps: generate the demo replay buffer (deterministic, seed 0) if it is missing; `make up`
(build light environments, start reader, sam, vlm, exporter, wait for ping); run the rgbm
pipeline and the arm-only pipeline with the prompts in configs/prompts/demo.yaml; score the
exported masks against the ground truth; stop the services; write OUT/report.json and print
a table whose last line is `demo ok: rgbm IoU X, arm-only IoU Y, N frames in S s`.
Exits 1 when a step failed or a score is below its threshold (`demo FAILED: ...`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import zarr

from orchestrator.config import load_pipeline
from protocol.config import describe_services_source, services_config_path
from tools import launch
from tools.demo_data import DemoConfig, write_demo

ROOT = Path(__file__).resolve().parents[1]
RGBM_CONFIG = "configs/pipelines/rgbm_demo.yaml"
ARM_CONFIG = "configs/pipelines/arm_only_demo.yaml"


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Per-frame IoU of two (H, W) bool masks; 1.0 when both are empty."""
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


def score_rgbm(out: Path, gt_path: Path) -> dict:
    """Mean per-frame IoU of data/rgbm[..., 3] against gt_target, per episode and overall."""
    pred = zarr.open_group(str(out / "rgbm.zarr"), mode="r")
    gt = zarr.open_group(str(gt_path), mode="r")
    ends = np.asarray(gt["meta/episode_ends"][:])
    per_ep, all_ious = [], []
    for e, stop in enumerate(ends):
        start = 0 if e == 0 else int(ends[e - 1])
        m = np.asarray(pred["data/rgbm"][start:stop, ..., 3]) > 0  # (T, H, W)
        g = np.asarray(gt["data/gt_target"][start:stop])
        ious = [iou(m[t], g[t]) for t in range(len(g))]
        per_ep.append(round(float(np.mean(ious)), 4))
        all_ious += ious
    return {
        "iou": round(float(np.mean(all_ious)), 4),
        "per_episode": per_ep,
        "frames": len(all_ious),
    }


def score_arm_only(out: Path, gt_path: Path, radius: int) -> dict:
    """Mean per-frame IoU of the arm-only PNGs against (arms & ~grippers) of the GT, dilated alike."""
    gt = zarr.open_group(str(gt_path), mode="r")
    ends = np.asarray(gt["meta/episode_ends"][:])
    per_ep, all_ious = [], []
    for e, stop in enumerate(ends):
        start = 0 if e == 0 else int(ends[e - 1])
        arms = np.asarray(gt["data/gt_arm_left"][start:stop]) | np.asarray(
            gt["data/gt_arm_right"][start:stop]
        )
        grip = np.asarray(gt["data/gt_gripper_left"][start:stop]) | np.asarray(
            gt["data/gt_gripper_right"][start:stop]
        )
        want = arms & ~grip  # (T, H, W)
        ious = []
        for t in range(stop - start):
            png = out / "arm_only" / f"{e:04d}" / f"{t:05d}.png"
            img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
            if img is None:
                raise FileNotFoundError(f"arm-only mask {png} is missing or unreadable")
            ious.append(iou(img > 0, dilate(want[t], radius)))
        per_ep.append(round(float(np.mean(ious)), 4))
        all_ious += ious
    return {
        "iou": round(float(np.mean(all_ious)), 4),
        "per_episode": per_ep,
        "frames": len(all_ious),
    }


def run(args: argparse.Namespace) -> int:
    from orchestrator.api import run_pipeline  # the orchestrator's library entry point

    t0 = time.monotonic()
    data, out = Path(args.data), Path(args.out)
    if not (data / "demo.zarr" / "meta" / "episode_ends").exists() or args.regenerate:
        print(f"generating demo data in {data} ...", flush=True)
        write_demo(DemoConfig(seed=0), data)
    if out.exists():
        shutil.rmtree(out)  # the demo always starts from scratch (resume is tested elsewhere)
    out.mkdir(parents=True)
    services, origin = services_config_path(args.services)
    print(describe_services_source(services, origin), flush=True)
    args.services = services
    report: dict = {"data": str(data), "services": services, "steps": {}}
    failed: list[str] = []
    rc = launch.up(args.services, None, None)
    if rc != 0:
        print("demo FAILED: services did not start (see the log tail above)")
        return 1
    try:
        for name, cfg in (("rgbm", RGBM_CONFIG), ("arm_only", ARM_CONFIG)):
            t = time.monotonic()
            try:
                rep = run_pipeline(cfg, data / "demo.zarr", out / name, args.services)
            except Exception as e:  # a failed step is reported, the next one still runs
                failed.append(f"{name} pipeline: {type(e).__name__}: {e}")
                report["steps"][name] = {"error": str(e)}
                continue
            report["steps"][name] = {"seconds": round(time.monotonic() - t, 2), "report": rep}
            bad = [e for e in rep.get("episodes", []) if e.get("result") != "done"]
            if bad:
                failed.append(
                    f"{name} pipeline: {len(bad)} episode(s) failed: {bad[0].get('error', '?')}"
                )
    finally:
        launch.down(args.services)
    scores = {}
    if "rgbm" in report["steps"] and "error" not in report["steps"]["rgbm"]:
        scores["rgbm"] = score_rgbm(out / "rgbm", data / "demo_gt.zarr")
    if "arm_only" in report["steps"] and "error" not in report["steps"]["arm_only"]:
        # The ground truth is dilated exactly as the pipeline dilates its masks.
        radius = load_pipeline(ARM_CONFIG).arm_only.dilation_radius
        scores["arm_only"] = score_arm_only(out / "arm_only", data / "demo_gt.zarr", radius)
    report["scores"] = scores
    for key, floor in (("rgbm", args.min_rgbm_iou), ("arm_only", args.min_arm_iou)):
        if key in scores and scores[key]["iou"] < floor:
            failed.append(f"{key} IoU {scores[key]['iou']:.3f} is below {floor}")
    seconds = time.monotonic() - t0
    frames = sum(s["frames"] for s in scores.values())  # frames processed, both pipelines
    report.update({"seconds": round(seconds, 1), "frames": frames, "failed": failed})
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"\n{'pipeline':<10}{'IoU':>8}  per episode")
    for key, s in scores.items():
        print(f"{key:<10}{s['iou']:>8.3f}  {s['per_episode']}")
    print(f"report: {out / 'report.json'}")
    if failed:
        print("demo FAILED: " + "; ".join(failed))
        return 1
    r, a = scores["rgbm"]["iou"], scores["arm_only"]["iou"]
    print(f"demo ok: rgbm IoU {r:.3f}, arm-only IoU {a:.3f}, {frames} frames in {seconds:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/demo", help="demo data folder (generated if missing)")
    ap.add_argument("--out", default="out/demo", help="output folder (replaced on every run)")
    ap.add_argument(
        "--services",
        default=None,
        help="services config (default: $SERVICES_CONFIG, else configs/services.yaml)",
    )
    ap.add_argument("--regenerate", action="store_true", help="regenerate the demo data")
    ap.add_argument("--min-rgbm-iou", type=float, default=0.85)
    ap.add_argument("--min-arm-iou", type=float, default=0.80)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
