"""One opened replay buffer (diffusion_policy / UMI / DexGraspVLA layout), validated.

Usage: ``buf = ReplayBuffer.open("/data/grasp.zarr"); s, e = buf.episode_bounds(0)``

Layout (zarr format 2 or 3, a directory or a .zarr.zip)::

    <root>/
      meta/episode_ends   (E,) int64, non-decreasing; T = episode_ends[-1]
      data/<key>          (T, ...) e.g. rgbm (T,480,640,4) uint8, action (T,13) float32

``plan_block(spec, first, stop)`` gives an empty ``(stop - first, *frame_shape)`` block and
the tasks that decode its zarr chunks into it; the reader runs and caches these blocks.
``decode="native"`` decodes each chunk with services/reader/codecs.py straight into the
block; ``decode="zarr"`` fills each block with one zarr read (services/reader/zarrio.py).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from typing import Any

import numpy as np

from services.reader.cache import Plan
from services.reader.codecs import ChunkDecoder
from services.reader.errors import (
    CodecUnavailable,
    InvalidBuffer,
    NotAReplayBuffer,
    OutOfRange,
    ReaderError,
    UnknownKey,
)
from services.reader.meta import ArraySpec, group_attrs, list_arrays, node_kind, read_array
from services.reader.store import Store, ZipStore, open_store
from services.reader.zarrio import ZarrArrays

log = logging.getLogger(__name__)

EPISODE_ENDS = "meta/episode_ends"


class ReplayBuffer:
    """Metadata, episode boundaries and chunk access of one replay buffer."""

    def __init__(
        self,
        path: str,
        store: Store,
        zarr_format: int,
        attrs: dict[str, Any],
        episode_ends: np.ndarray,
        arrays: dict[str, ArraySpec],
        decode: str = "native",
    ) -> None:
        self.path = path
        self.store = store
        self.zarr_format = zarr_format
        self.attrs = attrs
        self.episode_ends = episode_ends  # (E,) int64
        self.episode_starts = np.concatenate([[0], episode_ends[:-1]]).astype(np.int64)  # (E,)
        self.arrays = arrays
        self.decode = decode
        self.zarr = ZarrArrays(path, store.prefix if isinstance(store, ZipStore) else None)

    @classmethod
    def open(cls, path: str, decode: str = "native") -> ReplayBuffer:
        """Open and validate; raises a ReaderError subclass naming the problem and the fix."""
        store = open_store(path)
        try:
            return cls._open(path, store, decode)
        except BaseException:
            store.close()
            raise

    @classmethod
    def _open(cls, path: str, store: Store, decode: str) -> ReplayBuffer:
        if node_kind(store, "meta/episode_ends") is None:
            raise NotAReplayBuffer(
                f"{path!r} is not a replay buffer: it has no meta/episode_ends array "
                "(expected the diffusion_policy layout: meta/episode_ends (E,) int64 and "
                "data/<key> (T, ...))"
            )
        root = node_kind(store, "")
        zarr_format = root[1] if root else node_kind(store, EPISODE_ENDS)[1]
        ends_spec = read_array(store, EPISODE_ENDS)
        episode_ends = _validate_ends(path, ends_spec, read_whole(store, ends_spec))
        n_frames = int(episode_ends[-1]) if len(episode_ends) else 0
        if node_kind(store, "data") is None:
            raise NotAReplayBuffer(f"{path!r} has meta/episode_ends but no data group")
        arrays = {}
        for name in list_arrays(store, "data"):
            spec = read_array(store, f"data/{name}")
            if len(spec.shape) == 0 or spec.shape[0] != n_frames:
                length = spec.shape[0] if spec.shape else "a 0-d array"
                raise InvalidBuffer(
                    f"{path!r}: data/{name} has length {length} but episode_ends[-1] is "
                    f"{n_frames}; every data/<key> must have exactly episode_ends[-1] frames "
                    "(truncate the array or fix meta/episode_ends)"
                )
            arrays[name] = spec
        attrs = group_attrs(store, "", zarr_format)
        log.info("opened %s: %d episodes, %d frames, keys %s", path, len(episode_ends),
                 n_frames, sorted(arrays))  # fmt: skip
        return cls(path, store, zarr_format, attrs, episode_ends, arrays, decode)

    def same_layout(self, other: ReplayBuffer) -> bool:
        """True when ``other`` (a fresh open of the same path) has the same episodes and keys."""
        return np.array_equal(self.episode_ends, other.episode_ends) and {
            k: (s.shape, s.chunks, s.codec) for k, s in self.arrays.items()
        } == {k: (s.shape, s.chunks, s.codec) for k, s in other.arrays.items()}

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    def episode_bounds(self, episode: int) -> tuple[int, int]:
        """Global [start, stop) frame indices of ``episode``."""
        if not 0 <= episode < self.n_episodes:
            raise OutOfRange(
                f"episode {episode} is out of range: {self.path!r} has {self.n_episodes} "
                f"episodes (valid 0..{self.n_episodes - 1})"
            )
        return int(self.episode_starts[episode]), int(self.episode_ends[episode])

    def spec(self, key: str) -> ArraySpec:
        """The spec of ``data/<key>``; raises UnknownKey / CodecUnavailable."""
        spec = self.arrays.get(key.removeprefix("data/"))
        if spec is None:
            raise UnknownKey(
                f"unknown key {key!r}: {self.path!r} has data keys {sorted(self.arrays)}"
            )
        if spec.codec_error:
            raise CodecUnavailable(f"key {key!r}: {spec.codec_error}")
        return spec

    def describe(self, lowdim_max_frame_bytes: int) -> dict[str, Any]:
        keys = {}
        for name, spec in sorted(self.arrays.items()):
            keys[name] = spec.describe()
            keys[name]["lowdim"] = spec.is_lowdim(lowdim_max_frame_bytes)
        return {
            "path": self.path,
            "zarr_format": self.zarr_format,
            "n_episodes": self.n_episodes,
            "n_frames": int(self.episode_ends[-1]) if self.n_episodes else 0,
            "episode_ends": self.episode_ends,  # (E,) int64
            "episode_lengths": np.diff(self.episode_ends, prepend=0).tolist(),
            "keys": keys,
            "attrs": self.attrs,
        }

    def plan_block(self, spec: ArraySpec, first: int, stop: int) -> Plan:
        """An empty block for global frames [first, stop) and one task per time-chunk.

        ``first`` and ``stop`` are multiples of ``spec.chunks[0]`` (``stop`` may be the end
        of the array). Each task decodes its chunk straight into its rows of the block.
        """
        out = np.empty((stop - first, *spec.frame_shape), dtype=spec.native_dtype)
        if self.decode == "zarr" or spec.needs_zarr:  # one zarr read fills the whole block
            return out, [functools.partial(self._fill_zarr, spec, first, out)]
        c0 = spec.chunks[0]
        tasks = []
        for t in range(first // c0, -(-stop // c0)):
            dst = out[t * c0 - first : min((t + 1) * c0, stop) - first]  # (rows, *frame_shape)
            tasks.append(functools.partial(self._fill, spec, t, dst))
        return out, tasks

    def _fill(self, spec: ArraySpec, t: int, dst: np.ndarray) -> None:
        """Decode time-chunk ``t`` (all chunks along the other axes) into ``dst``."""
        try:
            _fill_time_chunk(self.store, spec, t, dst)
        except (ValueError, RuntimeError) as e:
            raise self._decode_error(spec, f"chunk {t}", e) from e

    def _fill_zarr(self, spec: ArraySpec, first: int, dst: np.ndarray) -> None:
        try:
            self.zarr.read_into(spec, first, dst)
        except (ValueError, RuntimeError, TypeError, KeyError) as e:
            raise self._decode_error(spec, f"frames {first}..{first + len(dst) - 1}", e) from e

    def _decode_error(self, spec: ArraySpec, where: str, e: Exception) -> Exception:
        if isinstance(e, InvalidBuffer):
            return e
        return InvalidBuffer(
            f"{self.path!r}: cannot decode {where} of {spec.path} ({spec.codec}): {e}"
        )

    def close(self) -> None:
        self.zarr.close()
        self.store.close()


def _fill_time_chunk(store: Store, spec: ArraySpec, t: int, dst: np.ndarray) -> None:
    grid = spec.grid()
    if all(g == 1 for g in grid[1:]):  # the common case: chunks span whole frames
        raw = store.get(spec.chunk_key((t,) + (0,) * (len(grid) - 1)))
        if raw is None:
            dst[...] = spec.fill_value
        else:
            _decoder(spec).decode_into(raw, dst)
        return
    rows = len(dst)
    for rest in itertools.product(*(range(g) for g in grid[1:])):
        raw = store.get(spec.chunk_key((t, *rest)))
        chunk = spec.fill_chunk() if raw is None else _decoder(spec).decode(raw)  # (*chunks)
        region = [slice(0, rows)]
        src = [slice(0, rows)]
        for i, r in enumerate(rest, start=1):
            lo = r * spec.chunks[i]
            hi = min(lo + spec.chunks[i], spec.shape[i])
            region.append(slice(lo, hi))
            src.append(slice(0, hi - lo))
        dst[tuple(region)] = chunk[tuple(src)]


def _decoder(spec: ArraySpec) -> ChunkDecoder:
    if spec.decoder is None:  # unreachable through ReplayBuffer.spec(); kept as a guard
        raise CodecUnavailable(spec.codec_error or f"no decoder for {spec.path}")
    return spec.decoder


def read_whole(store: Store, spec: ArraySpec) -> np.ndarray:
    """Read a whole (small) array, e.g. meta/episode_ends."""
    if spec.codec_error:
        raise CodecUnavailable(f"{spec.path}: {spec.codec_error}")
    if spec.needs_zarr or spec.decoder is None:
        raise InvalidBuffer(
            f"{spec.path} uses {spec.codec}, which this reader cannot decode here "
            f"({spec.codec_error or 'sharded'}); store it unsharded with a plain compressor"
        )
    if not spec.shape:
        raw = store.get(spec.chunk_key(()))
        return spec.fill_chunk() if raw is None else _decoder(spec).decode(raw)
    out = np.empty(spec.shape, dtype=spec.native_dtype)  # (n, ...)
    for t in range(spec.grid()[0]):
        c0 = spec.chunks[0]
        _fill_time_chunk(store, spec, t, out[t * c0 : (t + 1) * c0])
    return out


def _validate_ends(path: str, spec: ArraySpec, ends: np.ndarray) -> np.ndarray:
    if ends.ndim != 1 or not np.issubdtype(ends.dtype, np.integer):
        raise InvalidBuffer(
            f"{path!r}: meta/episode_ends must be a 1-D integer array (E,) int64, "
            f"got shape {spec.shape} dtype {spec.dtype}"
        )
    ends = ends.astype(np.int64)
    if len(ends) and ends[0] < 0:
        raise InvalidBuffer(f"{path!r}: meta/episode_ends[0] is {ends[0]}, must be >= 0")
    drops = np.nonzero(np.diff(ends) < 0)[0]
    if len(drops):
        i = int(drops[0]) + 1
        raise InvalidBuffer(
            f"{path!r}: meta/episode_ends is not monotonic: episode_ends[{i}]={ends[i]} < "
            f"episode_ends[{i - 1}]={ends[i - 1]}; episode_ends holds cumulative episode "
            "ends and must be non-decreasing"
        )
    return ends


def realpath(path: str) -> str:
    """The canonical absolute path; a path the OS cannot even name is the caller's error."""
    if "\x00" in path:
        raise ReaderError(f"path {path[:200]!r}: contains a NUL byte; send a real file system path")
    try:
        return os.path.realpath(os.path.expanduser(path))
    except (ValueError, OSError) as e:
        raise ReaderError(f"path {path[:200]!r}: not a usable file system path ({e})") from None
