"""The reader library: open replay buffers, stream frames in bounded chunks, read low-dim arrays.

Usage::

    from services.reader.reader import ReaderConfig, ReplayReader
    reader = ReplayReader(ReaderConfig(max_chunk_bytes=8 << 20))
    info = reader.open("/data/grasp.zarr")                  # describe: episodes, keys, codecs
    for batch in reader.iter_frames(info["dataset"], episode=0, key="rgbm"):
        batch.frames                                        # (n, 480, 640, 4) uint8, read-only
    lowdim = reader.arrays(info["dataset"], episode=0)      # {"action": (T_ep, 13) float32, ...}
    reader.close()

The service (services/reader/service.py) is a thin wrapper over this class. Decoded time
blocks are cached (each zarr chunk decoded once across consecutive requests), decoded in a
thread pool, and the blocks of the next batch of a sequential read are prefetched.
A dataset id is the buffer's real path, so any replica can serve it (opened on first use).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.options import parse_options
from services.reader.buffer import ReplayBuffer, realpath
from services.reader.cache import BlockCache
from services.reader.errors import DatasetNotFound, OutOfRange, TooLarge
from services.reader.meta import ArraySpec

log = logging.getLogger(__name__)

MiB = 1 << 20
DECODERS = ("native", "zarr")  # the `decode` option: who fills the cached blocks


@dataclass(frozen=True)
class ReaderConfig:
    """Reader options (service options of the same names)."""

    max_chunk_bytes: int = 8 * MiB  # cap on the frames of one reply (frames / arrays ops)
    cache_bytes: int = 64 * MiB  # decoded-block LRU (small: fresh memory costs page faults)
    threads: int = min(4, os.cpu_count() or 1)  # decode threads (codecs release the GIL)
    prefetch: bool = True  # decode the next batch of a sequential read in the background
    lowdim_max_frame_bytes: int = 1024  # (T,) / (T, D) keys, and smaller frames, are low-dim
    roots: tuple[str, ...] = ()  # if set, only paths under these directories may be opened
    decode: str = "native"  # chunk decoding: "native" (services/reader/codecs.py) or "zarr"

    def __post_init__(self) -> None:
        for name in ("max_chunk_bytes", "cache_bytes", "threads", "lowdim_max_frame_bytes"):
            value = getattr(self, name)  # the type was checked by from_options (protocol.schema)
            if value < 1:
                raise ValueError(f"reader option {name}={value!r}: must be a positive integer")
        if self.decode not in DECODERS:
            raise ValueError(
                f"reader option decode={self.decode!r}: must be one of {list(DECODERS)} "
                "(native: the reader's own chunk decoders; zarr: zarr's codec pipeline)"
            )
        if self.cache_bytes < 2 * self.max_chunk_bytes:
            raise ValueError(
                f"reader option cache_bytes={self.cache_bytes} must be >= 2 x max_chunk_bytes "
                f"({2 * self.max_chunk_bytes}) so a prefetched batch is not evicted"
            )

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ReaderConfig:
        """From a service options dict, parsed by protocol.schema (the one validator: unknown
        keys refused naming the valid ones, one rule for booleans and numbers); ValueError."""
        opts = dict(options)
        if isinstance(opts.get("roots"), str):  # one folder may be written without a list
            opts["roots"] = [opts["roots"]]
        return parse_options(cls, opts, where="reader options")


@dataclass(frozen=True)
class FrameBatch:
    """One bounded chunk of frames; indices are episode-relative."""

    frames: np.ndarray  # (n, *frame_shape) read-only
    start: int  # index of frames[0]
    stop: int  # index of frames[-1] + 1 (== start when empty)
    next: int | None  # index to ask for next, None at the end of the range
    episode_length: int  # frames in the episode
    batch: int  # frames a full reply holds (plan pipelined requests with it)


class ReplayReader:
    """Thread-safe reader over any number of open replay buffers."""

    def __init__(self, config: ReaderConfig | None = None) -> None:
        self.config = config or ReaderConfig()
        self.cache = BlockCache(self.config.cache_bytes, self.config.threads)
        self._lock = threading.Lock()
        self._buffers: dict[str, ReplayBuffer] = {}
        self._roots = tuple(realpath(r) for r in self.config.roots)

    # ---- datasets ------------------------------------------------------------------------
    def open(self, path: str) -> dict[str, Any]:
        """Open a buffer (re-read from disk); returns its description with ``dataset`` (the id).

        Re-opening a buffer that changed on disk (more episodes, new keys) replaces the
        open one and drops its cached blocks.
        """
        fresh = self._buffer(path, reopen=True)
        out = fresh.describe(self.config.lowdim_max_frame_bytes)
        out["dataset"] = fresh.path
        return out

    def close_dataset(self, dataset: str) -> bool:
        """Forget a dataset and its cached blocks; False if it was not open."""
        with self._lock:
            buf = self._buffers.pop(dataset, None) or self._buffers.pop(realpath(dataset), None)
        if buf is None:
            return False
        self.cache.drop(lambda k: k[0] == buf.path)  # the store closes once unreferenced
        return True

    def _buffer(self, dataset: str, reopen: bool = False) -> ReplayBuffer:
        if not reopen:
            with self._lock:
                buf = self._buffers.get(dataset)
            if buf is not None:
                return buf
        path = realpath(dataset)
        if self._roots and not any(path == r or path.startswith(r + os.sep) for r in self._roots):
            raise DatasetNotFound(
                f"path {dataset!r} is outside the reader's roots {list(self._roots)}; "
                "open a buffer under one of them or add its folder to the roots option"
            )
        with self._lock:
            buf = self._buffers.get(path)
        if buf is not None and not reopen:
            return buf
        fresh = ReplayBuffer.open(path, self.config.decode)
        with self._lock:
            old = self._buffers.get(path)
            if old is not None and old.same_layout(fresh):
                fresh.close()
                return old
            self._buffers[path] = fresh
        if old is not None:  # its store closes once no request still reads it (refcount)
            self.cache.drop(lambda k: k[0] == path)
        return fresh

    # ---- frames --------------------------------------------------------------------------
    def frames(
        self,
        dataset: str,
        episode: int,
        key: str,
        start: int = 0,
        stop: int | None = None,
        stride: int = 1,
        max_bytes: int | None = None,
    ) -> FrameBatch:
        """The first bounded chunk of frames start, start+stride, ... < stop of ``key``."""
        buf = self._buffer(dataset)
        spec = buf.spec(key)
        e0, e1 = buf.episode_bounds(episode)
        n_ep = e1 - e0
        stop = n_ep if stop is None else stop
        if stride < 1:
            raise OutOfRange(f"stride={stride}: must be >= 1")
        if not 0 <= start <= n_ep or (start == n_ep and n_ep > 0):
            raise OutOfRange(
                f"start={start} is out of range for episode {episode} of {n_ep} frames "
                f"(valid 0..{n_ep - 1})"
            )
        if not start <= stop <= n_ep:
            raise OutOfRange(
                f"stop={stop} is out of range for episode {episode} of {n_ep} frames with "
                f"start={start} (valid {start}..{n_ep}, or null for the episode's end)"
            )
        if max_bytes is not None and max_bytes < 1:
            raise OutOfRange(f"max_bytes={max_bytes}: must be >= 1 (or null for the service cap)")
        cap = min(max_bytes or self.config.max_chunk_bytes, self.config.max_chunk_bytes)
        if spec.frame_bytes > cap:
            raise TooLarge(
                f"one frame of {key!r} is {spec.frame_bytes} bytes, more than the chunk cap "
                f"{cap}; raise the reader's max_chunk_bytes option (or the request's max_bytes)"
            )
        n_total = len(range(start, stop, stride))
        n_cap = cap // max(1, spec.frame_bytes)
        g = e0 + start
        if stride == 1:  # stop at the block's end: the reply is a view of it (zero-copy)
            size = self._block_frames(spec)
            n = min(n_total, n_cap, (g // size + 1) * size - g)
            batch = min(n_cap, size)
        else:
            n = batch = min(n_total, n_cap)
        frames = self._gather(buf, spec, g, n, stride)  # (n, *frame_shape)
        nxt = start + n * stride if n < n_total else None
        if self.config.prefetch and nxt is not None:
            self._prefetch(buf, spec, e0 + nxt, min(batch, len(range(nxt, stop, stride))), stride)
        last = start + (n - 1) * stride + 1 if n else start
        return FrameBatch(frames, start, last, nxt, n_ep, batch)

    def iter_frames(
        self,
        dataset: str,
        episode: int,
        key: str,
        start: int = 0,
        stop: int | None = None,
        stride: int = 1,
        max_bytes: int | None = None,
    ) -> Iterator[FrameBatch]:
        """Every bounded chunk of a frame range, in order."""
        nxt: int | None = start
        while nxt is not None:
            batch = self.frames(dataset, episode, key, nxt, stop, stride, max_bytes)
            yield batch
            nxt = batch.next

    def arrays(
        self, dataset: str, episode: int, keys: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Whole-episode arrays of low-dim keys (all of them when ``keys`` is None)."""
        buf = self._buffer(dataset)
        e0, e1 = buf.episode_bounds(episode)
        if keys is None:
            keys = [
                k
                for k, s in sorted(buf.arrays.items())
                if s.is_lowdim(self.config.lowdim_max_frame_bytes) and not s.codec_error
            ]
        specs = {k: buf.spec(k) for k in keys}
        total = sum(s.frame_bytes * (e1 - e0) for s in specs.values())
        if total > self.config.max_chunk_bytes:
            big = max(specs, key=lambda k: specs[k].frame_bytes)
            raise TooLarge(
                f"keys {keys} of episode {episode} hold {total} bytes, more than max_chunk_bytes "
                f"{self.config.max_chunk_bytes}; read image keys such as {big!r} with the "
                "frames op (bounded chunks) or ask for fewer keys"
            )
        return {k: self._gather(buf, s, e0, e1 - e0, 1) for k, s in specs.items()}

    # ---- blocks --------------------------------------------------------------------------
    def _block_frames(self, spec: ArraySpec) -> int:
        """Frames per cached block: whole time-chunks, about max_chunk_bytes in all."""
        c0 = spec.chunks[0]
        return c0 * max(1, self.config.max_chunk_bytes // (c0 * max(1, spec.frame_bytes)))

    def _blocks(self, buf: ReplayBuffer, spec: ArraySpec, blocks: np.ndarray) -> dict:
        """Futures of the blocks with these indices; missing ones start decoding now."""
        size = self._block_frames(spec)
        n_frames = spec.shape[0]
        out = {}
        for b in map(int, blocks):
            first, stop = b * size, min((b + 1) * size, n_frames)
            out[b] = self.cache.get(
                (buf.path, spec.path, size, b),
                lambda first=first, stop=stop: buf.plan_block(spec, first, stop),
            )
        return out

    def _gather(
        self, buf: ReplayBuffer, spec: ArraySpec, g0: int, n: int, stride: int
    ) -> np.ndarray:
        """Frames g0, g0+stride, ... (n of them, global indices) -> (n, *frame_shape)."""
        if n == 0:
            return np.empty((0,) + spec.frame_shape, dtype=spec.native_dtype)
        size = self._block_frames(spec)
        gi = g0 + stride * np.arange(n, dtype=np.int64)  # (n,) global frame indices
        blocks = np.unique(gi // size)
        futures = self._blocks(buf, spec, blocks)  # all decode in parallel
        if len(blocks) == 1 and stride == 1:  # zero-copy: a view of the cached block
            b = int(blocks[0])
            return futures[b].result()[g0 - b * size : g0 - b * size + n]
        out = np.empty((n,) + spec.frame_shape, dtype=spec.native_dtype)  # (n, *frame_shape)
        for b, fut in futures.items():
            i0, i1 = np.searchsorted(gi, [b * size, (b + 1) * size])
            lo = int(gi[i0]) - b * size
            out[i0:i1] = fut.result()[lo : lo + (i1 - i0 - 1) * stride + 1 : stride]
        out.flags.writeable = False
        return out

    def _prefetch(self, buf: ReplayBuffer, spec: ArraySpec, g0: int, n: int, stride: int) -> None:
        if n > 0:
            gi = g0 + stride * np.arange(n, dtype=np.int64)
            self._blocks(buf, spec, np.unique(gi // self._block_frames(spec)))

    # ---- lifecycle -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            datasets = sorted(self._buffers)
        return {"datasets": datasets, **self.cache.stats()}

    def close(self) -> None:
        """Stop the decode threads and close every store."""
        self.cache.close()
        with self._lock:
            buffers, self._buffers = list(self._buffers.values()), {}
        for buf in buffers:
            buf.close()
