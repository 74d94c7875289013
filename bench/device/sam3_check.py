"""SAM3 part of the device check: a random-weight SAM3 video model through the sam service.

sam3's build_sam3_video_model(checkpoint_path=None, load_from_HF=False) builds the model
without any checkpoint; it is saved as {"model": state_dict} (the form its loader reads) and
the service loads it through its normal checkpoint option. The tokenizer vocabulary
(bpe_simple_vocab_16e6.txt.gz) is not in the sam3 wheel: pass --sam3-bpe, or put the file at
<site-packages>/sam3/assets/bpe_simple_vocab_16e6.txt.gz (services/sam/backends/sam3_state.py
lists every place it is looked for).

Usage (from bench/device/run.py):
    ckpt = sam3_random_checkpoint(out / "ckpt", bpe)
    rows = sam3_sessions(client, frames, box)     # a started `sam` service, sam3 backend
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from protocol.masks import unpack


def sam3_random_checkpoint(folder: Path, bpe: str | None) -> Path:
    import sam3
    import torch
    from sam3.model_builder import build_sam3_video_model

    from services.sam.backends.sam3_state import resolve_bpe_path

    bpe = resolve_bpe_path(bpe, str(Path(sam3.__file__).parent))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sam3_random.pt"
    torch.manual_seed(0)
    model = build_sam3_video_model(checkpoint_path=None, load_from_HF=False, bpe_path=bpe,
                                   device="cpu")  # fmt: skip
    torch.save({"model": model.state_dict()}, path)
    del model
    return path


def _check_masks(r: dict, ids: list[int], start: int, h: int, w: int) -> list[str]:
    """Problems of a `masks` reply against the service contract (empty = conforms)."""
    bad = []
    m = r.get("masks")
    if not isinstance(m, np.ndarray) or m.dtype != np.uint8 or m.ndim != 4:
        return [f"masks: expected (n_obj, n, H, ceil(W/8)) uint8, got {type(m).__name__}"]
    if list(r["obj_ids"]) != ids:
        bad.append(f"obj_ids {r['obj_ids']} != asked {ids}")
    if int(r["start"]) != start or m.shape[1] != int(r["stop"]) - start:
        bad.append(f"frames {r['start']}-{r['stop']} do not match masks {m.shape}")
    if int(r["width"]) != w or m.shape[2] != h or m.shape[3] != (w + 7) // 8:
        bad.append(f"size: width {r['width']}, masks {m.shape} for a {w}x{h} session")
    return bad


def _session(client, frames: np.ndarray, prompt: dict, direction: str) -> dict:
    n, h, w = frames.shape[:3]
    sid = client.call("start_session", {"height": h, "width": w, "n_frames": n})["session"]  # fmt: skip
    try:
        for s in range(0, n, 16):
            client.call("put_frames", {"session": sid, "start": s, "frames": frames[s : s + 16]})
        added = client.call("add_prompt", {"session": sid, **prompt})
        t0 = time.perf_counter()
        res = client.call("propagate", {"session": sid, "direction": direction})
        dt = time.perf_counter() - t0
        ids = [int(i) for i in res["obj_ids"]]
        problems, start, pixels = [], 0, 0
        while start < n and ids:
            r = client.call("masks", {"session": sid, "start": start, "stop": n, "obj_ids": ids})
            problems += _check_masks(r, ids, start, h, w)
            pixels += int(unpack(r["masks"], r["width"]).sum())
            start = int(r["stop"])
    finally:
        client.call("close_session", {"session": sid})
    return {"obj_ids": ids, "added_obj_ids": list(added.get("obj_ids", [])),
            "frames": int(res["frames"]), "propagate_s": round(dt, 3),
            "fps": round(n / dt, 3) if dt > 0 else None, "mask_pixels": pixels,
            "contract_ok": not problems, "problems": problems[:5]}  # fmt: skip


def sam3_sessions(client, frames: np.ndarray, box: list) -> dict:
    """A text prompt on frame 0 and a box prompt on the middle frame, each propagated both
    ways in its own session; every masks reply checked against the contract."""
    mid = len(frames) // 2
    text = _session(client, frames, {"frame": 0, "obj_id": 1, "text": "object"}, "both")
    boxed = _session(client, frames, {"frame": mid, "obj_id": 1,
                                      "box": [float(v) for v in box]}, "both")  # fmt: skip
    return {"text": text, "box": boxed}
