"""SAM3 fine-tuning sets (the two stages of the SAM3 fine-tuning guide), split by episode.

    sam3/split.json                                 how the split was made, episodes per split
    sam3/stage1/{train,test}/<ep:04d>/<t:05d>.jpg   every sam3_every-th frame (+ negatives)
    sam3/stage1/{train,test}/_annotations.coco.json COCO: images, categories, annotations
                                                    (segmentation = COCO RLE, bbox xywh, area,
                                                    iscrowd 0)
    sam3/stage2/{train,val}/<ep:04d>/<t:05d>.jpg    every sam3_video_every-th frame (1: all)
    sam3/stage2/{train,val}/annotations.json        YTVIS: videos (file_names), annotations
                                                    (segmentations/bboxes/areas per frame, null
                                                    where absent, noun_phrase), video_np_pairs
    sam3/parts/<ep:04d>.json                        one episode's tracks (combine() input)

Stage 1 images: frames t with t % sam3_every == 0. A frame where no exported object is
present is a negative; negatives are kept (seeded choice) so they make up at most
sam3_negatives of the episode's images (0.15: the guide's 10-20%). Stage-1 JPEGs are hard
links of the stage-2 ones where both stages take the frame. Stage-2 file names keep the
episode's frame index t; `frame_indices` lists them. Categories are the distinct noun phrases (option sam3_phrases:
`prompt` = the prompt's words, falling back to the role's name; `role` = the role's name),
ids 1.. in sorted order, the same in every split. Episode e is in the evaluation split
(stage1 test, stage2 val) per sets.episode_split. With approved_only, only episodes whose done
record says `source: studio, approved: true` are written and combined.

Usage (via the exporter): outputs=["sam3"], options={"sam3_every": 5, "eval_fraction": 0.2}
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from services.exporter.episode import EpisodeJob
from services.exporter.fsutil import atomic_write_json, fsync_path, remove_quietly, tmp_path_for
from services.exporter.layout import Layout
from services.exporter.options import ExportOptions
from services.exporter.sets import (
    EVAL,
    TRAIN,
    SplitWriter,
    fsync_tree,
    is_studio_approved,
    noun_phrase,
    split_record,
)
from services.exporter.ytvis import encode_jpeg, encode_rles

STAGE1 = {TRAIN: "train", EVAL: "test"}
STAGE2 = {TRAIN: "train", EVAL: "val"}
COCO_JSON = "_annotations.coco.json"
YTVIS_JSON = "annotations.json"
INFO = {"description": "maskmesh exporter: SAM3 fine-tuning set", "version": "1.0"}


def sam3_dir(layout: Layout) -> Path:
    return layout.root / "sam3"


def rle_stats(rle: dict[str, Any] | None) -> tuple[list[float] | None, int | None]:
    """bbox [x, y, w, h] and area of one RLE (None, None when absent)."""
    if rle is None:
        return None, None
    coded = {"size": rle["size"], "counts": rle["counts"].encode()}
    box = [float(v) for v in mask_utils.toBbox(coded)]
    return box, int(mask_utils.area(coded))


def keep_negatives(pos: list[int], neg: list[int], share: float, seed: int,
                   episode: int) -> list[int]:  # fmt: skip
    """Negative frames to keep so they are at most `share` of the images (seeded)."""
    if share <= 0 or not neg:
        return []
    n = min(len(neg), int(np.floor(share * len(pos) / (1.0 - share) + 1e-9)))  # 0 if no pos
    if n == 0:
        return []
    rng = np.random.default_rng([seed, episode])
    return sorted(int(t) for t in rng.choice(neg, size=n, replace=False))


class Sam3Writer(SplitWriter):
    roles_option = "sam3_roles"

    def begin(self, job: EpisodeJob) -> None:
        self.tmp2: Path | None = None
        self.tmp1: Path | None = None
        super().begin(job)
        if self.skip:
            return
        root = sam3_dir(job.layout)
        self.dest2 = root / "stage2" / STAGE2[self.split] / f"{job.episode:04d}"
        self.dest1 = root / "stage1" / STAGE1[self.split] / f"{job.episode:04d}"
        for d in (self.dest1, self.dest2):
            d.parent.mkdir(parents=True, exist_ok=True)
        (root / "parts").mkdir(parents=True, exist_ok=True)
        self.tmp2 = tmp_path_for(self.dest2)
        self.tmp2.mkdir()
        self.tmp1 = tmp_path_for(self.dest1)
        self.tmp1.mkdir()
        self.rles: dict[int, list[dict[str, Any] | None]] = {o: [] for o in self.objs}

    def add(self, t0: int, rgb: np.ndarray | None, masks: dict[int, np.ndarray]) -> None:
        if self.skip:
            return
        opts = self.job.options
        for i in range(len(rgb)):
            t = t0 + i
            if t % opts.sam3_video_every == 0:
                (self.tmp2 / f"{t:05d}.jpg").write_bytes(encode_jpeg(rgb[i], opts.jpeg_quality))
            elif t % opts.sam3_every == 0:  # a stage-1 frame the videos skip
                (self.tmp1 / f"{t:05d}.jpg").write_bytes(encode_jpeg(rgb[i], opts.jpeg_quality))
        for obj in self.objs:
            self.rles[obj].extend(encode_rles(masks[obj]))

    def commit(self) -> dict[str, str]:
        if self.skip:
            return {}
        job, opts = self.job, self.job.options
        n = job.n_frames
        sampled = list(range(0, n, opts.sam3_every))
        present = [t for t in sampled if any(self.rles[o][t] is not None for o in self.objs)]
        seen = set(present)
        absent = [t for t in sampled if t not in seen]
        negatives = keep_negatives(present, absent, opts.sam3_negatives, opts.split_seed,
                                   job.episode)  # fmt: skip
        frames = sorted(present + negatives)
        keep = set(frames)
        for t in sampled:
            name = f"{t:05d}.jpg"
            if t % opts.sam3_video_every != 0:
                if t not in keep:
                    (self.tmp1 / name).unlink()
                continue
            if t in keep:
                try:
                    os.link(self.tmp2 / name, self.tmp1 / name)
                except OSError:  # a filesystem without hard links
                    shutil.copyfile(self.tmp2 / name, self.tmp1 / name)
        tracks = []
        for obj in self.objs:
            stats = [rle_stats(r) for r in self.rles[obj]]
            tracks.append({
                "obj_id": obj, "role": job.role_of(obj) or "",
                "noun_phrase": noun_phrase(job, obj, opts.sam3_phrases),
                "segmentations": self.rles[obj],
                "bboxes": [b for b, _ in stats], "areas": [a for _, a in stats],
            })  # fmt: skip
        part = {"episode": job.episode, "split": self.split, "length": n,
                "width": job.width, "height": job.height, "stage1_frames": frames,
                "stage1_negatives": negatives, "tracks": tracks,
                "video_frames": list(range(0, n, opts.sam3_video_every))}  # fmt: skip
        for tmp, dest in ((self.tmp2, self.dest2), (self.tmp1, self.dest1)):
            if opts.fsync:
                fsync_tree(tmp)
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(tmp, dest)
            if opts.fsync:
                fsync_path(dest.parent)
        self.tmp1 = self.tmp2 = None
        part_path = sam3_dir(job.layout) / "parts" / f"{job.episode:04d}.json"
        atomic_write_json(part_path, part, opts.fsync, indent=None)
        return {"sam3_part": str(part_path), "sam3_stage1": str(self.dest1),
                "sam3_stage2": str(self.dest2)}  # fmt: skip

    def abort(self) -> None:
        for tmp in (getattr(self, "tmp1", None), getattr(self, "tmp2", None)):
            if tmp is not None:
                remove_quietly(tmp)


def _categories(parts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    roles: dict[str, str] = {}
    for part in parts:
        for tr in part["tracks"]:
            roles.setdefault(tr["noun_phrase"], tr["role"] or "object")
    cats = [
        {"id": i + 1, "name": p, "supercategory": roles[p]} for i, p in enumerate(sorted(roles))
    ]
    return cats, {c["name"]: c["id"] for c in cats}


def coco_doc(parts: list[dict[str, Any]], cats: list[dict], cat_id: dict[str, int]) -> dict:
    """Stage 1: one COCO document of the given episodes' sampled frames."""
    images, anns = [], []
    for part in parts:
        ep = part["episode"]
        for t in part["stage1_frames"]:
            images.append({"id": len(images) + 1, "file_name": f"{ep:04d}/{t:05d}.jpg",
                           "width": part["width"], "height": part["height"],
                           "episode": ep, "frame": t})  # fmt: skip
            for tr in part["tracks"]:
                seg = tr["segmentations"][t]
                if seg is None:
                    continue
                anns.append({"id": len(anns) + 1, "image_id": len(images),
                             "category_id": cat_id[tr["noun_phrase"]], "segmentation": seg,
                             "bbox": tr["bboxes"][t], "area": tr["areas"][t], "iscrowd": 0,
                             "obj_id": tr["obj_id"]})  # fmt: skip
    return {"info": INFO, "images": images, "categories": cats, "annotations": anns}


