"""The benchmark's protocols, run through the sam session layer (SessionManager: the service's
code path minus the socket), on one sequence at a time.

Usage:
    from bench.vos_protocols import run_prompted, run_image, run_interactive
    r = run_prompted(mgr, frames, gts, "mask")      # {"pred": (T,H,W) bool, "seconds": ...}
    iou = run_image(backend, frames[0], gts[0])     # segment_image with the GT box
    r = run_interactive(mgr, frames, gts, rounds=5) # simulated annotator, J&F per round

Protocols:
- mask: the ground-truth mask of frame 0 as the prompt, propagate forward.
- box: the ground-truth box of frame 0 (what a VLM gives), propagate forward.
- image: segment_image on frame 0 with its ground-truth box (single-image box -> mask).
- interactive: start from the box protocol; for up to `rounds` rounds take the frame with
  the worst J, click a positive point at the centre (maximum of the distance transform) of
  the largest missed region and a negative one at the centre of the largest wrong region,
  re-propagate (bounded re-propagation when the session layer has it, else the whole video
  both ways), record J&F after each round.
"""

from __future__ import annotations

import inspect
import math
import time

import numpy as np

from bench.davis import gt_box
from bench.vos_metrics import next_clicks, sequence_scores
from protocol.masks import unpack
from services.sam.sessions import SessionManager
from services.sam.validation import check_box

OBJ = 1  # the one object of a DAVIS 2016 sequence


def fetch(mgr: SessionManager, sid: str, n: int, w: int) -> np.ndarray:
    """All masks of the object, in the bounded chunks the session layer returns: (T, H, W)."""
    chunks, start = [], 0
    while start < n:
        _, _, stop, packed = mgr.masks(sid, start, n, [OBJ])
        chunks.append(unpack(packed[0], w))
        start = stop
    return np.concatenate(chunks)


def open_session(mgr: SessionManager, frames: np.ndarray) -> str:
    t, h, w, _ = frames.shape
    sid = mgr.start(h, w, t)
    for s in range(0, t, 16):
        mgr.put_frames(sid, s, frames[s : s + 16])
    return sid


def run_prompted(mgr: SessionManager, frames: np.ndarray, gts: np.ndarray, kind: str) -> dict:
    """Frame-0 prompt (`mask` or `box` from the ground truth), propagate forward."""
    t, _, w, _ = frames.shape
    sid = open_session(mgr, frames)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        if kind == "mask":
            mgr.add_prompt(sid, 0, OBJ, mask=gts[0])
        elif kind == "box":
            mgr.add_prompt(sid, 0, OBJ, box=gt_box(gts[0]))
        else:
            raise ValueError(f"kind: {kind!r} is not 'mask' or 'box'")
        t1 = time.perf_counter()
        mgr.propagate(sid, "forward")
        t2, c2 = time.perf_counter(), time.process_time()
        pred = fetch(mgr, sid, t, w)
    finally:
        mgr.close(sid)
    # cpu_s: CPU seconds of this process (all its threads): frames / cpu_s is the speed one
    # free core gives, whatever else runs on the machine
    return {"pred": pred, "prompt_s": t1 - t0, "propagate_s": t2 - t1, "frames": t,
            "cpu_s": c2 - c0}  # fmt: skip


def run_image(backend, image: np.ndarray, gt: np.ndarray) -> float:
    """segment_image with the ground-truth box (validated as the service does) -> IoU."""
    h, w = gt.shape
    box = check_box(gt_box(gt), False, h, w)[None]  # (1, 4)
    m = backend.segment_image(image, box, None, None)[0]
    union = np.count_nonzero(m | gt)
    return float(np.count_nonzero(m & gt) / union) if union else 1.0


def has_bounded(mgr: SessionManager) -> bool:
    """Whether this session layer offers bounded re-propagation (propagate(bounded=True))."""
    return "bounded" in inspect.signature(mgr.propagate).parameters


