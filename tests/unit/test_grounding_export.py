"""The exporter's grounding output: the seed's folder layout, masks, dilation, ProPainter frames.

Run: python3 -m pytest tests/unit/test_grounding_export.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from protocol.masks import pack
from services.exporter.errors import ExportError
from services.exporter.export import Export, MemoryBudget
from services.exporter.grounding_out import grounding_frames
from services.exporter.sets import episode_split
from services.exporter.source import SourceBuffer
from services.exporter.synthetic import CAMERA_KEY, make_replay_buffer

LENGTHS = [9, 13, 11]
H, W = 30, 44


def target(ep: int, n: int) -> np.ndarray:
    """(T, H, W) bool: a 5x7 block, absent from the middle third of the episode."""
    m = np.zeros((n, H, W), bool)
    for t in range(n):
        if not n // 3 <= t < 2 * n // 3:
            m[t, 10 + ep : 15 + ep, 3 + t : 10 + t] = True
    return m


def propainter_folder(root: Path, src: Path) -> Path:
    """A ProPainter --save_frames output: <root>/<ep:04d>/frames/<t:04d>.png (inverted frames)."""
    buf = SourceBuffer.open(str(src))
    for ep in range(len(LENGTHS)):
        a, b = buf.episode_range(ep)
        rgb = buf.read(CAMERA_KEY, a, b)
        (root / f"{ep:04d}" / "frames").mkdir(parents=True)
        for t in range(b - a):
            cv2.imwrite(
                str(root / f"{ep:04d}" / "frames" / f"{t:04d}.png"), 255 - rgb[t][..., ::-1]
            )
    buf.close()
    return root


def export(out: Path, src: Path, options: dict) -> dict[int, np.ndarray]:
    exp = Export.open(str(out), str(src), CAMERA_KEY, ["grounding"], options, MemoryBudget(1 << 28))
    sent = {}
    for ep, n in enumerate(LENGTHS):
        m = target(ep, n)
        exp.put_masks(ep, 0, [7], pack(m[None]), W)
        exp.finish_episode(ep, {"target": 7}, {})
        sent[ep] = m
    exp.close()
    return sent


def test_layout_masks_dilation_and_inpainted(tmp_path: Path) -> None:
    src = make_replay_buffer(tmp_path / "src.zarr", LENGTHS, H, W)
    pp = propainter_folder(tmp_path / "pp", src)
    opts = {"grounding_frames": 4, "grounding_dilation": 2, "eval_fraction": 0.34,
            "split_seed": 1, "inpainted_dir": str(pp), "fsync": False}  # fmt: skip
    sent = export(tmp_path / "out", src, opts)
    root = tmp_path / "out" / "grounding"
    split = episode_split(3, 0.34, 1)
    rec = json.loads((root / "split.json").read_text())
    assert rec["included"]["val"] == [e for e in range(3) if split[e] == "eval"]
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    buf = SourceBuffer.open(str(src))
    for ep, n in enumerate(LENGTHS):
        folder = root / ("val" if split[ep] == "eval" else "train") / f"{ep:04d}" / "uid_7"
        frames = grounding_frames(n, 4)
        assert frames[0] == 0 and frames[-1] == n - 1 and len(frames) == 4
        names = sorted(p.name for p in folder.iterdir() if p.suffix == ".png")
        assert len(names) == 4 * 4
        about = json.loads((folder / "object.json").read_text())
        assert about == {"episode": ep, "obj_id": 7, "role": "target",
                         "description": "target object", "frames": frames}  # fmt: skip
        a, _ = buf.episode_range(ep)
        for i, t in enumerate(frames):
            stem = folder / f"{i + 1:02d}_{t:05d}"
            mask = cv2.imread(f"{stem}_mask.png", cv2.IMREAD_UNCHANGED)
            assert np.array_equal(mask, sent[ep][t].astype(np.uint8) * 255)
            dil = cv2.imread(f"{stem}_mask_dialated.png", cv2.IMREAD_UNCHANGED)
            assert np.array_equal(dil, cv2.dilate(mask, kernel))
            orig = cv2.imread(f"{stem}_original.png")[..., ::-1]
            assert np.array_equal(orig, buf.read(CAMERA_KEY, a + t, a + t + 1)[0])
            inp = cv2.imread(f"{stem}_inpainted.png")[..., ::-1]
            assert np.array_equal(inp, 255 - orig)
    buf.close()


def test_missing_inpainted_frame_is_refused_naming_the_option(tmp_path: Path) -> None:
    src = make_replay_buffer(tmp_path / "src.zarr", LENGTHS, H, W)
    pp = propainter_folder(tmp_path / "pp", src)
    (pp / "0001" / "frames" / "0012.png").unlink()
    with pytest.raises(
        ExportError, match="options.inpainted_dir: no inpainted frame 12 of episode 1"
    ):
        export(tmp_path / "out", src, {"inpainted_dir": str(pp), "fsync": False})
    assert not list((tmp_path / "out" / "grounding").rglob("*0001*"))  # nothing half-written
