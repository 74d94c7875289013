"""Scores spatial-grounding answers (seed 003): Hit@Mask, NOT_VISIBLE accuracy, L2, success@t.

An answer is parsed strictly: if it contains NOT_VISIBLE it is "not visible"; else the first
`[(x, y)]` (two numbers in parentheses inside brackets) is the point; anything else is
unparsed (recorded, counted as wrong: never a guessed point).

Per sample (`results`): pred_text, pred (parsed point or None), pred_not_visible, parse_ok,
gt (point or None), l2 (in the answer's coordinates, None when either side has no point),
hit (Hit@Mask, None when the ground truth is NOT_VISIBLE).
Hit@Mask of a point (x, y): clamp to [0, 1], pixel (min(W-1, floor(x W)), min(H-1,
floor(y H))) of the query mask, hit if > 0. Concat samples: x < 0.5 is a miss (the left,
reference half), else xR = (x - 0.5) * 2 is looked up in the query (right) image's mask.
The query mask: sample["query_mask"] (written by the builder), else inferred from the query
image as the seed does (_original.png / _inpainted.png -> _mask_dialated.png, then _mask.png).

`metrics`: total, gt_not_visible, visible_gt, not_visible_accuracy (share of NOT_VISIBLE
ground truths answered NOT_VISIBLE), false_not_visible (visible ground truths answered
NOT_VISIBLE), unparsed; mean/std/median_l2_error over visible ground truths answered with a
point; success_002/005/010 = share of visible ground truths with l2 <= 0.02/0.05/0.10 (no point
= failure); hit_at_mask = hit_at_mask_count / hit_at_mask_total (visible ground truths).
A metric with no sample to average is None.

Usage:
    report = evaluate(samples, {"train/0001/uid_1/01-02": "[(0.41, 0.52)]"})
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from tools.grounding_tasks import NOT_VISIBLE, read_mask

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
POINT_RE = re.compile(rf"\[\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
THRESHOLDS = {"success_002": 0.02, "success_005": 0.05, "success_010": 0.10}


def parse_answer(text: str | None) -> tuple[str, tuple[float, float] | None]:
    """("not_visible", None) | ("point", (x, y)) | ("unparsed", None)."""
    if not isinstance(text, str):
        return "unparsed", None
    if NOT_VISIBLE in text:
        return "not_visible", None
    m = POINT_RE.search(text)
    if m is None:
        return "unparsed", None
    x, y = float(m.group(1)), float(m.group(2))
    if not (math.isfinite(x) and math.isfinite(y)):
        return "unparsed", None
    return "point", (x, y)


def mask_path_for(sample: dict[str, Any]) -> Path:
    """The query mask of a sample (see the module docstring)."""
    if sample.get("query_mask"):
        return Path(sample["query_mask"])
    query = sample.get("query_original")
    if not query and isinstance(sample.get("image"), list) and len(sample["image"]) >= 2:
        query = sample["image"][-1]
    if not query:
        raise ValueError(f"sample {sample.get('id')!r}: no query_original or image list to find "
                         "its mask; add query_mask")  # fmt: skip
    q = str(query)
    for suffix in ("_original.png", "_inpainted.png", ".png"):
        if q.endswith(suffix):
            stem = q[: -len(suffix)]
            for kind in ("_mask_dialated.png", "_mask.png"):
                if Path(stem + kind).is_file():
                    return Path(stem + kind)
    raise FileNotFoundError(f"sample {sample.get('id')!r}: no mask next to {q} "
                            "(_mask_dialated.png or _mask.png)")  # fmt: skip


def hit_at_mask(point: tuple[float, float], mask: np.ndarray, concat: bool) -> bool:
    """Whether the point lies in the mask (concat: in the right half, mapped to it)."""
    x, y = point
    if concat:
        if x < 0.5:
            return False
        x = (x - 0.5) * 2.0
    x, y = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
    h, w = mask.shape
    return bool(mask[min(h - 1, int(math.floor(y * h))), min(w - 1, int(math.floor(x * w)))])


def _gt(sample: dict[str, Any]) -> tuple[float, float] | None:
    kind, point = parse_answer(sample["conversations"][1]["value"])
    if kind == "unparsed":
        raise ValueError(f"sample {sample.get('id')!r}: its answer "
                         f"{sample['conversations'][1]['value']!r} is neither NOT_VISIBLE nor [(x, y)]")  # fmt: skip
    return point


def score(sample: dict[str, Any], pred_text: str | None,
          masks: dict[str, np.ndarray] | None = None) -> dict[str, Any]:  # fmt: skip
    """One sample's result record."""
    kind, pred = parse_answer(pred_text)
    gt = _gt(sample)
    concat = bool(sample.get("concat")) or isinstance(sample.get("image"), str)
    rec: dict[str, Any] = {"id": sample.get("id"), "task": sample.get("task"),
                           "pred_text": pred_text, "pred": None if pred is None else list(pred),
                           "pred_not_visible": kind == "not_visible", "parse_ok": kind != "unparsed",
                           "gt": None if gt is None else list(gt), "gt_not_visible": gt is None,
                           "concat": concat, "l2": None, "hit": None}  # fmt: skip
    if gt is not None:
        path = mask_path_for(sample)
        key = str(path)
        if masks is None or key not in masks:
            m = read_mask(path)
            if masks is not None:
                masks[key] = m
        else:
            m = masks[key]
        rec["hit"] = pred is not None and hit_at_mask(pred, m, concat)
        if pred is not None:
            rec["l2"] = math.hypot(pred[0] - gt[0], pred[1] - gt[1])
    return rec


def metrics(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate the per-sample records (module docstring)."""
    nv = [r for r in results if r["gt_not_visible"]]
    vis = [r for r in results if not r["gt_not_visible"]]
    l2 = np.array([r["l2"] for r in vis if r["l2"] is not None], float)
    hits = sum(1 for r in vis if r["hit"])

    def share(n: int, d: int) -> float | None:
        return n / d if d else None

    out: dict[str, Any] = {
        "total": len(results), "gt_not_visible": len(nv), "visible_gt": len(vis),
        "not_visible_accuracy": share(sum(r["pred_not_visible"] for r in nv), len(nv)),
        "false_not_visible": sum(r["pred_not_visible"] for r in vis),
        "unparsed": sum(not r["parse_ok"] for r in results),
        "mean_l2_error": float(l2.mean()) if len(l2) else None,
        "std_l2_error": float(l2.std()) if len(l2) else None,
        "median_l2_error": float(np.median(l2)) if len(l2) else None,
        "hit_at_mask": share(hits, len(vis)), "hit_at_mask_count": hits,
        "hit_at_mask_total": len(vis),
    }  # fmt: skip
    for name, t in THRESHOLDS.items():
        out[name] = share(sum(1 for r in vis if r["l2"] is not None and r["l2"] <= t), len(vis))
    return out


def evaluate(samples: list[dict[str, Any]], predictions: dict[str, str | None]) -> dict[str, Any]:
    """{metrics, results} for samples answered by predictions (id -> text; a sample without
    a prediction is refused, so a partial answer file never scores as complete)."""
    missing = [s.get("id") for s in samples if s.get("id") not in predictions]
    if missing:
        raise KeyError(f"predictions: no answer for {len(missing)} sample(s), e.g. {missing[:3]}; "
                       "answer every sample of the data JSON")  # fmt: skip
    cache: dict[str, np.ndarray] = {}
    results = [score(s, predictions[s["id"]], cache) for s in samples]
    return {"metrics": metrics(results), "results": results}
