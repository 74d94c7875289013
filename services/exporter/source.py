"""Read the source replay buffer (diffusion_policy layout) directly with zarr.

Layout read:  data/<key> (N, ...)   meta/episode_ends (E,) int64 (exclusive ends)
Stores: a zarr v2 or v3 directory, or a .zarr.zip. Image codecs (JpegXl, Jpeg2k as UMI
writes) decode when imagecodecs is installed.

Usage:
    src = SourceBuffer.open("/data/pick.zarr")
    start, stop = src.episode_range(3)
    rgb = src.read("camera0_rgb", start, stop)      # (n, H, W, 3) uint8
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from services.exporter.errors import ExportError, bad
from services.exporter.fsutil import user_path

log = logging.getLogger(__name__)

_CODECS_REGISTERED = False


def _register_image_codecs() -> None:
    """Make imagecodecs' numcodecs codecs (jpegxl, jpeg2k, ...) known, once, if installed."""
    global _CODECS_REGISTERED
    if _CODECS_REGISTERED:
        return
    _CODECS_REGISTERED = True
    try:
        from imagecodecs.numcodecs import register_codecs
    except ImportError:
        log.debug("imagecodecs not installed: image-codec sources will not decode")
        return
    register_codecs(verbose=False)


class SourceBuffer:
    """A read-only replay buffer; `fingerprint` identifies its layout and episodes."""

    def __init__(self, path: Path, group: zarr.Group, store: Any = None) -> None:
        self.path = path
        self._group = group
        self._store = store
        if "meta" not in group or "episode_ends" not in group["meta"]:
            raise bad(f"source: {path} has no meta/episode_ends; is it a replay buffer?")
        if "data" not in group:
            raise bad(f"source: {path} has no data/ group; is it a replay buffer?")
        ends = np.asarray(group["meta/episode_ends"][:], dtype=np.int64)  # (E,) int64
        self.episode_ends = ends
        lengths = np.diff(np.concatenate([[0], ends]))
        self.n_frames = int(ends[-1]) if ends.size else 0
        if ends.size == 0 or self.n_frames <= 0:
            raise bad(f"source: {path} has no episodes (meta/episode_ends is empty)")
        # episodes with no frames (a repeated end): never exported, skipped by the orchestrator
        self.empty: list[int] = [int(e) for e in np.flatnonzero(lengths == 0)]
        if np.any(lengths < 0):
            raise bad(f"source: {path} meta/episode_ends decreases; it must be non-decreasing "
                      "(a repeated value is an empty episode, which is skipped)")  # fmt: skip
        data = group["data"]
        self.arrays: dict[str, zarr.Array] = {}
        for name, member in sorted(data.members()):
            if not isinstance(member, zarr.Array):
                log.warning("source: data/%s is a group; only arrays are copied", name)
                continue
            if member.ndim == 0 or member.shape[0] != self.n_frames:
                raise bad(
                    f"source: data/{name} has shape {member.shape}, expected first axis "
                    f"{self.n_frames} (= meta/episode_ends[-1]); fix the source buffer"
                )
            if member.dtype.kind not in "biuf":
                raise bad(f"source: data/{name} dtype {member.dtype} is not numeric; cannot copy")
            self.arrays[name] = member
        self.meta: dict[str, np.ndarray] = {
            name: np.asarray(member[...])
            for name, member in sorted(group["meta"].members())
            if isinstance(member, zarr.Array)
        }
        self.attrs: dict[str, Any] = dict(group.attrs)

    @classmethod
    def open(cls, path: str) -> SourceBuffer:
        """Open a directory store or a .zip read-only; errors name the path and the fix."""
        p = user_path(path, "source")
        if not p.exists():
            raise ExportError("not_found", f"source: {p} does not exist; pass a replay buffer path")
        _register_image_codecs()
        store = None
        try:
            if p.is_file():
                store = zarr.storage.ZipStore(p, mode="r")
                group = zarr.open_group(store, mode="r")
            else:
                group = zarr.open_group(zarr.storage.LocalStore(p, read_only=True), mode="r")
        except PermissionError as exc:
            raise bad(f"source: permission denied reading {p} ({exc.strerror})") from exc
        except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
            raise bad(f"source: {p} is not a readable zarr replay buffer ({exc})") from exc
        return cls(p, group, store)

    @property
    def n_episodes(self) -> int:
        return int(self.episode_ends.size)

    def episode_range(self, episode: int) -> tuple[int, int]:
        """Global [start, stop) frame indices of an episode."""
        if not 0 <= episode < self.n_episodes:
            raise bad(f"episode: {episode} is out of range; the source has {self.n_episodes}")
        start = int(self.episode_ends[episode - 1]) if episode else 0
        return start, int(self.episode_ends[episode])

    def check_camera(self, key: str) -> tuple[int, int]:
        """Validate the camera key: (N, H, W, 3) uint8 RGB. Returns (H, W)."""
        if key not in self.arrays:
            raise bad(f"camera_key: {key!r} is not in data/; keys: {sorted(self.arrays)}")
        arr = self.arrays[key]
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise bad(
                f"camera_key: data/{key} is {arr.shape} {arr.dtype}; need (N, H, W, 3) uint8 RGB"
            )
        return int(arr.shape[1]), int(arr.shape[2])

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        """Frames [start, stop) of data/<key> (global indices)."""
        return np.asarray(self.arrays[key][start:stop])

    def fingerprint(self) -> str:
        """sha256 of episode_ends and every data key's shape and dtype."""
        h = hashlib.sha256()
        h.update(self.episode_ends.astype("<i8").tobytes())
        spec = {k: [list(a.shape), a.dtype.str] for k, a in self.arrays.items()}
        h.update(json.dumps(spec, sort_keys=True).encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint(),
            "n_episodes": self.n_episodes,
            "n_frames": self.n_frames,
        }

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
