"""YTVIS video annotations with per-frame COCO RLE (pycocotools), for SAM3 fine-tuning.

    ytvis/JPEGImages/<episode:04d>/<frame:05d>.jpg   the camera frames
    ytvis/videos/<episode:04d>.json                  one episode, a complete YTVIS file
    ytvis/annotations.json                           all done episodes, rebuilt by
                                                     combine() (close_export / last episode)
One annotation per object: segmentations[t] = {"size": [H, W], "counts": str} or null
where the object is absent, bboxes[t] = [x, y, w, h] or null, areas[t] = int or null.
Video id = episode + 1; category ids are fixed by role (CATEGORIES).

Usage:
    rles = encode_rles(masks)      # (n, H, W) bool -> list of RLE dicts or None
    combine(layout, done=[0, 1, 2], fsync=True)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from services.exporter.episode import EpisodeJob, Writer
from services.exporter.fsutil import (
    atomic_write_json,
    commit_dir,
    remove_quietly,
    tmp_path_for,
)
from services.exporter.layout import Layout

CATEGORIES = [
    {"id": 1, "name": "target object", "role": "target"},
    {"id": 2, "name": "left robot arm", "role": "arm_left"},
    {"id": 3, "name": "right robot arm", "role": "arm_right"},
    {"id": 4, "name": "left gripper", "role": "gripper_left"},
    {"id": 5, "name": "right gripper", "role": "gripper_right"},
    {"id": 6, "name": "object", "role": ""},  # an object without a role
]
CATEGORY_OF_ROLE = {c["role"]: c["id"] for c in CATEGORIES}
INFO = {"description": "maskmesh exporter: SAM masks of replay-buffer episodes", "version": "1.0"}


def encode_rles(masks: np.ndarray) -> list[dict[str, Any] | None]:
    """(n, H, W) bool -> per frame a COCO RLE {"size", "counts": str}, or None if empty."""
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    out: list[dict[str, Any] | None] = []
    for i, rle in enumerate(rles):
        if not masks[i].any():
            out.append(None)
        else:
            out.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()})
    return out


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cv2.imencode could not encode a {rgb.shape} JPEG")
    return buf.tobytes()


class YtvisWriter(Writer):
    needs_rgb = True

    def begin(self, job: EpisodeJob) -> None:
        super().begin(job)
        self.dest = job.layout.ytvis_frames(job.episode)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp: Path | None = tmp_path_for(self.dest)
        self.tmp.mkdir()
        self.rles: dict[int, list[dict[str, Any] | None]] = {o: [] for o in job.obj_ids}

    def add(self, t0: int, rgb: np.ndarray | None, masks: dict[int, np.ndarray]) -> None:
        quality = self.job.options.jpeg_quality
        for i in range(len(rgb)):
            (self.tmp / f"{t0 + i:05d}.jpg").write_bytes(encode_jpeg(rgb[i], quality))
        for obj, m in masks.items():
            self.rles[obj].extend(encode_rles(m))

    def commit(self) -> dict[str, str]:
        job = self.job
        commit_dir(self.tmp, self.dest, job.options.fsync)
        self.tmp = None
        path = job.layout.ytvis_video_json(job.episode)
        atomic_write_json(path, self.video_doc(), job.options.fsync, indent=None)
        return {"ytvis": str(path), "ytvis_frames": str(self.dest)}

    def video_doc(self) -> dict[str, Any]:
        job = self.job
        ep, n, h, w = job.episode, job.n_frames, job.height, job.width
        video = {
            "id": ep + 1, "episode": ep, "width": w, "height": h, "length": n,
            "file_names": [f"{ep:04d}/{t:05d}.jpg" for t in range(n)],
        }  # fmt: skip
        anns = []
        for k, obj in enumerate(job.obj_ids):
            segs = self.rles[obj]
            boxes = mask_utils.toBbox([s for s in segs if s]) if any(segs) else []
            areas = mask_utils.area([s for s in segs if s]) if any(segs) else []
            bbox_iter, area_iter = (
                iter(np.asarray(boxes).tolist()),
                iter(np.asarray(areas).tolist()),
            )
            anns.append({
                "id": k + 1, "video_id": ep + 1, "obj_id": obj,
                "category_id": CATEGORY_OF_ROLE[job.role_of(obj) or ""],
                "iscrowd": 0, "width": w, "height": h, "length": n,
                "segmentations": segs,
                "bboxes": [next(bbox_iter) if s else None for s in segs],
                "areas": [int(next(area_iter)) if s else None for s in segs],
            })  # fmt: skip
        return {"info": INFO, "categories": CATEGORIES, "videos": [video], "annotations": anns}

    def abort(self) -> None:
        if getattr(self, "tmp", None) is not None:
            remove_quietly(self.tmp)


def combine(layout: Layout, done: list[int], fsync: bool) -> Path:
    """Merge the per-episode files of `done` episodes into ytvis/annotations.json
    (annotation ids renumbered 1.. in episode, object order: deterministic)."""
    videos, anns = [], []
    for ep in sorted(done):
        path = layout.ytvis_video_json(ep)
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        videos.extend(doc["videos"])
        for ann in doc["annotations"]:
            anns.append({**ann, "id": len(anns) + 1})
    out = {"info": INFO, "categories": CATEGORIES, "videos": videos, "annotations": anns}
    atomic_write_json(layout.ytvis_json, out, fsync, indent=None)
    return layout.ytvis_json
