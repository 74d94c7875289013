"""A byte-bounded LRU of decoded blocks, each decoded once, in a thread pool.

Usage::

    cache = BlockCache(capacity_bytes=256 << 20, threads=2)
    fut = cache.get(("ds", "data/rgbm", 7), lambda: (out, [fill_chunk_0, fill_chunk_1]))
    block = fut.result()        # `out` once every task filled its part; read-only

A key that is being decoded is shared: a second ``get`` (a consecutive request, or the
prefetch of a sequential read) waits on the same future instead of decoding again.
Failed decodes are not cached; a failing task fails the block. Blocks are marked read-only because replies send them
zero-copy; evicting a block that a reply still references is safe (reference counting).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

log = logging.getLogger(__name__)


Plan = tuple[np.ndarray, list[Callable[[], None]]]  # (block to fill, tasks that fill it)


class _Pending:
    """A block being filled: tasks left, the first error."""

    __slots__ = ("out", "left", "error")

    def __init__(self, out: np.ndarray, left: int) -> None:
        self.out = out
        self.left = left
        self.error: BaseException | None = None


class BlockCache:
    """LRU of ``Future[np.ndarray]`` keyed by any hashable, bounded by decoded bytes."""

    def __init__(self, capacity_bytes: int, threads: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="decode")
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, Future] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}  # completed entries only
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.decoded = 0  # blocks decoded (misses that completed)
        self.decode_seconds = 0.0

    def get(self, key: Hashable, plan: Callable[[], Plan]) -> Future:
        """The cached future for ``key``; on a miss ``plan()`` gives (out, tasks) to run.

        ``plan`` runs in the caller's thread and returns the block's (empty) array and the
        tasks that fill it (one per zarr chunk, so a block decodes on several threads);
        the future resolves to the filled, read-only array when every task is done.
        """
        with self._lock:
            fut = self._entries.get(key)
            if fut is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return fut
            self.misses += 1
            fut = Future()
            self._entries[key] = fut
        fut.add_done_callback(lambda f, k=key: self._done(k, f))
        try:
            out, tasks = plan()
        except BaseException as e:
            fut.set_exception(e)
            return fut
        state = _Pending(out, len(tasks))
        if not tasks:
            self._finish(fut, state)
        for task in tasks:
            self._pool.submit(self._run, fut, state, task)
        return fut

    def _run(self, fut: Future, state: _Pending, task: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        try:
            if state.error is None:
                task()
        except BaseException as e:
            state.error = e
        with self._lock:
            self.decode_seconds += time.perf_counter() - t0
            state.left -= 1
            last = state.left == 0
        if last:
            self._finish(fut, state)

    def _finish(self, fut: Future, state: _Pending) -> None:
        if fut.done():
            return
        if state.error is not None:
            fut.set_exception(state.error)
            return
        state.out.flags.writeable = False  # shared with replies and later requests
        with self._lock:
            self.decoded += 1
        fut.set_result(state.out)

    def contains(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def _done(self, key: Hashable, fut: Future) -> None:
        with self._lock:
            if self._entries.get(key) is not fut:
                return  # dropped meanwhile
            if fut.cancelled() or fut.exception() is not None:
                del self._entries[key]  # do not cache failures
                return
            size = fut.result().nbytes
            self._sizes[key] = size
            self.bytes += size
            self._evict()

    def _evict(self) -> None:
        """Drop least-recently-used completed blocks until under capacity (lock held)."""
        for key in list(self._entries):
            if self.bytes <= self.capacity_bytes or len(self._sizes) <= 1:
                break
            if key in self._sizes:
                del self._entries[key]
                self.bytes -= self._sizes.pop(key)

    def drop(self, match: Callable[[Hashable], bool]) -> int:
        """Forget every entry whose key matches (e.g. a closed dataset)."""
        with self._lock:
            keys = [k for k in self._entries if match(k)]
            for k in keys:
                del self._entries[k]
                self.bytes -= self._sizes.pop(k, 0)
            return len(keys)

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {
                "cache_bytes": self.bytes,
                "cache_capacity_bytes": self.capacity_bytes,
                "cache_blocks": len(self._entries),
                "hits": self.hits,
                "misses": self.misses,
                "decoded": self.decoded,
                "decode_seconds": round(self.decode_seconds, 4),
            }

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            pending = [f for f in self._entries.values() if not f.done()]
            self._entries.clear()
        for f in pending:  # tasks cancelled by the shutdown: release any waiter
            if not f.done():
                f.set_exception(RuntimeError("the reader was closed"))
