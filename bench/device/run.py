"""The prepared check of every CUDA path (issue 17): one command on a GPU host, < 8 minutes.

Usage (repo root, in the Python that has torch):
    python -m bench.device.run --out /tmp/device-check [--wheels /path/to/wheels]
        [--sam3-bpe bpe_simple_vocab_16e6.txt.gz] [--models t,l] [--budget-s 450]
    python -m bench.device.run --out /tmp/device-cpu --cpu      # tiny sizes, same code path (CI)

Steps (README.md has the details and what each figure means):
 0. --wheels DIR: pip-install the small packages the project needs, offline, from DIR
    (requirements.txt next to this file; torch is taken as it is, never installed).
 1. sam2.1_hiera_t and _l with random weights: frames/s of forward propagation at 1024 px,
    1 and 4 objects, bf16 autocast, in-process (SAM2's own predictor) and through the sam
    service (put_frames + propagate + masks over tcp loopback); ratio service / in-process.
 2. A long episode (1,000 frames, 480x640) with the CPU-offload options off and on: fps and
    peak GPU memory.
 3. SAM3 with random weights through the sam service (text and box prompt, both directions,
    every masks reply checked against the contract), if sam3 is installed.
 4. One JSON object printed last, written with the logs to --out (result.json, logs/).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.device.sam2_speed import (  # noqa: E402
    agreement,
    inprocess_fps,
    long_episode,
    random_checkpoint,
    scene,
    service_fps,
)
from protocol.client import Client  # noqa: E402
from protocol.spawn import service_args, start  # noqa: E402
from services.sam.api import CONTRACT as SAM  # noqa: E402

log = logging.getLogger("bench.device")
GOAL_RATIO = 0.95
GPU = {"frames": 120, "size": (480, 640), "long_frames": 1000, "overrides": [], "sam3_frames": 24,
       "objects": (1, 4), "warmup": True}  # fmt: skip
CPU = {"frames": 3, "size": (48, 64), "long_frames": 3, "sam3_frames": 4, "objects": (1, 2),
       "overrides": ["++model.image_size=128"], "warmup": False}  # fmt: skip


def install_wheels(wheels: Path, out: Path) -> dict:
    """pip install --no-index --find-links WHEELS --no-deps -r requirements.txt (torch untouched)."""
    req = Path(__file__).with_name("requirements.txt")
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
           "--no-deps", "-r", str(req)]  # fmt: skip
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    (out / "logs" / "pip.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"pip install from {wheels} failed (logs/pip.log): {p.stderr[-600:]}")
    return {"seconds": round(time.perf_counter() - t0, 1), "requirements": str(req)}


def environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
           "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}  # fmt: skip
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_mib=round(p.total_memory / 2**20), capability=[p.major, p.minor])
    try:
        import sam2

        env["sam2"] = getattr(sam2, "__version__", "installed")
    except ImportError:
        env["sam2"] = None
    return env


class Budget:
    """Wall-clock budget: a step that would start after it is skipped (reported as such)."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def sam_service(out: Path, name: str, backend: str, options: dict):
    args = service_args("sam", bind="tcp://127.0.0.1:0", backend=backend, options=options)
    svc = start(args, name=name, log_path=out / "logs" / f"{name}.log", ready_timeout=600)
    return svc, Client(svc.endpoint, timeout=600.0, retries=0, name=name, contract=SAM)


def sam2_step(cfg: dict, out: Path, device: str, sizes: list[str], budget: Budget) -> dict:
    res: dict = {}
    h, w = cfg["size"]
    for size in sizes:
        if budget.left() < 60:
            res[size] = {"skipped": "time budget"}
            continue
        ckpt = random_checkpoint(size, out / "ckpt", cfg["overrides"])
        opts = {"checkpoint": str(ckpt), "config": f"sam2.1_hiera_{size}", "device": device}
        if cfg["overrides"]:
            opts["hydra_overrides"] = cfg["overrides"]
        svc, client = sam_service(out, f"sam2_{size}", "sam2", opts)
        rows = {}
        try:
            info = client.call("info", {})
            if cfg["warmup"]:  # CUDA context, cuDNN and allocator warm in both processes
                warm, wboxes = scene(min(8, cfg["frames"]), h, w, 1, seed=9)
                inprocess_fps(ckpt, size, warm, wboxes, device, cfg["overrides"])
                service_fps(client, warm, wboxes)
            for n_obj in cfg["objects"]:
                frames, boxes = scene(cfg["frames"], h, w, n_obj)
                inp = inprocess_fps(ckpt, size, frames, boxes, device, cfg["overrides"])
                srv = service_fps(client, frames, boxes)
                rows[f"{n_obj}_obj"] = {
                    "inprocess_fps": inp["fps"], "service_fps": srv["fps"],
                    "ratio": round(srv["fps"] / inp["fps"], 3),
                    "service_fps_with_upload": srv["fps_with_upload"],
                    "service_put_frames_s": srv["put_frames_s"],
                    "inprocess_init_state_s": inp["init_state_s"],
                    "mask_agreement_iou": agreement(inp["masks"], srv["masks"]),
                }  # fmt: skip
                log.info("sam2 %s %d obj: %s", size, n_obj, rows[f"{n_obj}_obj"])
        finally:
            client.close()
            svc.stop()
        res[size] = {"image_size": info["backend_info"]["image_size"], "frames": cfg["frames"],
                     "frame_size": [h, w], **rows}  # fmt: skip
    return res


