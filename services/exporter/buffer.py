"""Output replay buffers in zarr format 2 (zarr 2.x readers such as DexGraspVLA's open them).

Layout written (diffusion_policy's):
    <name>.zarr/                        root attrs: the source's root attrs
      meta/episode_ends (E,) int64      identical to the source (plus other source meta/ keys)
      data/<key>        (N, ...)        new arrays: optimal_chunks() (diffusion_policy's
                                        get_optimal_chunks rule, ~chunk_bytes per chunk);
                                        raw copies: the source's own chunks, codec and bytes

Safety: the buffer is created in a temp folder and renamed into place; every region write
runs under one lock (two episodes sharing a boundary chunk never interleave their
read-modify-write) and zarr's LocalStore writes each chunk to a temp file and renames it,
so a killed write leaves the old chunk, never a torn one. Touched chunk files are fsync'ed.

Usage:
    out = ZarrOut.create(path, arrays={"rgbm": ((N, H, W, 4), np.uint8, {})}, meta=..., ...)
    out.write("rgbm", start, block)       # block (n, H, W, 4) uint8 at global frame `start`
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

from services.exporter.errors import ExportError
from services.exporter.fsutil import commit_dir, fsync_path, remove_quietly, tmp_path_for

log = logging.getLogger(__name__)


def optimal_chunks(shape: tuple[int, ...], dtype: Any, chunk_bytes: int) -> tuple[int, ...]:
    """Chunks of about `chunk_bytes`, by the rule of diffusion_policy's get_optimal_chunks:
    going from the last axis outwards, whole axes are kept while they fit; the first axis that
    does not fit whole is cut to ceil(chunk_bytes / bytes of the axes inside it) (at most its
    length); axes outside it get 1. The time axis is axis 0.

    (T, 480, 640, 4) uint8 -> (2, 480, 640, 4); (T, 13) float32 -> (38462, 13);
    (T, 720, 1280, 4) uint8 -> (1, 391, 1280, 4) (a frame is larger than the target).
    """
    inner = np.dtype(dtype).itemsize  # bytes of one element of the axes inside `axis`
    axis = 0
    for ax in range(len(shape) - 1, 0, -1):
        if inner * shape[ax] > chunk_bytes:
            axis = ax
            break
        inner *= shape[ax]
    n = max(1, min(shape[axis], math.ceil(chunk_bytes / inner)))
    return (1,) * axis + (n,) + tuple(int(d) for d in shape[axis + 1 :])


def time_chunk(frame_shape: tuple[int, ...], dtype: Any, chunk_bytes: int, n_frames: int) -> int:
    """Frames per chunk along time (optimal_chunks()[0]; 1 when a frame is cut)."""
    return optimal_chunks((n_frames, *frame_shape), dtype, chunk_bytes)[0]


class RawCopy:
    """Copies data/<key> of a zarr format-2 source (directory or .zip) file by file: the
    source's own chunking, codec (JpegXl, Jpeg2k, Blosc, ...), attrs and chunk bytes. A
    format-3 source is not raw-copyable (its metadata differs): `keys` leaves its arrays out."""

    def __init__(self, source_path: Path, keys: set[str]) -> None:
        self.path = source_path
        self.keys = keys

    @classmethod
    def for_source(cls, source_path: Path, candidates: list[str]) -> RawCopy:
        if source_path.is_file():
            with zipfile.ZipFile(source_path) as zf:
                names = set(zf.namelist())
            keys = {k for k in candidates if f"data/{k}/.zarray" in names}
        else:
            keys = {k for k in candidates if (source_path / "data" / k / ".zarray").is_file()}
        return cls(source_path, keys)

    def _meta(self, key: str) -> bytes | None:
        try:
            if self.path.is_file():
                with zipfile.ZipFile(self.path) as zf:
                    return zf.read(f"data/{key}/.zarray")
            return (self.path / "data" / key / ".zarray").read_bytes()
        except (OSError, KeyError):
            return None

    def copied_into(self, out: Path) -> set[str]:
        """The keys whose array in the output buffer `out` is a raw copy (same .zarray bytes);
        an output made before raw copies existed re-encodes its copies, and keeps doing so."""
        done = set()
        for key in self.keys:
            try:
                if (out / "data" / key / ".zarray").read_bytes() == self._meta(key):
                    done.add(key)
            except OSError:
                pass
        return done

    def copy(self, key: str, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            prefix = f"data/{key}/"
            with zipfile.ZipFile(self.path) as zf:
                for info in zf.infolist():
                    if info.filename.startswith(prefix) and not info.is_dir():
                        target = dest / info.filename[len(prefix) :]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(info) as src, open(target, "wb") as out:
                            shutil.copyfileobj(src, out, 1 << 20)
            return
        shutil.copytree(self.path / "data" / key, dest, dirs_exist_ok=True)


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
        raw: RawCopy | None = None,
        root_attrs: dict[str, Any] | None = None,
    ) -> ZarrOut:
        """Create the whole skeleton (no data chunks) in a temp folder, then rename it. Keys
        of `raw` are copied from the source file by file (metadata and chunks, bytes
        identical) instead of being created; `root_attrs` become the group's attributes."""
        tmp = tmp_path_for(path)
        try:
            root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w-", zarr_format=2)
            if root_attrs:
                root.attrs.put(_sorted(root_attrs))
            data = root.require_group("data")
            meta_group = root.require_group("meta")
            for name, values in meta.items():
                arr = meta_group.create_array(
                    name, shape=values.shape, dtype=values.dtype,
                    chunks=values.shape or None, compressors=codec, fill_value=0,
                )  # fmt: skip
                arr[...] = values
            for name, (shape, dtype, attrs) in arrays.items():
                if raw is not None and name in raw.keys:
                    raw.copy(name, tmp / "data" / name)
                    continue
                chunks = optimal_chunks(shape, dtype, chunk_bytes)
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
        grid = [range(-(-s // c)) for s, c in zip(arr.shape[1:], arr.chunks[1:], strict=True)]
        tails = ["".join(f".{i}" for i in idx) for idx in itertools.product(*grid)]
        folder = self.path / "data" / key
        for c in range(start // clen, (stop - 1) // clen + 1):
            for tail in tails:  # every chunk of these frames (a large frame spans several)
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
