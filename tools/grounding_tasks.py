"""Spatial-grounding task JSONs (seed 003) from the exporter's `grounding` folders.

Reads `<root>/{split}/{scene_id}/uid_{uid}/{NN}_{frame}_{original,mask,mask_dialated,
inpainted}.png` and writes, under out_dir:
    t1_{split}_multi.json    Task1 cross-view correspondence: image [A_marked, B_original]
    t1_{split}_concat.json   the same pairs as one side-by-side image (A_marked | B_original)
    t2a_{split}_multi.json   Task1 pairs whose query (B) mask is empty: answer NOT_VISIBLE
    t2b_{split}_multi.json   difference grounding: image [original, inpainted], the removed region
    marked_abs/{split}/{scene}/uid_{uid}/{NN}_{frame}_marked.png   A with a red overlay
    concat_abs/{split}/{scene}/uid_{uid}/{NNa}_{NNb}_concat.jpg
    build.json               the arguments and the number of samples per file
A file with no sample is not written. Every path in the JSONs is absolute; prompts carry no
`<image>` token (the training/eval code inserts one per image).

Answers: `[(x, y)]` with x, y normalised to the query image (3 decimals), or `NOT_VISIBLE`.
The point of a mask (gt_point): the centre of the mask's tight bounding box, in continuous
pixel coordinates (pixel j spans [j, j + 1)), if the pixel under it is in the mask; else a
uniformly random mask pixel's centre (numpy default_rng([seed, crc32(mask path)]), so the
choice does not depend on the order of the walk). Normalised: (x / W, y / H).
Concat: the reference point (xL, yL) of A is given in whole-image coordinates
(xL * 0.5, yL); the answer is (0.5 + xR * 0.5, yR).

Usage:
    summary = build_tasks(Path("out/export/grounding"), Path("out/tasks"), seed=0)
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

NOT_VISIBLE = "NOT_VISIBLE"
RED = np.array([0, 0, 255], np.float32)  # BGR
NAME_RE = re.compile(r"^(\d{2})_(\d+)_original\.png$")
SPLITS = ("train", "val")

T1_PROMPT = (
    "The first image shows an object highlighted in red. Find the same object in the second "
    "image, which shows the scene from another view or time. If it is visible there, answer "
    "with one point on it as [(x, y)], where x and y are normalised to [0, 1] by the second "
    "image's width and height. If it is not visible, answer NOT_VISIBLE."
)
T1_CONCAT_PROMPT = (
    "The image shows two views side by side. In the left half an object is highlighted in red; "
    "a point on it is at ({x:.3f}, {y:.3f}) in coordinates normalised to the whole image. Find "
    "the same object in the right half. If it is visible there, answer with one point on it as "
    "[(x, y)], normalised to the whole image (so x >= 0.5). If it is not visible, answer "
    "NOT_VISIBLE."
)
T2B_PROMPT = (
    "The second image is the first image with one object removed. Point to where the object "
    "was removed, as [(x, y)] with x and y normalised to [0, 1] by the second image's width and "
    "height."
)


@dataclass(frozen=True)
class View:
    """One frame of one object: the exporter's files for it."""

    split: str
    scene: str
    uid: str
    nn: str
    frame: str
    original: Path

    def file(self, kind: str) -> Path:
        return self.original.with_name(f"{self.nn}_{self.frame}_{kind}.png")

    @property
    def rel(self) -> Path:
        return Path(self.split) / self.scene / f"uid_{self.uid}"


def read_mask(path: Path) -> np.ndarray:
    """(H, W) bool from a 0/255 PNG."""
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise FileNotFoundError(f"mask: cannot read {path}")
    if m.ndim == 3:
        m = m[..., 0]
    return m > 0


def gt_point(mask: np.ndarray, seed: int, key: str) -> tuple[float, float] | None:
    """Normalised (x, y) of the mask's point (module docstring), or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    h, w = mask.shape
    cx = (xs.min() + xs.max() + 1) / 2.0  # continuous centre of the tight bbox
    cy = (ys.min() + ys.max() + 1) / 2.0
    if mask[min(h - 1, int(cy)), min(w - 1, int(cx))]:
        return cx / w, cy / h
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    i = int(rng.integers(len(xs)))
    return (xs[i] + 0.5) / w, (ys[i] + 0.5) / h


def answer_text(point: tuple[float, float] | None) -> str:
    return NOT_VISIBLE if point is None else f"[({point[0]:.3f}, {point[1]:.3f})]"


def mark(image: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """BGR image with red blended at `alpha` over the mask's pixels."""
    out = image.astype(np.float32)
    out[mask] = (1.0 - alpha) * out[mask] + alpha * RED
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def scan(root: Path) -> dict[tuple[str, str, str], list[View]]:
    """(split, scene, uid) -> its views in NN order."""
    groups: dict[tuple[str, str, str], list[View]] = {}
    for split in SPLITS:
        for folder in sorted((root / split).glob("*/uid_*")):
            views = []
            for f in sorted(folder.iterdir()):
                m = NAME_RE.match(f.name)
                if m:
                    views.append(View(split, folder.parent.name, folder.name[4:], m.group(1),
                                      m.group(2), f.resolve()))  # fmt: skip
            if views:
                groups[(split, folder.parent.name, folder.name[4:])] = views
    return groups