def ytvis_doc(parts: list[dict[str, Any]], cats: list[dict], cat_id: dict[str, int]) -> dict:
    """Stage 2: one YTVIS document of the given episodes (video id = episode + 1)."""
    videos, anns, pairs = [], [], []
    for part in parts:
        ep = part["episode"]
        ts = part.get("video_frames", list(range(part["length"])))
        n, vid = len(ts), ep + 1
        videos.append({"id": vid, "episode": ep, "width": part["width"], "height": part["height"],
                       "length": n, "file_names": [f"{ep:04d}/{t:05d}.jpg" for t in ts],
                       "frame_indices": ts})  # fmt: skip
        seen: set[int] = set()
        for tr in part["tracks"]:
            cid = cat_id[tr["noun_phrase"]]
            anns.append({"id": len(anns) + 1, "video_id": vid, "category_id": cid,
                         "noun_phrase": tr["noun_phrase"], "obj_id": tr["obj_id"],
                         "iscrowd": 0, "width": part["width"], "height": part["height"],
                         "length": n, "segmentations": [tr["segmentations"][t] for t in ts],
                         "bboxes": [tr["bboxes"][t] for t in ts],
                         "areas": [tr["areas"][t] for t in ts]})  # fmt: skip
            if cid not in seen:
                seen.add(cid)
                pairs.append(
                    {"video_id": vid, "category_id": cid, "noun_phrase": tr["noun_phrase"]}
                )
    return {"info": INFO, "videos": videos, "categories": cats, "annotations": anns,
            "video_np_pairs": pairs}  # fmt: skip


