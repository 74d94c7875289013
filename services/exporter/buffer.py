"""Output replay buffers in zarr format 2 (zarr 2.x readers such as DexGraspVLA's open them).

Layout written (diffusion_policy's):
    <name>.zarr/
      meta/episode_ends (E,) int64      identical to the source (plus other source meta/ keys)
      data/<key>        (N, ...)        chunks (c, *frame) with c*frame_bytes ~= chunk_bytes

Safety: the buffer is created in a temp folder and renamed into place; every region write
runs under one lock (two episodes sharing a boundary chunk never interleave their
read-modify-write) and zarr's LocalStore writes each chunk to a temp file and renames it,
so a killed write leaves the old chunk, never a torn one. Touched chunk files are fsync'ed.

Usage:
    out = ZarrOut.create(path, arrays={"rgbm": ((N, H, W, 4), np.uint8, {})}, meta=..., ...)
    out.write("rgbm", start, block)       # block (n, H, W, 4) uint8 at global frame `start`
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

from services.exporter.errors import ExportError
from services.exporter.fsutil import commit_dir, fsync_path, remove_quietly, tmp_path_for

log = logging.getLogger(__name__)


def time_chunk(frame_shape: tuple[int, ...], dtype: Any, chunk_bytes: int, n_frames: int) -> int:
    """Frames per chunk so a chunk is about `chunk_bytes` (at least one whole frame).

    Matches diffusion_policy's get_optimal_chunks for frames smaller than the target,
    e.g. (T, 480, 640, 4) uint8 -> 2 frames, (T, 13) float32 -> 38462 frames.
    """
    frame_bytes = np.dtype(dtype).itemsize * math.prod(frame_shape)
    return max(1, min(n_frames, math.ceil(chunk_bytes / max(frame_bytes, 1))))


class ZarrOut:
    """A format-2 replay buffer written region by region; thread-safe."""

    def __init__(self, path: Path, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self._group = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
        self._lock = threading.Lock()
        self._arrays: dict[str, zarr.Array] = {}

    @classmethod
    def create(
        cls,
        path: Path,
        arrays: dict[str, tuple[tuple[int, ...], Any, dict[str, Any]]],
        meta: dict[str, np.ndarray],
        codec: numcodecs.abc.Codec | None,
        chunk_bytes: int,
        fsync: bool,
    ) -> ZarrOut:
        """Create the whole skeleton (no data chunks) in a temp folder, then rename it."""
        tmp = tmp_path_for(path)
        try:
            root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w-", zarr_format=2)
            data = root.require_group("data")
            meta_group = root.require_group("meta")
            for name, values in meta.items():
                arr = meta_group.create_array(
                    name, shape=values.shape, dtype=values.dtype,
                    chunks=values.shape or None, compressors=codec, fill_value=0,
                )  # fmt: skip
                arr[...] = values
            for name, (shape, dtype, attrs) in arrays.items():
                chunks = (time_chunk(shape[1:], dtype, chunk_bytes, shape[0]), *shape[1:])
                data.create_array(
                    name, shape=shape, dtype=dtype, chunks=chunks, compressors=codec,
                    fill_value=0, attributes=_sorted(attrs),
                    config={"write_empty_chunks": True},  # every written chunk has a file
                )  # fmt: skip
            if fsync:
                for dirpath, _dirs, _files in os.walk(tmp):
                    for name in _files:
                        fsync_path(Path(dirpath) / name)
                    fsync_path(Path(dirpath))
            commit_dir(tmp, path, fsync)
        except BaseException:
            remove_quietly(tmp)
            raise
        return cls(path, fsync)

    def array(self, key: str) -> zarr.Array:
        if key not in self._arrays:
            # a runtime setting (not stored): all-zero chunks are written too, so every chunk
            # an episode touched exists (and can be fsync'ed) whatever its content
            arr = self._group[f"data/{key}"]
            self._arrays[key] = arr.with_config({"write_empty_chunks": True})
        return self._arrays[key]

    def check_layout(self, expected: dict[str, tuple[tuple[int, ...], Any]]) -> None:
        """Refuse a buffer whose arrays differ from what this export would write."""
        for key, (shape, dtype) in expected.items():
            try:
                arr = self.array(key)
            except KeyError:
                arr = None
            if arr is None or tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
                got = "missing" if arr is None else f"{arr.shape} {arr.dtype}"
                raise ExportError(
                    "bad_request",
                    f"output: {self.path} data/{key} is {got}, expected {shape} "
                    f"{np.dtype(dtype)}; it was not made by this export - use a new output",
                )

    def write(self, key: str, start: int, block: np.ndarray) -> None:
        """Write frames [start, start+n) of data/<key>; chunk files fsync'ed when enabled."""
        arr = self.array(key)
        stop = start + len(block)
        with self._lock:
            arr[start:stop] = block
            if self.fsync:
                self._fsync_chunks(key, arr, start, stop)

    def _fsync_chunks(self, key: str, arr: zarr.Array, start: int, stop: int) -> None:
        clen = arr.chunks[0]
        tail = ".0" * (arr.ndim - 1)  # chunks span whole frames: one chunk per other axis
        folder = self.path / "data" / key
        for c in range(start // clen, (stop - 1) // clen + 1):
            fsync_path(folder / f"{c}{tail}")
        fsync_path(folder)

    def update_attrs(self, key: str, update: Callable[[dict[str, Any]], None]) -> None:
        """Read-modify-write data/<key>'s attrs under the lock: update(attrs) edits the dict
        in place; written in one atomic .zattrs write with sorted keys."""
        with self._lock:
            arr = self._group[f"data/{key}"]  # fresh handle: put() mutates its metadata
            attrs = json.loads(json.dumps(dict(arr.attrs)))  # a deep copy
            update(attrs)
            merged = _sorted(attrs)
            arr.attrs.put(merged)  # one .zattrs write (temp + rename by the store)
            self._arrays.pop(key, None)
            if self.fsync:
                fsync_path(self.path / "data" / key / ".zattrs")

    def attrs(self, key: str) -> dict[str, Any]:
        return dict(self._group[f"data/{key}"].attrs)


def _sorted(obj: Any) -> Any:
    """Dicts with sorted keys, recursively, so attrs JSON is byte-identical across runs."""
    if isinstance(obj, dict):
        return {str(k): _sorted(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, list | tuple):
        return [_sorted(v) for v in obj]
    return obj
