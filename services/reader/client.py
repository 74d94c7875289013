"""Client-side helper: stream an episode's frames from the reader with requests pipelined.

Usage::

    from protocol.client import Client
    from services.reader.client import stream_frames
    c = Client("tcp://127.0.0.1:5551")
    ds = c.call("open", {"path": "/data/grasp.zarr"})["dataset"]
    for start, frames in stream_frames(c, ds, episode=0, key="rgbm", depth=3):
        ...  # frames: (n, 480, 640, 4) uint8, read-only, episode-relative index `start`

The first reply tells the batch size the service allows (its max_chunk_bytes); the helper
then keeps ``depth`` explicit-range requests in flight, so decoding the next batch on the
service overlaps with transferring and consuming this one. Replies come back in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np


def stream_frames(
    client: Any,
    dataset: str,
    episode: int,
    key: str,
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
    depth: int = 2,
    max_bytes: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, frames (n, ...)) for frames start, start+stride, ... < stop, in order."""
    body: dict[str, Any] = {"dataset": dataset, "episode": episode, "key": key, "stride": stride}
    if max_bytes is not None:
        body["max_bytes"] = max_bytes
    first = client.call("frames", {**body, "start": start, "stop": stop})
    yield first["start"], first["frames"]
    if first["next"] is None:
        return
    end = first["episode_length"] if stop is None else stop
    step = max(1, first["batch"]) * stride  # a full reply, in index units
    planned = deque()
    nxt = first["next"]

    def submit() -> None:
        nonlocal nxt
        hi = min(nxt + step, end)
        planned.append((nxt, hi, client.submit("frames", {**body, "start": nxt, "stop": hi})))
        nxt = hi if hi < end else None

    while nxt is not None and len(planned) < depth:
        submit()
    while planned:
        lo, hi, fut = planned.popleft()
        out = fut.result()
        if nxt is not None:
            submit()
        yield out["start"], out["frames"]
        rest = out["next"]
        while rest is not None:  # a replica with a smaller cap answered part of the range
            more = client.call("frames", {**body, "start": rest, "stop": hi})
            yield more["start"], more["frames"]
            rest = more["next"]
