"""The exporter service's contract: request and reply structs of every op, and the op table.

Usage:
    from services.exporter.api import CONTRACT as EXPORTER
    c = Client("tcp://127.0.0.1:5554", contract=EXPORTER)
    exp = c.call("open_export", EXPORTER.request("open_export", output="out/rgbm",
                 source="data/demo/demo.zarr", camera_key="rgb", outputs=["rgbm"]))["export"]

Dependency-light (numpy + protocol only). Every op is idempotent: a repeated put_masks
replaces the same frames, a repeated finish_episode answers the finish in progress (or the
done marker's outputs), closing, discarding or reopening twice is a no-op.
"""

from __future__ import annotations

import numpy as np

from protocol.contract import Contract, Op
from protocol.schema import message


@message
class OpenExportReq:
    output: str  # export folder (created if missing)
    source: str  # source replay buffer (.zarr folder or .zarr.zip)
    camera_key: str  # data/<camera_key> (N, H, W, 3) uint8 RGB
    outputs: list[str]  # subset of protocol.vocab.OUTPUTS (rgbm, arm_only, ..., sam3, grounding)
    options: dict | None = None  # ExportOptions; unknown keys are refused


@message
class OpenExportReply:
    export: str
    done: list[int]
    n_episodes: int


@message
class PutMasksReq:
    export: str
    episode: int
    start: int  # episode-relative index of the first frame in `masks`
    obj_ids: list[int]
    masks: np.ndarray  # (n_obj, n, H, ceil(W/8)) uint8, protocol.masks.pack
    width: int  # W


@message
class PutMasksReply:
    received: int


@message
class FinishEpisodeReq:
    export: str
    episode: int
    roles: dict[str, int]  # role (protocol.vocab.ROLES) -> obj_id
    meta: dict | None = None  # JSON-able, recorded in the episode's done marker


@message
class FinishEpisodeReply:
    episode: int
    outputs: dict[str, str]  # output name -> absolute path


@message
class EpisodeReq:
    export: str
    episode: int


@message
class DiscardReply:
    discarded: bool


@message
class ReopenEpisodeReq:
    export: str
    episode: int
    force: bool = False  # also reopen an episode approved in the studio


@message
class ReopenReply:
    reopened: bool


@message
class StatusReq:
    output: str


@message
class StatusReply:
    done: list[int]
    n_episodes: int | None  # None: no export folder yet
    exists: bool
    records: dict[str, dict]  # str(episode) -> its done record (prompts fingerprint, source)


@message
class ExportReq:
    export: str


@message
class Empty:
    pass


CONTRACT = Contract(
    "exporter",
    [
        Op("open_export", OpenExportReq, OpenExportReply, idempotent=True),
        Op("put_masks", PutMasksReq, PutMasksReply, idempotent=True),
        Op("finish_episode", FinishEpisodeReq, FinishEpisodeReply, idempotent=True),
        Op("discard_episode", EpisodeReq, DiscardReply, idempotent=True),
        Op("reopen_episode", ReopenEpisodeReq, ReopenReply, idempotent=True),
        Op("status", StatusReq, StatusReply, idempotent=True),
        Op("close_export", ExportReq, Empty, idempotent=True),
    ],
)
EXPORTER = CONTRACT
