"""One studio project: a replay buffer (through the reader), a pipeline config, an output folder.

Usage:
    proj = Project(opts, mesh, store)
    proj.describe()                  # buffer, episodes, camera key, roles (ReaderDown/ProjectError)
    jpeg = proj.frame_jpeg(0, 12)    # JPEG bytes of episode 0 frame 12 (cached)
    work = proj.work(0)              # EpisodeWork: the sam session, masks, propagation

Frames come from the reader in chunks; each chunk is JPEG-encoded once and kept in an LRU
(`frame_cache_mb`), so scrubbing back and forth hits memory.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
from pathlib import Path

import cv2
import numpy as np

from orchestrator.config import load_pipeline
from protocol.errors import RemoteError
from services.studio import calls
from services.studio.options import StudioOptions
from services.studio.store import Store

log = logging.getLogger(__name__)

PALETTE = ("#00e5ff", "#ffe119", "#3cb44b", "#f032e6", "#f58231", "#4363d8", "#e6194b",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324")  # fmt: skip
READ_AHEAD = 16  # frames fetched from the reader per cache miss


class ProjectError(Exception):
    """The project cannot be used as configured (HTTP 409); the message says how to fix it."""


class BadInput(Exception):
    """A request field that does not validate (HTTP 400); the message names the field."""


class Project:
    def __init__(self, opts: StudioOptions, mesh: calls.Mesh, store: Store):
        self.opts, self.mesh, self.store = opts, mesh, store
        self.buffer = str(Path(opts.buffer).resolve())
        self.output = str(Path(opts.output).resolve())
        self.pipeline = load_pipeline(opts.pipeline)  # PipelineConfigError names the key
        self.prefix = "studio-" + hashlib.sha256(self.output.encode()).hexdigest()[:10]
        self._info: dict | None = None
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[tuple[int, int], bytes] = collections.OrderedDict()
        self._cache_bytes = 0
        self._works: dict = {}

    # -- the buffer ------------------------------------------------------------------------
    def info(self) -> dict:
        """The reader's `open` of the buffer, plus the camera key's frame shape (cached)."""
        if self._info is not None:
            return self._info
        try:
            info = self.mesh.call("reader", *calls.reader_open(self.buffer))
        except RemoteError as e:
            raise ProjectError(f"buffer {self.opts.buffer}: the reader says: {e}") from None
        key = self.pipeline.camera_key
        rgb = [k for k, s in info["keys"].items()
               if len(s["shape"]) == 4 and s["shape"][-1] == 3 and s["dtype"] == "|u1"]  # fmt: skip
        if key is None:
            if len(rgb) != 1:
                raise ProjectError(f"pipeline {self.opts.pipeline}: camera_key: not set and the "
                                   f"buffer has {len(rgb)} RGB keys {rgb}; name one")  # fmt: skip
            key = rgb[0]
        if key not in info["keys"]:
            raise ProjectError(f"pipeline {self.opts.pipeline}: camera_key: {key!r} is not in "
                               f"the buffer; RGB keys there: {rgb}")  # fmt: skip
        if key not in rgb:
            raise ProjectError(f"camera_key {key!r}: expected (T, H, W, 3) uint8, got shape "
                               f"{info['keys'][key]['shape']} {info['keys'][key]['dtype']}")  # fmt: skip
        shape = info["keys"][key]["shape"]
        self._info = {**info, "camera_key": key, "height": int(shape[1]), "width": int(shape[2])}
        return self._info

    def roles(self) -> list[dict]:
        """The pipeline's roles as the default objects of every episode."""
        p = self.pipeline
        if p.pipeline == "rgbm":
            pairs = [("target", p.prompt.obj_id)]
        else:
            pairs = [(r, int(p.arm_only.obj_ids[r])) for r in
                     ("arm_left", "arm_right", "gripper_left", "gripper_right")]  # fmt: skip
        return [{"obj_id": oid, "name": role, "role": role, "colour": PALETTE[i % len(PALETTE)]}
                for i, (role, oid) in enumerate(pairs)]  # fmt: skip

    def n_frames(self, ep: int) -> int:
        lengths = self.info()["episode_lengths"]
        if not isinstance(ep, int) or not 0 <= ep < len(lengths):
            raise BadInput(
                f"episode: {ep} is not an episode of this buffer (0..{len(lengths) - 1})"
            )
        return int(lengths[ep])

    def objects(self, ep: int) -> list[dict]:
        self.store.ensure_objects(ep, self.roles())
        return self.store.objects(ep)

    def describe(self) -> dict:
        info = self.info()
        return {
            "buffer": self.buffer,
            "pipeline": self.pipeline.pipeline,
            "pipeline_file": self.opts.pipeline,
            "output": self.output,
            "state": str(self.opts.state_dir),
            "camera_key": info["camera_key"],
            "height": info["height"],
            "width": info["width"],
            "n_episodes": info["n_episodes"],
            "episode_lengths": info["episode_lengths"],
            "roles": self.roles(),
            "palette": list(PALETTE),
        }

    # -- frames ----------------------------------------------------------------------------
    def read_frames(self, ep: int, start: int, stop: int) -> tuple[int, np.ndarray]:
        """(start, frames (n, H, W, 3) uint8) from the reader; n may be < stop - start."""
        info = self.info()
        out = self.mesh.call(
            "reader", *calls.reader_frames(info["dataset"], ep, info["camera_key"], start, stop)
        )
        return int(out["start"]), out["frames"]

    def cache_jpegs(self, ep: int, start: int, frames: np.ndarray) -> None:
        q = [int(cv2.IMWRITE_JPEG_QUALITY), self.opts.jpeg_quality]
        for i, f in enumerate(frames):
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), q)
            if ok:
                self._put((ep, start + i), buf.tobytes())

    def _put(self, key: tuple[int, int], data: bytes) -> None:
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = data
            self._cache_bytes += len(data)
            cap = self.opts.frame_cache_mb << 20
            while self._cache_bytes > cap and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= len(old)

    def frame_jpeg(self, ep: int, t: int) -> bytes:
        n = self.n_frames(ep)
        if not 0 <= t < n:
            raise BadInput(f"frame: {t} is outside episode {ep}'s frames 0..{n - 1}")
        with self._lock:
            hit = self._cache.get((ep, t))
            if hit is not None:
                self._cache.move_to_end((ep, t))
                return hit
        start, frames = self.read_frames(ep, t, min(n, t + READ_AHEAD))
        self.cache_jpegs(ep, start, frames)
        with self._lock:
            hit = self._cache.get((ep, t))
        if hit is None:  # cache smaller than one chunk: encode this one directly
            q = [int(cv2.IMWRITE_JPEG_QUALITY), self.opts.jpeg_quality]
            hit = cv2.imencode(".jpg", cv2.cvtColor(frames[t - start], cv2.COLOR_RGB2BGR), q)[1]
            hit = hit.tobytes()
        return hit

    # -- episodes --------------------------------------------------------------------------
    def work(self, ep: int):
        from services.studio.episode import EpisodeWork

        self.n_frames(ep)
        with self._lock:
            if ep not in self._works:
                self._works[ep] = EpisodeWork(self, ep)
            return self._works[ep]

    def works(self) -> dict:
        with self._lock:
            return dict(self._works)

    def close(self) -> None:
        for w in self.works().values():
            w.close()
