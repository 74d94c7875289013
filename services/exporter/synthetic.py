"""Small synthetic replay buffers and masks for tests, benches and trying the exporter out.

Usage:
    src = make_replay_buffer(tmp / "src.zarr", [12, 9, 15], height=48, width=60)
    masks = synthetic_masks(12, 48, 60, [1, 2, 3, 4, 5], episode=0)   # (5, 12, 48, 60) bool
"""

from __future__ import annotations

from pathlib import Path

import numcodecs
import numpy as np
import zarr

CAMERA_KEY = "camera0_rgb"
ROLE_IDS = {"target": 1, "arm_left": 2, "arm_right": 3, "gripper_left": 4, "gripper_right": 5}


def make_replay_buffer(
    path: Path,
    lengths: list[int],
    height: int,
    width: int,
    zarr_format: int = 2,
    camera_chunk: int = 5,
    seed: int = 0,
) -> Path:
    """A diffusion_policy-layout buffer: data/camera0_rgb (N,H,W,3) uint8, data/action (N,7)
    float32, data/robot_eef_pos (N,3) float64, data/step (N,) int32, meta/episode_ends (E,)."""
    rng = np.random.default_rng(seed)
    ends = np.cumsum(lengths).astype(np.int64)  # (E,) int64
    n = int(ends[-1])
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                     (xx + yy) % 256], axis=-1).astype(np.uint8)  # fmt: skip
    rgb = np.minimum(base, 248)[None] + rng.integers(0, 8, (n, height, width, 3), dtype=np.uint8)
    side = max(2, min(height, width) // 5)
    for t in range(n):  # a bright square that moves, so every frame differs visibly
        y, x = (t * 3) % (height - side), (t * 5) % (width - side)
        rgb[t, y : y + side, x : x + side] = (255, 255, 255)
    arrays = {
        CAMERA_KEY: (rgb, (camera_chunk, height, width, 3)),
        "action": (rng.standard_normal((n, 7)).astype(np.float32), (16, 7)),
        "robot_eef_pos": (rng.standard_normal((n, 3)), (n, 3)),
        "step": (np.arange(n, dtype=np.int32), (7,)),
    }
    if zarr_format == 2:
        codec = {"compressors": numcodecs.Blosc(cname="zstd", clevel=3)}
    else:
        codec = {}  # zarr 3's default (zstd)
    root = zarr.open_group(zarr.storage.LocalStore(path), mode="w-", zarr_format=zarr_format)
    data = root.require_group("data")
    for name, (values, chunks) in arrays.items():
        arr = data.create_array(
            name, shape=values.shape, dtype=values.dtype, chunks=chunks, **codec
        )
        arr[...] = values
        arr.attrs["unit"] = "test"
    meta = root.require_group("meta")
    arr = meta.create_array(
        "episode_ends", shape=ends.shape, dtype=np.int64, chunks=ends.shape, **codec
    )
    arr[...] = ends
    root.attrs["robot"] = "synthetic"
    return path


def synthetic_masks(
    n_frames: int, height: int, width: int, obj_ids: list[int], episode: int = 0
) -> np.ndarray:
    """(n_obj, T, H, W) bool: moving discs and bars, object k offset by k; obj_id 1 is absent
    from the last frame; grippers (ids 4, 5) overlap the ends of the arms (ids 2, 3)."""
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.zeros((len(obj_ids), n_frames, height, width), bool)
    for k, obj in enumerate(obj_ids):
        for t in range(n_frames):
            cx = (width * (0.2 + 0.05 * obj) + t * 1.5 + episode) % width
            cy = height * (0.3 + 0.1 * (obj % 4))
            if obj in (2, 3):  # arms: a wide bar
                m = (
                    (abs(yy - cy) < height * 0.1)
                    & (xx < cx + width * 0.25)
                    & (xx > cx - width * 0.25)
                )
            elif obj in (4, 5):  # grippers: at the right end of arm obj-2
                ay = height * (0.3 + 0.1 * ((obj - 2) % 4))
                ax = (width * (0.2 + 0.05 * (obj - 2)) + t * 1.5 + episode) % width + width * 0.25
                m = (abs(yy - ay) < height * 0.12) & (abs(xx - ax) < width * 0.08)
            else:
                m = (yy - cy) ** 2 + (xx - cx) ** 2 < (min(height, width) * 0.15) ** 2
            out[k, t] = m
        if obj == 1 and n_frames > 1:
            out[k, -1] = False
    return out


def tree_digest(root: Path, skip: tuple[str, ...] = (".lock",)) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (for 'two runs, identical bytes')."""
    import hashlib

    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and path.name not in skip:
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def export_episodes(
    exp: object,
    lengths: list[int],
    height: int,
    width: int,
    order: list[int] | None = None,
    chunk: int = 8,
    meta: dict | None = None,
) -> dict[int, np.ndarray]:
    """Send synthetic masks of every episode (in `order`) through an Export's put_masks and
    finish_episode, `chunk` frames per put; returns episode -> (5, T, H, W) bool masks."""
    from protocol.masks import pack

    ids = list(ROLE_IDS.values())
    sent = {}
    for ep in order if order is not None else range(len(lengths)):
        masks = synthetic_masks(lengths[ep], height, width, ids, episode=ep)
        for s in range(0, lengths[ep], chunk):
            exp.put_masks(ep, s, ids, pack(masks[:, s : s + chunk]), width)
        exp.finish_episode(ep, dict(ROLE_IDS), meta or {"ep": ep})
        sent[ep] = masks
    return sent
