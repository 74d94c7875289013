"""Micro-batching: requests from several threads joined into one call (one GPU batch).

Usage:
    b = MicroBatcher(lambda items: [f(x) for x in items], max_batch=16, max_wait_s=0.005)
    fut = b.submit(item); result = fut.result()
    b.close()

One background thread takes the first waiting item, then waits up to `max_wait_s` for more
(at most `max_batch`) and calls `fn` once with the list; `fn` returns one result per item.
If `fn` raises, every item of that batch gets the exception. An item submitted with a deadline
that passed before its batch starts is not run (its future gets DeadlineExceeded).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from protocol.deadline import DeadlineExceeded

log = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """submit() after close()."""


class MicroBatcher:
    def __init__(
        self,
        fn: Callable[[list[Any]], list[Any]],
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        name: str = "batcher",
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch: must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s: must be >= 0, got {max_wait_s}")
        self._fn = fn
        self._max_batch = max_batch
        self._max_wait = max_wait_s
        self._q: queue.Queue[tuple[Any, Future, float | None] | None] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any, deadline: float | None = None) -> Future:
        """Queue `item`; `deadline` (monotonic seconds): if it passed before the item's batch
        starts, the item is not run and its future fails with DeadlineExceeded."""
        fut: Future = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            self._q.put((item, fut, deadline))
        return fut

    def _take(self) -> tuple[list[tuple[Any, Future, float | None]], bool]:
        """One batch, and whether close() was seen."""
        first = self._q.get()
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self._max_wait
        while len(batch) < self._max_batch:
            left = deadline - time.monotonic()
            try:
                nxt = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take()
            now = time.monotonic()
            for _, fut, d in batch:
                if d is not None and now >= d:  # nobody waits for it any more: not run
                    fut.set_exception(DeadlineExceeded(
                        f"the caller's deadline passed {now - d:.2f}s before its batch started"
                    ))  # fmt: skip
            batch = [b for b in batch if not b[1].done()]
            if not batch:
                continue
            try:
                results = self._fn([item for item, _, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"batch function returned {len(results)} results for {len(batch)} items"
                    )
            except BaseException as e:  # noqa: BLE001 - handed to every waiter
                log.debug("batch of %d failed: %s", len(batch), e)
                for _, fut, _ in batch:
                    fut.set_exception(e)
                continue
            for (_, fut, _), r in zip(batch, results, strict=True):
                fut.set_result(r)

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._q.put(None)
        self._thread.join(timeout)
