"""SAM2 figures of the device check: in-process (SAM2's own predictor) vs the sam service, and
a long episode with the CPU-offload options. Random weights: the speed is the same as with
the real checkpoint (same shapes, same kernels); the masks are not meaningful, only their
agreement between the two paths is reported.

Usage (from bench/device/run.py):
    ckpt = random_checkpoint("sam2.1_hiera_t", out / "ckpt", overrides)
    row = inprocess_fps(ckpt, cfg_name, frames, boxes, device, overrides)
    row = service_fps(client, frames, boxes)          # a started `sam` service, sam2 backend
    row = long_episode(ckpt, frames, device, overrides, offload=True)
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from protocol.masks import unpack

CONFIGS = {"t": "configs/sam2.1/sam2.1_hiera_t.yaml", "l": "configs/sam2.1/sam2.1_hiera_l.yaml"}
PUT_CHUNK = 16  # frames per put_frames request


def scene(n: int, h: int, w: int, n_obj: int, seed: int = 0) -> tuple[np.ndarray, list]:
    """(n, h, w, 3) uint8 frames of n_obj coloured squares drifting over a textured table, and
    each square's frame-0 box [x0, y0, x1, y1]."""
    rng = np.random.default_rng(seed)
    base = (rng.random((h // 8 + 1, w // 8 + 1, 3)) * 60 + 110).astype(np.float32)
    table = np.kron(base, np.ones((8, 8, 1), np.float32))[:h, :w]
    side = max(4, min(h, w) // 6)
    starts = [
        (int(rng.integers(0, w - side)), int(rng.integers(0, h - side))) for _ in range(n_obj)
    ]
    colours = rng.integers(0, 255, (n_obj, 3))
    frames = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        img = table.copy()
        for (x, y), c in zip(starts, colours, strict=True):
            xs = int(x + 0.3 * side * np.sin(t / 9.0)) % (w - side)
            ys = int(y + 0.3 * side * np.cos(t / 11.0)) % (h - side)
            img[ys : ys + side, xs : xs + side] = c
        frames[t] = img.astype(np.uint8)
    boxes = [[x, y, x + side, y + side] for x, y in starts]
    return frames, boxes


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _ctx(device: str) -> contextlib.ExitStack:
    import torch

    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    dev = "cuda" if device.startswith("cuda") else "cpu"
    stack.enter_context(torch.autocast(dev, dtype=torch.bfloat16))
    return stack


def random_checkpoint(size: str, folder: Path, overrides: list[str]) -> Path:
    """sam2.1_hiera_<size> with random weights (seed 0), saved like Meta's ({"model": sd})."""
    import torch
    from sam2.build_sam import build_sam2

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sam2.1_hiera_{size}_random.pt"
    torch.manual_seed(0)
    model = build_sam2(CONFIGS[size], None, device="cpu", hydra_overrides_extra=list(overrides))
    torch.save({"model": model.state_dict()}, path)
    return path


def _masks_iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def inprocess_fps(ckpt: Path, size: str, frames: np.ndarray, boxes: list, device: str,
                  overrides: list[str]) -> dict:  # fmt: skip
    """SAM2's own video predictor: JPEG folder -> init_state -> boxes on frame 0 ->
    propagate_in_video, every mask taken to the host as bool (what a caller needs)."""
    import cv2
    from sam2.build_sam import build_sam2_video_predictor

    pred = build_sam2_video_predictor(CONFIGS[size], str(ckpt), device=device,
                                      hydra_overrides_extra=list(overrides))  # fmt: skip
    folder = tempfile.mkdtemp(prefix="device-bench-")
    try:
        for t, f in enumerate(frames):
            cv2.imwrite(f"{folder}/{t:05d}.jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        with _ctx(device):
            t0 = time.perf_counter()
            state = pred.init_state(folder)
            _sync(device)
            t_init = time.perf_counter() - t0
            for i, box in enumerate(boxes):
                pred.add_new_points_or_box(state, frame_idx=0, obj_id=i + 1,
                                           box=np.asarray(box, np.float32))  # fmt: skip
            _sync(device)
            n, h, w = len(frames), frames.shape[1], frames.shape[2]
            out = np.zeros((len(boxes), n, h, w), bool)
            t0 = time.perf_counter()
            for t, _ids, logits in pred.propagate_in_video(state):
                out[:, t] = (logits[:, 0] > 0.0).cpu().numpy()
            _sync(device)
            t_prop = time.perf_counter() - t0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    del pred
    return {"fps": round(n / t_prop, 3), "propagate_s": round(t_prop, 3),
            "init_state_s": round(t_init, 3), "masks": out}  # fmt: skip


def service_fps(client, frames: np.ndarray, boxes: list) -> dict:
    """The sam service over tcp: put_frames, a box per object on frame 0, propagate forward,
    masks fetched in the chunks the service answers with. fps counts propagate + masks."""
    n, h, w = frames.shape[:3]
    sid = client.call("start_session", {"height": h, "width": w, "n_frames": n})["session"]  # fmt: skip
    try:
        t0 = time.perf_counter()
        for s in range(0, n, PUT_CHUNK):
            client.call(
                "put_frames", {"session": sid, "start": s, "frames": frames[s : s + PUT_CHUNK]}
            )
        t_put = time.perf_counter() - t0
        for i, box in enumerate(boxes):
            client.call("add_prompt", {"session": sid, "frame": 0, "obj_id": i + 1,
                                       "box": [float(v) for v in box]})  # fmt: skip
        t0 = time.perf_counter()
        client.call("propagate", {"session": sid, "direction": "forward"})
        t_prop = time.perf_counter() - t0
        ids = list(range(1, len(boxes) + 1))
        out = np.zeros((len(boxes), n, h, w), bool)
        start, t0 = 0, time.perf_counter()
        while start < n:
            r = client.call("masks", {"session": sid, "start": start, "stop": n, "obj_ids": ids})
            if list(r["obj_ids"]) != ids or r["masks"].shape[:2] != (len(ids), r["stop"] - start):
                raise AssertionError(f"masks reply breaks the contract: {r['obj_ids']} "
                                     f"{r['masks'].shape} for frames {start}-{r['stop']}")  # fmt: skip
            out[:, start : r["stop"]] = unpack(r["masks"], r["width"])
            start = int(r["stop"])
        t_masks = time.perf_counter() - t0
    finally:
        client.call("close_session", {"session": sid})
    total = t_prop + t_masks
    return {"fps": round(n / total, 3), "propagate_s": round(t_prop, 3),
            "masks_s": round(t_masks, 3), "put_frames_s": round(t_put, 3),
            "fps_with_upload": round(n / (total + t_put), 3), "masks": out}  # fmt: skip


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean IoU of two (n_obj, n, H, W) mask sets (frame 0 excluded: both are the prompt)."""
    vals = [_masks_iou(a[o, t], b[o, t]) for o in range(a.shape[0]) for t in range(1, a.shape[1])]
    return round(float(np.mean(vals)) if vals else 1.0, 4)


def long_episode(ckpt: Path, frames: np.ndarray, box: list, device: str, overrides: list[str],
                 offload: bool) -> dict:  # fmt: skip
    """One object over a long episode through the service's session layer in-process (the
    service's code path minus the socket): fps and peak GPU memory, offload on or off."""
    import torch

    from services.sam.backends.sam2_backend import Sam2Backend
    from services.sam.sessions import SessionManager

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    be = Sam2Backend(checkpoint=str(ckpt), config="sam2.1_hiera_t", device=device,
                     hydra_overrides=list(overrides),
                     offload_video_to_cpu=offload, offload_state_to_cpu=offload)  # fmt: skip
    be.setup()
    mgr = SessionManager(be, max_sessions=1, max_session_bytes=64 << 30)
    n, h, w = frames.shape[:3]
    sid = mgr.start(h, w, n)
    for s in range(0, n, PUT_CHUNK):
        mgr.put_frames(sid, s, frames[s : s + PUT_CHUNK])
    mgr.add_prompt(sid, 0, 1, None, None, False, [float(v) for v in box], None, None)
    base = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    t0 = time.perf_counter()
    mgr.propagate(sid, "forward")
    _sync(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    mgr.close(sid)
    del mgr, be
    return {"offload": offload, "frames": n, "fps": round(n / dt, 3), "seconds": round(dt, 2),
            "peak_gpu_mib": None if peak is None else round(peak / 2**20, 1),
            "gpu_mib_before_propagate": round(base / 2**20, 1) if peak is not None else None}  # fmt: skip
