"""Masks of one episode, held bit-packed until finish_episode writes everything.

A 100-frame 480x640 episode with 4 objects is 123 MB as bool but 15 MB packed, so masks
stay packed here and are unpacked a block of frames at a time by the writers.

Usage:
    held = HeldEpisode(n_frames=100, height=480, width=640)
    held.put(start=0, obj_ids=[1, 2], packed=bits, width=640)   # bits (2, n, 480, 80) uint8
    block = held.unpack(obj_id=1, start=0, stop=16)            # (16, 480, 640) bool
"""

from __future__ import annotations

import numpy as np

from services.exporter.errors import bad


class HeldEpisode:
    """Packed masks per object id, plus which frames each object has received."""

    def __init__(self, n_frames: int, height: int, width: int) -> None:
        self.n_frames = n_frames
        self.height = height
        self.width = width
        self.row_bytes = (width + 7) // 8
        self._bits: dict[int, np.ndarray] = {}  # obj_id -> (T, H, W8) uint8
        self._got: dict[int, np.ndarray] = {}  # obj_id -> (T,) bool

    @property
    def obj_ids(self) -> list[int]:
        return sorted(self._bits)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._bits.values())

    def bytes_for(self, n_new_objects: int) -> int:
        """Memory that `n_new_objects` more objects would take."""
        return n_new_objects * self.n_frames * self.height * self.row_bytes

    def put(self, start: int, obj_ids: list[int], packed: np.ndarray, width: int) -> int:
        """Store masks for frames [start, start+n) (episode-relative); returns `received`."""
        packed = np.asarray(packed)
        if packed.dtype != np.uint8 or packed.ndim != 4:
            raise bad(
                f"masks: expected packed uint8 (n_obj, n, H, W8), got {packed.dtype} {packed.shape}"
            )
        if width != self.width:
            raise bad(f"width: {width} does not match the camera width {self.width}")
        n_obj, n, h, w8 = packed.shape
        if (h, w8) != (self.height, self.row_bytes):
            raise bad(
                f"masks: frame shape (H={h}, W8={w8}) does not match the camera "
                f"(H={self.height}, W8={self.row_bytes} for width {self.width})"
            )
        if n_obj != len(obj_ids):
            raise bad(f"obj_ids: {len(obj_ids)} ids for {n_obj} masks along axis 0")
        if len(set(obj_ids)) != len(obj_ids):
            raise bad(f"obj_ids: {obj_ids} has duplicates; send each object once per call")
        if start < 0 or start + n > self.n_frames:
            raise bad(
                f"start: frames [{start}, {start + n}) are outside the episode's "
                f"{self.n_frames} frames (indices are episode-relative)"
            )
        for i, obj in enumerate(obj_ids):
            if obj not in self._bits:
                self._bits[obj] = np.zeros((self.n_frames, h, w8), np.uint8)
                self._got[obj] = np.zeros(self.n_frames, bool)
            self._bits[obj][start : start + n] = packed[i]  # copies out of the wire buffer
            self._got[obj][start : start + n] = True
        return self.received

    @property
    def received(self) -> int:
        """Frames that every held object has a mask for."""
        if not self._got:
            return 0
        return int(np.logical_and.reduce(list(self._got.values())).sum())

    def missing(self) -> dict[int, int]:
        """obj_id -> first frame never received, for incomplete objects."""
        return {o: int(np.argmin(g)) for o, g in sorted(self._got.items()) if not g.all()}

    def unpack(self, obj_id: int, start: int, stop: int) -> np.ndarray:
        """(stop-start, H, W) bool masks of one object."""
        return np.unpackbits(self._bits[obj_id][start:stop], axis=-1, count=self.width).view(bool)

    def any_pixels(self, obj_id: int) -> bool:
        """Whether the object has any mask pixel in the episode (padding bits are zero)."""
        bits = self._bits[obj_id]
        if self.width % 8 == 0:
            return bool(bits.any())
        return any(self.unpack(obj_id, s, s + 64).any() for s in range(0, self.n_frames, 64))
