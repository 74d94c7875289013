"""Spatial-grounding folders (original / mask / dilated mask / inpainted), split by episode.

    grounding/split.json                                   the split (sets.episode_split)
    grounding/{train,val}/<ep:04d>/uid_<obj_id>/<NN>_<t:05d>_original.png    RGB frame
                                                 <NN>_<t:05d>_mask.png        0/255 mask
                                                 <NN>_<t:05d>_mask_dialated.png  (seed spelling)
                                                 <NN>_<t:05d>_inpainted.png   (inpainted_dir)
                                                 object.json  {episode, obj_id, role,
                                                               description, frames}

scene_id = the episode (4 digits), uid = the object's obj_id (objects of grounding_roles,
default the target), NN = 01.. over grounding_frames frames spread evenly over the episode
(the same frames for every object, so some views may not show it: Task1's NOT_VISIBLE).
The dilated mask uses an elliptical kernel of radius grounding_dilation. With inpainted_dir,
each frame's inpainted image is read from ProPainter's output layout
`<inpainted_dir>/<video>/frames/<t:04d>.png` (inference_propainter.py --save_frames), where
<video> is `<ep:04d>_uid_<obj_id>` (inpainted with that object's mask) or else `<ep:04d>`;
a missing file or another image size is refused. tools/grounding.py builds the task JSONs.

Usage (via the exporter): outputs=["grounding"], options={"grounding_frames": 5}
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from services.exporter.episode import EpisodeJob
from services.exporter.errors import bad
from services.exporter.fsutil import atomic_write_json, fsync_path, remove_quietly, tmp_path_for
from services.exporter.layout import Layout
from services.exporter.masks_out import ellipse_kernel, encode_png
from services.exporter.options import ExportOptions
from services.exporter.sets import (
    EVAL,
    TRAIN,
    SplitWriter,
    episode_split,
    fsync_tree,
    is_studio_approved,
    noun_phrase,
    split_record,
)

SPLITS = {TRAIN: "train", EVAL: "val"}


def grounding_frames(n_frames: int, k: int) -> list[int]:
    """k frames spread evenly over [0, n) (fewer if the episode is shorter)."""
    return sorted({int(round(v)) for v in np.linspace(0, n_frames - 1, min(k, n_frames))})


def propainter_frame(root: Path, episode: int, obj_id: int, t: int) -> Path:
    """The inpainted frame for (episode, object, frame) in a ProPainter output folder."""
    tried = []
    for video in (f"{episode:04d}_uid_{obj_id}", f"{episode:04d}"):
        path = root / video / "frames" / f"{str(t).zfill(4)}.png"
        if path.is_file():
            return path
        tried.append(str(path))
    raise bad(f"options.inpainted_dir: no inpainted frame {t} of episode {episode} (object "
              f"{obj_id}); looked for {' and '.join(tried)} (ProPainter --save_frames layout)")  # fmt: skip


class GroundingWriter(SplitWriter):
    roles_option = "grounding_roles"

    def begin(self, job: EpisodeJob) -> None:
        self.tmp: Path | None = None
        super().begin(job)
        if self.skip:
            return
        opts = job.options
        self.inpainted = Path(opts.inpainted_dir) if opts.inpainted_dir else None
        if self.inpainted is not None and not self.inpainted.is_dir():
            raise bad(f"options.inpainted_dir: {self.inpainted} is not a folder on the exporter "
                      "host; give ProPainter's output folder or leave it empty")  # fmt: skip
        self.dest = job.layout.root / "grounding" / SPLITS[self.split] / f"{job.episode:04d}"
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.frames = grounding_frames(job.n_frames, opts.grounding_frames)
        self.number = {t: i + 1 for i, t in enumerate(self.frames)}
        self.kernel = ellipse_kernel(opts.grounding_dilation)
        self.tmp = tmp_path_for(self.dest)
        for obj in self.objs:
            (self.tmp / f"uid_{obj}").mkdir(parents=True)
            about = {"episode": job.episode, "obj_id": obj, "role": job.role_of(obj) or "",
                     "description": noun_phrase(job, obj, "prompt"), "frames": self.frames}  # fmt: skip
            (self.tmp / f"uid_{obj}" / "object.json").write_text(json.dumps(about, sort_keys=True))

    def add(self, t0: int, rgb: np.ndarray | None, masks: dict[int, np.ndarray]) -> None:
        if self.skip:
            return
        job = self.job
        for t in (t for t in self.frames if t0 <= t < t0 + len(rgb)):
            stem = f"{self.number[t]:02d}_{t:05d}"
            original = encode_png(cv2.cvtColor(rgb[t - t0], cv2.COLOR_RGB2BGR))
            for obj in self.objs:
                folder = self.tmp / f"uid_{obj}"
                (folder / f"{stem}_original.png").write_bytes(original)
                m = masks[obj][t - t0].astype(np.uint8) * 255
                dil = m if self.kernel is None else cv2.dilate(m, self.kernel)
                (folder / f"{stem}_mask.png").write_bytes(encode_png(m))
                (folder / f"{stem}_mask_dialated.png").write_bytes(encode_png(dil))
                if self.inpainted is not None:
                    src = propainter_frame(self.inpainted, job.episode, obj, t)
                    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
                    if img is None or img.shape[:2] != (job.height, job.width):
                        got = "unreadable" if img is None else f"{img.shape[1]}x{img.shape[0]}"
                        raise bad(f"options.inpainted_dir: {src} is {got}, the camera frames are "
                                  f"{job.width}x{job.height}; run ProPainter at the original "
                                  "size (no --width/--height/--resize_ratio)")  # fmt: skip
                    (folder / f"{stem}_inpainted.png").write_bytes(encode_png(img))

    def commit(self) -> dict[str, str]:
        if self.skip:
            return {}
        fsync = self.job.options.fsync
        if fsync:
            fsync_tree(self.tmp)
        if self.dest.exists():
            shutil.rmtree(self.dest)
        os.rename(self.tmp, self.dest)
        if fsync:
            fsync_path(self.dest.parent)
        self.tmp = None
        return {"grounding": str(self.dest)}

    def abort(self) -> None:
        if getattr(self, "tmp", None) is not None:
            remove_quietly(self.tmp)


def combine(layout: Layout, done: list[int], n_episodes: int, opts: ExportOptions) -> Path:
    """grounding/split.json: the split and which done episodes are in the folders."""
    split = episode_split(n_episodes, opts.eval_fraction, opts.split_seed)
    included: dict[str, list[int]] = {TRAIN: [], EVAL: []}
    excluded = []
    for ep in sorted(done):
        marker = json.loads(layout.marker(ep).read_text()) if layout.marker(ep).exists() else {}
        if opts.approved_only and not is_studio_approved(marker):
            excluded.append(ep)
        elif (layout.root / "grounding" / SPLITS[split[ep]] / f"{ep:04d}").is_dir():
            included[split[ep]].append(ep)
    record = split_record(n_episodes, opts.eval_fraction, opts.split_seed, included, excluded,
                          SPLITS)  # fmt: skip
    record.update({"approved_only": opts.approved_only, "grounding_frames": opts.grounding_frames,
                   "grounding_dilation": opts.grounding_dilation,
                   "inpainted_dir": opts.inpainted_dir})  # fmt: skip
    path = layout.root / "grounding" / "split.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record, opts.fsync)
    return path