def combine(layout: Layout, done: list[int], n_episodes: int, opts: ExportOptions) -> Path:
    """Write both stages' annotation files and split.json from the parts of `done` episodes
    (with approved_only: only those whose done record is studio-approved)."""
    root = sam3_dir(layout)
    parts, excluded = [], []
    for ep in sorted(done):
        path = root / "parts" / f"{ep:04d}.json"
        marker = json.loads(layout.marker(ep).read_text()) if layout.marker(ep).exists() else {}
        if opts.approved_only and not is_studio_approved(marker):
            excluded.append(ep)
            continue
        if path.exists():
            parts.append(json.loads(path.read_text()))
    cats, cat_id = _categories(parts)
    included: dict[str, list[int]] = {TRAIN: [], EVAL: []}
    for split in (TRAIN, EVAL):
        mine = [p for p in parts if p["split"] == split]
        included[split] = [p["episode"] for p in mine]
        d1 = root / "stage1" / STAGE1[split]
        d2 = root / "stage2" / STAGE2[split]
        for d in (d1, d2):
            d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d1 / COCO_JSON, coco_doc(mine, cats, cat_id), opts.fsync, indent=None)
        atomic_write_json(d2 / YTVIS_JSON, ytvis_doc(mine, cats, cat_id), opts.fsync, indent=None)
    names = {TRAIN: "train", EVAL: "test (stage1) / val (stage2)"}
    record = split_record(
        n_episodes, opts.eval_fraction, opts.split_seed, included, excluded, names
    )
    record.update({"approved_only": opts.approved_only, "sam3_every": opts.sam3_every,
                   "sam3_video_every": opts.sam3_video_every,
                   "sam3_negatives": opts.sam3_negatives, "categories": cats})  # fmt: skip
    atomic_write_json(root / "split.json", record, opts.fsync)
    return root
