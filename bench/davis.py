"""Read DAVIS sequences (standard folder layout) for the video-segmentation benchmark.

Usage:
    from bench.davis import default_davis, list_sequences, load_sequence
    root = default_davis()                                    # ../shared/data/davis2016-dev
    for name in list_sequences(root):
        frames, gts = load_sequence(root, name, max_frames=20)  # (T,H,W,3) uint8 RGB, (T,H,W) bool

Layout: JPEGImages/480p/<seq>/<frame:05d>.jpg and Annotations/480p/<seq>/<frame:05d>.png
(0 background, non-zero object; DAVIS 2016 has one object per sequence).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def default_davis() -> Path:
    """../shared/data/davis2016-dev relative to the repository root."""
    return (REPO / ".." / "shared" / "data" / "davis2016-dev").resolve()


def list_sequences(root: Path, resolution: str = "480p") -> list[str]:
    """Sequence names that have both frames and annotations, sorted."""
    img = Path(root) / "JPEGImages" / resolution
    ann = Path(root) / "Annotations" / resolution
    if not img.is_dir() or not ann.is_dir():
        return []
    return sorted(p.name for p in img.iterdir() if p.is_dir() and (ann / p.name).is_dir())


def load_sequence(
    root: Path, name: str, max_frames: int | None = None, resolution: str = "480p"
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 RGB and ground truth (T, H, W) bool of one sequence."""
    img_dir = Path(root) / "JPEGImages" / resolution / name
    ann_dir = Path(root) / "Annotations" / resolution / name
    files = sorted(img_dir.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"--davis: no frames in {img_dir}")
    if max_frames is not None:
        files = files[:max_frames]
    frames, gts = [], []
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        ann = cv2.imread(str(ann_dir / (f.stem + ".png")), cv2.IMREAD_GRAYSCALE)
        if bgr is None or ann is None:
            raise FileNotFoundError(f"--davis: cannot read {f} or its annotation in {ann_dir}")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        gts.append(ann > 0)
    return np.stack(frames), np.stack(gts)


def gt_box(mask: np.ndarray) -> list[float]:
    """Tight xyxy box of a (H, W) bool mask in pixel coordinates (x1, y1 = last pixel)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(ys) == 0:
        raise ValueError("mask: empty, no box")
    return [float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1])]
