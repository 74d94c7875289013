"""The reader service's contract: request and reply structs of every op, and the op table.

Usage:
    from services.reader.api import CONTRACT as READER
    c = Client("tcp://127.0.0.1:5551", contract=READER)
    ds = c.call("open", READER.request("open", path="data/demo/demo.zarr"))["dataset"]
    out = c.call("frames", READER.request("frames", dataset=ds, episode=0, key="rgb"))

Dependency-light (numpy + protocol only): clients import it without zarr or numcodecs.
Every op only reads, so every op may be re-sent.
"""

from __future__ import annotations

import numpy as np

from protocol.contract import Contract, Op
from protocol.schema import message


@message
class OpenReq:
    path: str  # a .zarr directory or .zarr.zip file, as seen by the reader's host


@message
class OpenReply:
    dataset: str  # the id to pass to frames/arrays/close (the buffer's real path)
    path: str
    zarr_format: int
    n_episodes: int
    n_frames: int
    episode_ends: np.ndarray  # (E,) int64
    episode_lengths: list[int]
    keys: dict[str, dict]  # data/<key> -> {shape, dtype, chunks, codec, lowdim, ...}
    attrs: dict


@message
class FramesReq:
    dataset: str  # the id `open` returned (the buffer's real path; opened on first use)
    episode: int
    key: str  # a data/<key> name, e.g. "rgbm"
    start: int = 0  # episode-relative frame index
    stop: int | None = None  # exclusive; None = the episode's end
    stride: int = 1
    max_bytes: int | None = None  # a smaller cap than the service's max_chunk_bytes


@message
class FramesReply:
    frames: np.ndarray  # (n, *frame_shape)
    start: int
    stop: int
    next: int | None  # where the next chunk starts; None = this one reached `stop`
    episode_length: int
    batch: int  # frames per reply under the byte cap


@message
class ArraysReq:
    dataset: str
    episode: int
    keys: list[str] | None = None  # None = every low-dim key


@message
class ArraysReply:
    arrays: dict[str, np.ndarray]


@message
class CloseReq:
    dataset: str


@message
class CloseReply:
    closed: bool  # False: it was not open


CONTRACT = Contract(
    "reader",
    [
        Op("open", OpenReq, OpenReply, idempotent=True),
        Op("frames", FramesReq, FramesReply, idempotent=True),
        Op("arrays", ArraysReq, ArraysReply, idempotent=True),
        Op("close", CloseReq, CloseReply, idempotent=True),
    ],
)
READER = CONTRACT