def long_step(cfg: dict, out: Path, device: str, budget: Budget) -> dict:
    h, w = cfg["size"]
    frames, boxes = scene(cfg["long_frames"], h, w, 1, seed=1)
    ckpt = out / "ckpt" / "sam2.1_hiera_t_random.pt"
    if not ckpt.exists():
        ckpt = random_checkpoint("t", out / "ckpt", cfg["overrides"])
    rows = {}
    for offload in (False, True):
        if budget.left() < 45:
            rows["on" if offload else "off"] = {"skipped": "time budget"}
            continue
        r = long_episode(ckpt, frames, boxes[0], device, cfg["overrides"], offload)
        rows["on" if offload else "off"] = r
        log.info("long episode offload=%s: %s", offload, r)
    return {"model": "sam2.1_hiera_t", "frames": cfg["long_frames"], "frame_size": [h, w], **rows}


def sam3_step(cfg: dict, out: Path, device: str, bpe: str | None) -> dict:
    if not device.startswith("cuda"):
        return {"skipped": "SAM3 runs on CUDA only"}
    try:
        import sam3  # noqa: F401
    except ImportError as e:
        return {"skipped": f"sam3 is not installed ({e}); see bench/device/README.md"}
    from bench.device.sam3_check import sam3_random_checkpoint, sam3_sessions

    ckpt = sam3_random_checkpoint(out / "ckpt", bpe)
    opts = {"checkpoint": str(ckpt), "device": device}
    if bpe:
        opts["bpe_path"] = bpe
    svc, client = sam_service(out, "sam3", "sam3", opts)
    try:
        h, w = cfg["size"]
        frames, boxes = scene(cfg["sam3_frames"], h, w, 1, seed=2)
        return sam3_sessions(client, frames, boxes[0])
    finally:
        client.close()
        svc.stop()


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "logs" / "device.log")
    logging.basicConfig(level=logging.INFO, handlers=[handler, logging.StreamHandler()],
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    t0 = time.monotonic()
    result: dict = {"mode": "cpu" if args.cpu else "gpu", "goal_ratio": GOAL_RATIO}
    if args.wheels:
        result["install"] = install_wheels(Path(args.wheels), out)
    import torch

    device = "cpu" if args.cpu else "cuda"
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the CPU mode (CI), or on a GPU host")
    result["environment"] = environment(device)
    cfg = dict(CPU if args.cpu else GPU)
    if args.frames:
        cfg["frames"] = args.frames
    if args.long_frames:
        cfg["long_frames"] = args.long_frames
    budget = Budget(args.budget_s if args.budget_s is not None else (3600 if args.cpu else 450))
    sizes = [s.strip() for s in args.models.split(",") if s.strip()]
    for name, fn in (("sam2", lambda: sam2_step(cfg, out, device, sizes, budget)),
                     ("long_episode", lambda: long_step(cfg, out, device, budget)),
                     ("sam3", lambda: sam3_step(cfg, out, device, args.sam3_bpe))):  # fmt: skip
        if args.skip and name in args.skip.split(","):
            result[name] = {"skipped": "--skip"}
            continue
        try:
            result[name] = fn()
        except Exception as e:  # noqa: BLE001 - one failed step must not hide the others
            log.error("%s failed:\n%s", name, traceback.format_exc())
            result[name] = {"error": f"{type(e).__name__}: {e}"}
    ratios = [r["ratio"] for m in result.get("sam2", {}).values() if isinstance(m, dict)
              for r in m.values() if isinstance(r, dict) and "ratio" in r]  # fmt: skip
    result["min_ratio"] = min(ratios) if ratios else None
    result["ratio_goal_met"] = bool(ratios) and min(ratios) >= GOAL_RATIO
    result["seconds"] = round(time.monotonic() - t0, 1)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.device.run", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", required=True, help="output folder: result.json, logs/, ckpt/")
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (CI), same code path")
    ap.add_argument("--wheels", default=None, help="folder of wheels to install offline first")
    ap.add_argument("--models", default=None, help="sam2.1 sizes, default t,l (GPU) / t (CPU)")
    ap.add_argument("--frames", type=int, default=None, help="frames per speed run (GPU 120)")
    ap.add_argument("--long-frames", type=int, default=None, help="long episode (GPU 1000)")
    ap.add_argument("--sam3-bpe", default=None, help="path of bpe_simple_vocab_16e6.txt.gz")
    ap.add_argument("--skip", default=None, help="steps to skip: sam2,long_episode,sam3")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="no step starts after this many seconds (GPU 450, CPU 3600)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.models is None:
        args.models = "t" if args.cpu else "t,l"
    result = run(args)
    print(json.dumps(result))
    failed = [k for k, v in result.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
