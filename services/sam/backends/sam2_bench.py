"""Measure SAM2 video-state initialisation: in-memory frames vs the JPEG-folder round trip.

Usage (sam2 venv):
    python -m services.sam.backends.sam2_bench --frames 100 --height 480 --width 640
    python -m services.sam.backends.sam2_bench --checkpoint sam2.1_hiera_large.pt --device cuda

What is timed, for T frames of H x W RGB already in memory (as after put_frames):
- jpeg:   write T JPEGs (cv2, quality 95) + sam2's own loader (PIL decode, resize, normalise
          into a (T, 3, S, S) float32 tensor); with --init-state also predictor.init_state,
          which adds the frame-0 image encoding.
- memory: memory_inference_state (a lazy view, nothing converted) + converting every frame
          once on demand (what a propagation pays, spread over its frames).
Memory column: bytes of video the state holds besides the session's uint8 store.
Without --checkpoint a random-weight model is built (the weights do not matter here).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import numpy as np
import torch


def _frames(t: int, h: int, w: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(0)
    small = (rng.random((t, h // 8, w // 8, 3)) * 255).astype(np.uint8)
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC) for f in small])


def _model(args: argparse.Namespace):
    if args.checkpoint:
        from services.sam.backends.sam2_build import build_video_predictor

        return build_video_predictor(args.config, args.checkpoint, args.device)[0]
    from sam2.build_sam import build_sam2_video_predictor

    cfg = args.config or "configs/sam2.1/sam2.1_hiera_t.yaml"
    return build_sam2_video_predictor(cfg, None, device=args.device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    from sam2.utils.misc import load_video_frames

    from services.sam.backends.sam2_state import memory_inference_state, write_jpeg_folder

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--init-state", action="store_true", help="also time predictor.init_state")
    args = p.parse_args(argv)
    frames = _frames(args.frames, args.height, args.width)  # (T, H, W, 3) uint8
    model = _model(args)
    s, dev = int(model.image_size), torch.device(args.device)
    rows = []

    folder = tempfile.mkdtemp(prefix="sam2-bench-")
    try:
        t0 = time.perf_counter()
        write_jpeg_folder(frames, folder)
        t1 = time.perf_counter()
        images, _, _ = load_video_frames(folder, s, False, compute_device=dev)
        _sync(args.device)
        t2 = time.perf_counter()
        rows.append(("jpeg write", t1 - t0, None))
        rows.append(("jpeg load+resize (sam2)", t2 - t1, images.numel() * images.element_size()))
        del images
        if args.init_state:
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
                t3 = time.perf_counter()
                model.init_state(folder)
                _sync(args.device)
                rows.append(("jpeg init_state (sam2)", time.perf_counter() - t3, None))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    t0 = time.perf_counter()
    state = memory_inference_state(model, frames)
    t1 = time.perf_counter()
    for t in range(args.frames):
        state["images"][t]
    _sync(args.device)
    t2 = time.perf_counter()
    rows.append(("memory state", t1 - t0, 0))
    rows.append(("memory convert all frames", t2 - t1, 0))

    jpeg_total = rows[0][1] + rows[1][1]
    mem_total = rows[-2][1] + rows[-1][1]
    print(f"T={args.frames} {args.height}x{args.width} -> {s}x{s} on {args.device}")
    for name, sec, nbytes in rows:
        mem = "" if nbytes is None else f"{nbytes / 2**20:10.1f} MiB"
        print(f"  {name:28s} {sec * 1000:10.1f} ms  {sec * 1000 / args.frames:7.2f} ms/frame {mem}")
    print(f"  before the first prompt: jpeg {jpeg_total:.2f} s vs memory {rows[-2][1]:.4f} s")
    ratio = jpeg_total / max(mem_total, 1e-9)
    print(
        f"  all frames converted:    jpeg {jpeg_total:.2f} s vs memory {mem_total:.2f} s ({ratio:.2f}x)"
    )


if __name__ == "__main__":
    main()