def _write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), image, params):
        raise OSError(f"cannot write {path}")
    return path.resolve()


def _sample(sid: str, task: str, image: Any, query: Path, qmask: Path, prompt: str,
            point: tuple[float, float] | None, view: View, **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {"id": sid, "task": task, "image": image, "query_original": str(query),
            "query_mask": str(qmask), "gt_point": None if point is None else list(point),
            "conversations": [{"from": "human", "value": prompt},
                              {"from": "gpt", "value": answer_text(point)}],
            "split": view.split, "scene_id": view.scene, "uid": view.uid, **extra}  # fmt: skip


def build_tasks(root: Path, out_dir: Path, *, seed: int = 0, alpha: float = 0.45,
                use_dilated_mask: bool = False, mode: str = "anchor", anchor_k: int = 1,
                emit_concat: bool = True) -> dict[str, Any]:  # fmt: skip
    """Write the task JSONs and images; returns the build summary (also in build.json)."""
    if mode not in ("anchor", "all"):
        raise ValueError(f"mode: {mode!r}; use 'anchor' (the first anchor_k visible views of "
                         "an object are the references) or 'all' (every visible view)")  # fmt: skip
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha: {alpha}; use 0 < alpha <= 1 (the seed uses 0.45)")
    if anchor_k < 1:
        raise ValueError(f"anchor_k: {anchor_k}; use >= 1")
    groups = scan(root)
    if not groups:
        raise FileNotFoundError(f"data_root: no {{train,val}}/<scene>/uid_<uid>/NN_<frame>_"
                                f"original.png under {root}; point it at an export's grounding/ "
                                "folder")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = "mask_dialated" if use_dilated_mask else "mask"
    files: dict[str, list[dict[str, Any]]] = {}

    desc: str | None = None  # the object's description (object.json), for zero-shot pointing

    def add(name: str, sample: dict[str, Any]) -> None:
        files.setdefault(name, []).append({**sample, "description": desc} if desc else sample)

    for (split, scene, uid), views in groups.items():
        about = views[0].original.parent / "object.json"
        desc = json.loads(about.read_text()).get("description") if about.is_file() else None
        masks = {v.nn: read_mask(v.file(kind)) for v in views}
        points = {v.nn: gt_point(masks[v.nn], seed, str(v.rel / v.file(kind).name)) for v in views}
        visible = [v for v in views if points[v.nn] is not None]
        refs = visible[:anchor_k] if mode == "anchor" else visible
        for a in refs:
            img_a = cv2.imread(str(a.original), cv2.IMREAD_COLOR)
            marked = mark(img_a, masks[a.nn], alpha)
            marked_path = _write_image(
                out_dir / "marked_abs" / a.rel / f"{a.nn}_{a.frame}_marked.png", marked
            )
            for b in views:
                if b.nn == a.nn:
                    continue
                sid = f"{split}/{scene}/uid_{uid}/{a.nn}-{b.nn}"
                pb = points[b.nn]
                pair = {"frames": [a.frame, b.frame], "reference_point": list(points[a.nn])}
                s = _sample(sid, "t1", [str(marked_path), str(b.original)], b.original,
                            b.file(kind), T1_PROMPT, pb, b, **pair)  # fmt: skip
                add(f"t1_{split}_multi.json", s)
                if pb is None:
                    add(f"t2a_{split}_multi.json", {**s, "task": "t2a"})
                if emit_concat:
                    img_b = cv2.imread(str(b.original), cv2.IMREAD_COLOR)
                    if img_b.shape != marked.shape:
                        img_b = cv2.resize(img_b, (marked.shape[1], marked.shape[0]))
                    cpath = _write_image(out_dir / "concat_abs" / a.rel /
                                         f"{a.nn}_{b.nn}_concat.jpg", np.hstack([marked, img_b]))  # fmt: skip
                    xl, yl = points[a.nn]
                    pc = None if pb is None else (0.5 + pb[0] * 0.5, pb[1])
                    add(f"t1_{split}_concat.json",
                        _sample(sid, "t1_concat", str(cpath), b.original, b.file(kind),
                                T1_CONCAT_PROMPT.format(x=xl * 0.5, y=yl), pc, b, concat=True,
                                **pair))  # fmt: skip
        for v in visible:
            inpainted = v.file("inpainted")
            if inpainted.is_file():
                sid = f"{split}/{scene}/uid_{uid}/{v.nn}"
                add(f"t2b_{split}_multi.json",
                    _sample(sid, "t2b", [str(v.original), str(inpainted)], inpainted,
                            v.file(kind), T2B_PROMPT, points[v.nn], v, frames=[v.frame]))  # fmt: skip
    counts = {}
    for name, samples in sorted(files.items()):
        (out_dir / name).write_text(json.dumps(samples, indent=1) + "\n")
        counts[name] = len(samples)
    summary = {"data_root": str(root.resolve()), "out_dir": str(out_dir.resolve()), "seed": seed,
               "alpha": alpha, "use_dilated_mask": use_dilated_mask, "mode": mode,
               "anchor_k": anchor_k, "emit_concat": emit_concat, "objects": len(groups),
               "files": counts}  # fmt: skip
    (out_dir / "build.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