def drift_hit(pred: np.ndarray, gts: np.ndarray, keyframes: set[int]) -> dict | None:
    """Does the drift alarm put the worst-J frame among its 10% most suspicious frames?
    None when services/sam/drift.py (drift_scores) is not available."""
    try:
        from services.sam.drift import drift_scores
    except ImportError:
        return None
    s = sequence_scores(pred, gts)
    jf = np.asarray(s["J_per_frame"])
    cand = [i for i in range(len(jf)) if i not in keyframes]
    worst = min(cand, key=lambda i: (jf[i], i))
    scores = np.asarray(drift_scores(pred, set(keyframes)), np.float32)
    k = max(1, math.ceil(0.1 * len(jf)))
    top = [int(i) for i in np.argsort(-scores, kind="stable")[:k]]
    return {"worst_frame": int(worst), "worst_j": float(jf[worst]), "top": top,
            "hit": worst in top}  # fmt: skip


def run_interactive(
    mgr: SessionManager, frames: np.ndarray, gts: np.ndarray, rounds: int = 5,
    target_j: float = 0.85, bounded: bool | None = None,
) -> dict:  # fmt: skip
    """The simulated annotator (module docstring). Returns J, F, J&F after 0..rounds
    corrections (a round without errors to click repeats the last figures), the corrections
    needed to reach mean J >= target_j (None: not within `rounds`), timings, the drift
    alarm's verdict on round 0."""
    t, _, w, _ = frames.shape
    bounded = has_bounded(mgr) if bounded is None else bounded
    sid = open_session(mgr, frames)
    out = {"J": [], "F": [], "JF": [], "clicked": [], "propagate_s": [], "recomputed": []}
    try:
        mgr.add_prompt(sid, 0, OBJ, box=gt_box(gts[0]))
        t0 = time.perf_counter()
        mgr.propagate(sid, "forward")
        out["propagate_s"].append(time.perf_counter() - t0)
        keyframes = {0}
        pred = fetch(mgr, sid, t, w)
        out["drift"] = drift_hit(pred, gts, keyframes)
        for r in range(rounds + 1):
            s = sequence_scores(pred, gts)
            for k in ("J", "F", "JF"):
                out[k].append(s[k])
            if r == rounds:
                break
            jf = np.asarray(s["J_per_frame"])
            order = np.argsort(jf, kind="stable")
            clicks, frame = [], None
            for f in order:  # the worst frame that still has an error to click
                clicks = next_clicks(pred[f], gts[f])
                if clicks:
                    frame = int(f)
                    break
            if frame is None:  # perfect everywhere: nothing left to correct
                for k in ("J", "F", "JF"):
                    out[k].extend([s[k]] * (rounds - r))
                break
            pts = [[x, y] for x, y, _ in clicks]
            labels = [lb for _, _, lb in clicks]
            mgr.add_prompt(sid, frame, OBJ, points=pts, labels=labels)
            keyframes.add(frame)
            out["clicked"].append({"frame": frame, "clicks": clicks})
            t0 = time.perf_counter()
            if bounded:
                res = mgr.propagate(sid, "both", bounded=True)
                out["recomputed"].append(_recomputed(res))
            else:
                mgr.propagate(sid, "both")
                out["recomputed"].append(t)
            out["propagate_s"].append(time.perf_counter() - t0)
            pred = fetch(mgr, sid, t, w)
    finally:
        mgr.close(sid)
    reach = [i for i, j in enumerate(out["J"]) if j >= target_j]
    out["to_target"] = reach[0] if reach else None
    out["reprop"] = "bounded" if bounded else "full"
    return out


def _recomputed(res) -> int | None:
    """Frames recomputed by a bounded propagate (its reply's `recomputed`), when it says."""
    if isinstance(res, dict):
        return res.get("recomputed")
    for x in res if isinstance(res, tuple) else ():
        if isinstance(x, dict) and "recomputed" in x:
            return x["recomputed"]
    return getattr(res, "recomputed", None)
