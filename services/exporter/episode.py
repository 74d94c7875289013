"""One episode's export: stream frames and masks block by block through every writer.

Each writer writes into temp names, and `commit()` moves its output into place; the caller
writes the done marker only after every writer committed.

Usage:
    job = EpisodeJob(episode=3, start=300, stop=400, height=480, width=640, held=held,
                     roles={"target": 1}, options=opts, layout=layout)
    outputs = run_episode(job, [RgbmWriter(...), NpzWriter()], source, "camera0_rgb", align=2)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from services.exporter.held import HeldEpisode
from services.exporter.layout import Layout
from services.exporter.options import ExportOptions

if TYPE_CHECKING:
    from services.exporter.source import SourceBuffer

log = logging.getLogger(__name__)

BLOCK_BYTES = 32 << 20  # frames + unpacked masks processed at once


@dataclass
class EpisodeJob:
    episode: int
    start: int  # global frame index of the episode's first frame
    stop: int  # global, exclusive
    height: int
    width: int
    held: HeldEpisode
    roles: dict[str, int]  # role -> obj_id
    options: ExportOptions
    layout: Layout
    meta: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return self.stop - self.start

    @property
    def obj_ids(self) -> list[int]:
        return self.held.obj_ids

    def role_of(self, obj_id: int) -> str | None:
        for role, obj in self.roles.items():
            if obj == obj_id:
                return role
        return None

    def role_mask(self, masks: dict[int, np.ndarray], *roles: str) -> np.ndarray:
        """Union of the masks of the given roles (absent roles add nothing). (n, H, W) bool"""
        n = len(next(iter(masks.values())))
        out = np.zeros((n, self.height, self.width), bool)
        for role in roles:
            if role in self.roles:
                out |= masks[self.roles[role]]
        return out


class Writer:
    """One output. begin() once, add() per block in time order, then commit() or abort()."""

    needs_rgb = False

    def begin(self, job: EpisodeJob) -> None:
        self.job = job

    def add(self, t0: int, rgb: np.ndarray | None, masks: dict[int, np.ndarray]) -> None:
        """t0: episode-relative index of the block's first frame; rgb (n, H, W, 3) uint8 RGB;
        masks: obj_id -> (n, H, W) bool."""

    def commit(self) -> dict[str, str]:
        """Move the output into place; return {output name: path}."""
        return {}

    def abort(self) -> None:
        """Remove temp files (called on any failure, also after commit of earlier writers)."""


def blocks(start: int, stop: int, align: int, max_frames: int) -> list[tuple[int, int]]:
    """Split [start, stop) at global multiples of a step (a multiple of `align`), so blocks
    line up with the output's time chunks and only the episode's edge chunks are shared."""
    step = max(align, (max_frames // align) * align)
    out = []
    t = start
    while t < stop:
        nxt = min(stop, (t // step + 1) * step)
        out.append((t, nxt))
        t = nxt
    return out


def run_episode(
    job: EpisodeJob, writers: list[Writer], source: SourceBuffer, camera_key: str, align: int
) -> dict[str, str]:
    """Run every writer over the episode; on any error abort them all and re-raise."""
    needs_rgb = any(w.needs_rgb for w in writers)
    frame_bytes = job.height * job.width * (3 + len(job.obj_ids))
    max_frames = max(1, BLOCK_BYTES // frame_bytes)
    started: list[Writer] = []
    try:
        for w in writers:
            started.append(w)
            w.begin(job)
        for g0, g1 in blocks(job.start, job.stop, align, max_frames):
            t0, t1 = g0 - job.start, g1 - job.start
            rgb = source.read(camera_key, g0, g1) if needs_rgb else None  # (n, H, W, 3) uint8
            masks = {o: job.held.unpack(o, t0, t1) for o in job.obj_ids}  # (n, H, W) bool each
            for w in writers:
                w.add(t0, rgb, masks)
        outputs: dict[str, str] = {}
        for w in writers:
            outputs.update(w.commit())
        return outputs
    except BaseException:
        for w in started:
            try:
                w.abort()
            except Exception:  # keep the original error
                log.exception("abort of %s failed", type(w).__name__)
        raise
