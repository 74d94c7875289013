"""Write synthetic replay buffers the way diffusion_policy (zarr 2.x) and UMI write them.

Usage::

    from services.reader.synth import write_dp_buffer, write_umi_buffer
    write_dp_buffer(tmp_path / "dp.zarr", [30, 20])         # rgbm, right_cam_img, right_state, action
    write_umi_buffer(tmp_path / "umi.zarr.zip", [10, 12])   # ZipStore, (1,H,W,3) JpegXl chunks

Used by the tests and bench/bench_reader.py; handy to try the mesh without real data.
diffusion_policy layout: ``meta/episode_ends (E,) int64`` (no compressor) and
``data/<key> (T, ...)`` with Blosc(lz4, clevel=5, NOSHUFFLE) and ~2 MB chunks along time.
Frames are deterministic in the global frame index (``synthetic_frames``) so a test can
recompute what was written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numcodecs
import numpy as np
import zarr

import services.reader.codecs  # noqa: F401  (registers the imagecodecs numcodecs codecs)

DP_BLOSC = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)


def synthetic_frames(index: np.ndarray, shape: Sequence[int], dtype: Any = np.uint8) -> np.ndarray:
    """Frames for global indices ``index`` (n,) -> (n, *shape): gradients, a moving box, noise."""
    index = np.asarray(index, dtype=np.int64)
    out = np.empty((len(index), *shape), dtype=dtype)  # (n, *shape)
    if len(shape) < 2:  # low-dim: smooth per-frame values
        k = np.arange(math.prod(shape), dtype=np.float64).reshape(shape)
        for j, i in enumerate(index):
            out[j] = np.sin(0.01 * i + k)
        return out
    h, w = shape[0], shape[1]
    yy, xx = np.mgrid[0:h, 0:w]
    for j, i in enumerate(index):
        frame = (xx + 2 * yy + 3 * int(i)) // 4
        if len(shape) == 3:
            frame = frame[..., None] + 40 * np.arange(shape[2])
        frame = frame.astype(np.uint8)
        y0 = int(i * 7) % max(1, h - h // 4)
        frame[y0 : y0 + h // 4, w // 6 : w // 3] = 200
        rng = np.random.default_rng(int(i))
        frame ^= rng.integers(0, 2, size=frame.shape, dtype=np.uint8)  # sensor noise (LSB)
        out[j] = frame
    return out


@dataclass
class Key:
    """How to write one ``data/<key>``."""

    shape: tuple[int, ...]  # per frame
    dtype: Any = np.uint8
    chunks: tuple[int, ...] | None = None  # None: ~2 MB along time, whole frames
    compressor: Any = field(
        default_factory=lambda: DP_BLOSC
    )  # numcodecs codec (format 2) / zarr codec list (format 3)
    frames: Callable[[np.ndarray], np.ndarray] | None = None  # indices -> (n, *shape)

    def make(self, index: np.ndarray) -> np.ndarray:
        if self.frames is not None:
            return self.frames(index)
        return synthetic_frames(index, self.shape, self.dtype)


def dp_chunks(frame_shape: Sequence[int], dtype: Any, target_bytes: float = 2e6) -> tuple:
    """diffusion_policy-like default: whole frames, ceil(2 MB / frame bytes) along time."""
    frame_bytes = math.prod(frame_shape) * np.dtype(dtype).itemsize
    return (max(1, math.ceil(target_bytes / frame_bytes)), *frame_shape)


def write_buffer(
    path: str | os.PathLike,
    episode_lengths: Sequence[int],
    keys: dict[str, Key],
    zarr_format: int = 2,
    episode_ends: Sequence[int] | None = None,
    attrs: dict[str, Any] | None = None,
) -> str:
    """Write a replay buffer; a path ending in .zip gets a ZipStore (as UMI ships data)."""
    path = os.fspath(path)
    ends = np.cumsum(episode_lengths, dtype=np.int64) if episode_ends is None else episode_ends
    ends = np.asarray(ends, dtype=np.int64)  # (E,) int64
    n_frames = int(np.sum(episode_lengths))
    store: Any = zarr.storage.ZipStore(path, mode="w") if path.endswith(".zip") else path
    root = zarr.open_group(store, mode="w", zarr_format=zarr_format)
    if attrs:
        root.attrs.update(attrs)
    root.require_group("data")
    root.require_group("meta")
    extra = {"compressor": None} if zarr_format == 2 else {"compressors": None}
    meta = root.create_array(
        "meta/episode_ends", shape=ends.shape, chunks=(max(1, len(ends)),), dtype=np.int64, **extra
    )
    if len(ends):
        meta[:] = ends
    for name, key in keys.items():
        chunks = key.chunks or dp_chunks(key.shape, key.dtype)
        codec = (
            {"compressor": key.compressor} if zarr_format == 2 else {"compressors": key.compressor}
        )
        arr = root.create_array(
            f"data/{name}",
            shape=(n_frames, *key.shape),
            chunks=chunks,
            dtype=key.dtype,
            **codec,
        )
        step = chunks[0] * max(1, 64 // chunks[0])  # whole chunks, bounded memory
        for s in range(0, n_frames, step):
            idx = np.arange(s, min(s + step, n_frames))
            arr[s : s + len(idx)] = key.make(idx)
    if hasattr(store, "close"):
        store.close()
    return path


def write_dp_buffer(
    path: str | os.PathLike,
    episode_lengths: Sequence[int],
    height: int = 48,
    width: int = 64,
    compressor: Any = DP_BLOSC,
    **kwargs: Any,
) -> str:
    """DexGraspVLA-style buffer: rgbm, right_cam_img, right_state (13), action (13)."""
    keys = {
        "rgbm": Key((height, width, 4), compressor=compressor),
        "right_cam_img": Key((height, width, 3), compressor=compressor),
        "right_state": Key((13,), np.float32, compressor=compressor),
        "action": Key((13,), np.float32, compressor=compressor),
    }
    return write_buffer(path, episode_lengths, keys, **kwargs)


def jpegxl(lossless: bool = True) -> numcodecs.abc.Codec:
    """The imagecodecs_jpegxl codec as UMI registers it; lossless for byte-exact tests.

    Lossy is UMI's quality (level 80); effort 1 / 3 keeps writing fast. Decoding ignores both.
    """
    from imagecodecs.numcodecs import Jpegxl

    if lossless:
        return Jpegxl(lossless=True, effort=1)
    return Jpegxl(level=80, lossless=False, effort=3)


def write_umi_buffer(
    path: str | os.PathLike,
    episode_lengths: Sequence[int],
    height: int = 48,
    width: int = 64,
    lossless: bool = True,
) -> str:
    """UMI-style buffer: camera0_rgb (1,H,W,3) JpegXl chunks + robot0_* low-dim keys."""
    keys = {
        "camera0_rgb": Key(
            (height, width, 3), chunks=(1, height, width, 3), compressor=jpegxl(lossless)
        ),  # fmt: skip
        "robot0_eef_pos": Key((3,), np.float32, compressor=DP_BLOSC),
        "robot0_gripper_width": Key((1,), np.float32, compressor=DP_BLOSC),
    }
    return write_buffer(path, episode_lengths, keys)
