"""Prompts for the demo buffer, derived from ground truth the way a person or a VLM would give them.

Per episode (format: docs/prompts-file.md, coords abs, boxes [x0, y0, x1, y1] with
0 <= x0 < x1 <= W-1 and 0 <= y0 < y1 <= H-1, points [x, y] integer pixel columns/rows):
- `target`: a padded box around the target's visible mask on frame 0 (rgbm pipeline);
- `objects` (arm_only pipeline): arm_left / arm_right (obj ids 1, 2) get positive points on the
  links, a negative point on the gripper and a box around the arm on frame 0; gripper_left /
  gripper_right (obj ids 3, 4) get boxes on keyframes 0, T//2 and T-1.

Usage:
    ep = episode_prompts(labels, arm_points, rng)   # labels (T, H, W) uint8 label maps
    tie = buffer_entry(episode_ends, "head_cam_img", 480, 640, path="data/demo/demo.zarr")
    write_prompts("data/demo/prompts.yaml", {0: ep, 1: ...}, buffer=tie)
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from protocol.prompts_file import buffer_fingerprint
from tools.scene import LABEL_TARGET

LABEL_ARM = {"left": 10, "right": 12}
LABEL_GRIPPER = {"left": 11, "right": 13}
OBJ_IDS = {"arm_left": 1, "arm_right": 2, "gripper_left": 3, "gripper_right": 4}
TARGET_DESCRIPTION = "the red mug"


def mask_box(mask: np.ndarray, pad: float) -> list[int] | None:
    """Padded [x0, y0, x1, y1] around a (H, W) bool mask, clipped to the image; None when empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    h, w = mask.shape
    p = int(round(pad))
    return [
        max(int(xs.min()) - p, 0),
        max(int(ys.min()) - p, 0),
        min(int(xs.max()) + p, w - 1),
        min(int(ys.max()) + p, h - 1),
    ]


def _interior_point(mask: np.ndarray) -> list[int] | None:
    """The pixel deepest inside the mask (distance-transform maximum)."""
    if not mask.any():
        return None
    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return [int(x), int(y)]


def arm_points(mask: np.ndarray, candidates: np.ndarray, n_max: int = 3) -> list[list[int]]:
    """Positive points: candidates (k, 2) pixel coords that fall well inside the mask, else its deepest pixel."""
    h, w = mask.shape
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    pts: list[list[int]] = []
    for x, y in np.round(candidates).astype(int):
        if 0 <= x < w and 0 <= y < h and inner[y, x] and len(pts) < n_max:
            pts.append([int(x), int(y)])
    if len(pts) < 2:
        p = _interior_point(mask)
        if p is not None and p not in pts:
            pts.append(p)
    return pts


def episode_prompts(
    labels: np.ndarray,
    link_candidates: dict[str, np.ndarray],
    palm_points: dict[str, np.ndarray],
    rng: np.random.Generator,
    scale: float = 1.0,
) -> dict:
    """Prompts for one episode from its label maps (T, H, W) uint8 and frame-0 arm geometry.

    link_candidates[side]: (k, 2) pixel points along the arm links on frame 0;
    palm_points[side]: (2,) pixel point at the palm centre on frame 0.
    """
    n = labels.shape[0]
    target_box = mask_box(labels[0] == LABEL_TARGET, pad=rng.uniform(4.0, 9.0) * scale)
    if target_box is None:
        raise ValueError("target is not visible on frame 0; re-plan the episode (arms occlude it)")
    objects: dict[str, dict] = {}
    for side in ("left", "right"):
        arm = labels[0] == LABEL_ARM[side]
        grip0 = labels[0] == LABEL_GRIPPER[side]
        pts = arm_points(arm, link_candidates[side])
        neg = [int(v) for v in np.round(palm_points[side])]
        h, w = arm.shape
        if not (0 <= neg[0] < w and 0 <= neg[1] < h and grip0[neg[1], neg[0]]):
            neg = _interior_point(grip0)
        prompt: dict = {"frame": 0, "points": pts, "labels": [1] * len(pts)}
        if neg is not None:
            prompt["points"] = pts + [neg]
            prompt["labels"] = [1] * len(pts) + [0]
        box = mask_box(arm, pad=3.0 * scale)
        if box is not None:
            prompt["box"] = box
        objects[f"arm_{side}"] = {"obj_id": OBJ_IDS[f"arm_{side}"], "prompts": [prompt]}
    for side in ("left", "right"):
        prompts = []
        for f in sorted({0, n // 2, n - 1}):
            box = mask_box(labels[f] == LABEL_GRIPPER[side], pad=rng.uniform(2.0, 5.0) * scale)
            if box is not None:
                prompts.append({"frame": int(f), "box": box})
        objects[f"gripper_{side}"] = {"obj_id": OBJ_IDS[f"gripper_{side}"], "prompts": prompts}
    return {
        "target": {"frame": 0, "box": target_box, "description": TARGET_DESCRIPTION},
        "objects": objects,
    }


def buffer_entry(episode_ends, camera_key: str, height: int, width: int,
                 path: str | None = None) -> dict:  # fmt: skip
    """The prompts file's `buffer` entry tying it to one replay buffer (docs/prompts-file.md)."""
    entry = {
        "fingerprint": buffer_fingerprint(episode_ends, camera_key, height, width),
        "camera_key": camera_key,
        "episodes": len(episode_ends),
        "size": [int(width), int(height)],
    }
    if path is not None:
        entry["path"] = str(path)
    return entry


def write_prompts(path: str | Path, episodes: dict[int, dict], source: str = "",
                  buffer: dict | None = None) -> Path:  # fmt: skip
    """Write a version-1 prompts file (coords abs), tied to `buffer` (buffer_entry()) when
    given. Returns the path."""
    doc: dict = {"version": 1, "coords": "abs"}
    if buffer is not None:
        doc["buffer"] = buffer
    doc["episodes"] = {int(k): v for k, v in sorted(episodes.items())}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Generated by `python -m tools.demo_data` - do not edit by hand.\n"
    if source:
        header += f"# {source}\n"
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)
    path.write_text(header + text)
    return path
