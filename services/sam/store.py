"""One sam session's data: its frames, keyframes and per-object bit-packed results.

Usage (the session layer, services/sam/sessions.py, is the only writer):
    s = Session("ep-1", 480, 640, 100, frames, received, state)
    serial = s.add_keyframe(obj_id=1, frame=0)       # a prompt on (1, 0): a new serial
    s.store(0, 1, mask, made_by=serial)              # (H, W) bool, kept bit-packed
    ids, computed, packed = s.read(0, 100, None)     # safe while a propagation writes

Locks: `lock` serialises calls on the backend state (held for a whole propagation);
`data` guards the result tables for the short time of one store or one read, so `masks`,
`progress` and `drift` answer while a propagation runs and never see half a frame.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from protocol.masks import pack


@dataclass
class Progress:
    """Where a running propagation is (read without any lock: each field is one assignment)."""

    propagating: bool = False
    done: int = 0  # frame steps finished
    total: int = 0  # frame steps planned (a frame both passes compute counts twice)
    direction: str | None = None


@dataclass
class Session:
    """One video: its frames, the backend's state and the per-object packed results."""

    id: str
    height: int
    width: int
    n_frames: int
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, filled by put_frames
    received: np.ndarray  # (T,) bool, which frames put_frames has filled
    state: object  # the backend's per-session state
    # obj_id -> (T, H, ceil(W/8)) uint8 packed masks, and (T,) bool "has a result"
    results: dict[int, np.ndarray] = field(default_factory=dict)
    present: dict[int, np.ndarray] = field(default_factory=dict)
    # obj_id -> {prompted frame: serial of its latest prompt}; serials grow per session
    keyframes: dict[int, dict[int, int]] = field(default_factory=dict)
    # obj_id -> (T,) int64: serial of the prompt each stored result comes from (-1 unknown)
    made_by: dict[int, np.ndarray] = field(default_factory=dict)
    # the other pass of a `both` propagation where both passes gave a mask (drift alarms):
    # obj_id -> (T, H, ceil(W/8)) uint8 packed and (T,) bool
    other: dict[int, np.ndarray] = field(default_factory=dict)
    other_present: dict[int, np.ndarray] = field(default_factory=dict)
    serial: int = 0
    last_used: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    data: threading.Lock = field(default_factory=threading.Lock)
    progress: Progress = field(default_factory=Progress)
    closed: bool = False
    # Snapshots of `results` for describe(), which reads them without the lock (a propagation
    # holds it for long): replaced, never mutated, whenever an object is added or dropped.
    ids: tuple[int, ...] = ()  # sorted ids of the objects with a result store
    result_bytes: int = 0  # bytes of those stores

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes + self.result_bytes)

    @property
    def obj_ids(self) -> list[int]:
        return list(self.ids)

    def add_keyframe(self, obj_id: int, frame: int) -> int:
        """Record a prompt on (obj_id, frame); returns its serial (also its made_by value)."""
        self.serial += 1
        self.keyframes.setdefault(obj_id, {})[frame] = self.serial
        return self.serial

    def store(self, frame: int, obj_id: int, mask: np.ndarray, made_by: int | None = None) -> None:
        """Keep an (H, W) bool mask bit-packed; made_by: the prompt serial it comes from (None:
        unchanged, e.g. another object's prompt carved it)."""
        packed = pack(mask)
        with self.data:
            if obj_id not in self.results:
                w8 = (self.width + 7) // 8
                self.results[obj_id] = np.zeros((self.n_frames, self.height, w8), np.uint8)
                self.present[obj_id] = np.zeros(self.n_frames, bool)
                self.made_by[obj_id] = np.full(self.n_frames, -1, np.int64)
                self._snapshot()
            self.results[obj_id][frame] = packed
            self.present[obj_id][frame] = True
            if made_by is not None:
                self.made_by[obj_id][frame] = made_by

    def store_other(self, frame: int, obj_id: int, packed: np.ndarray | None) -> None:
        """Keep the other pass's mask of (obj_id, frame), packed (H, ceil(W/8)); None: none."""
        with self.data:
            if packed is None:
                if obj_id in self.other_present:
                    self.other_present[obj_id][frame] = False
                return
            if obj_id not in self.other:
                w8 = (self.width + 7) // 8
                self.other[obj_id] = np.zeros((self.n_frames, self.height, w8), np.uint8)
                self.other_present[obj_id] = np.zeros(self.n_frames, bool)
                self._snapshot()
            self.other[obj_id][frame] = packed
            self.other_present[obj_id][frame] = True

    def packed(self, frame: int, obj_id: int) -> np.ndarray:
        """The stored (H, ceil(W/8)) packed mask of (obj_id, frame), a copy."""
        with self.data:
            return self.results[obj_id][frame].copy()

    def read(
        self, start: int, stop: int, obj_ids: list[int] | None
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(obj_ids, (n_obj, n) bool computed, (n_obj, n, H, ceil(W/8)) uint8 packed) of frames
        [start, stop); KeyError naming an unknown object."""
        with self.data:
            ids = self.obj_ids if obj_ids is None else list(obj_ids)
            for oid in ids:
                if oid not in self.results:
                    raise KeyError(oid)
            w8 = (self.width + 7) // 8
            out = np.zeros((len(ids), stop - start, self.height, w8), np.uint8)
            computed = np.zeros((len(ids), stop - start), bool)
            for i, oid in enumerate(ids):
                out[i] = self.results[oid][start:stop]  # absent frames are zero already
                computed[i] = self.present[oid][start:stop]
            return ids, computed, out

    def drop(self, obj_id: int | None = None) -> None:
        """Forget one object's results and prompts (None: every object's)."""
        with self.data:
            tables = (
                self.results,
                self.present,
                self.keyframes,
                self.made_by,
                self.other,
                self.other_present,
            )
            for table in tables:
                if obj_id is None:
                    table.clear()
                else:
                    table.pop(obj_id, None)
            self._snapshot()

    def _snapshot(self) -> None:
        self.ids = tuple(sorted(self.results))
        stores = (*self.results.values(), *self.other.values())
        self.result_bytes = sum(r.nbytes for r in stores)
