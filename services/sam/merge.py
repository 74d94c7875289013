"""The both-direction merge rule, applied by the session layer to every backend's propagate.

Where the forward and the backward pass of one propagate call both yield an (object, frame),
the object keeps the mask of the pass nearer to one of its prompted keyframes (the pass's
source, base.pass_distances); ties go to the forward pass. A pass without a source for the
object there (e.g. SAM2 yields every object on every frame, also before an object's first
keyframe going forward) ranks last. The rule is decided per (object, frame) and does not
depend on the order of the yields; a yield the rule does not pick is still kept while nothing
better of this call is stored (so a frame only one pass reached is never left empty, e.g.
SAM3 runs the backward pass of `both` only below the forward window); the same pass
yielding an (object, frame) twice: the last one stands.

Usage:
    merge = PassMerge(windows, s.keyframes, s.present, s.n_frames)  # when the call starts
    for t, masks in backend.propagate(state, direction, start, max_frames):
        d = merge.direction_of(masks, t)                              # masks: base.PassMasks
        for oid, m in masks.items():
            if merge.keep(d, t, oid):
                s.store(t, oid, m)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from services.sam.backends.base import PassMasks, pass_distances

NO_SOURCE = 1 << 40  # rank of a pass without a source for the object (any source beats it)
NOTHING = np.iinfo(np.int64).max  # rank where this call stored nothing yet


class PassMerge:
    """Ranks one propagate call's yields per (object, frame) and says which to store."""

    def __init__(
        self,
        windows: Sequence[tuple[str, int, int]],  # base.propagation_windows of the call
        keyframes: Mapping[int, Iterable[int]],  # obj_id -> prompted frames
        present: Mapping[int, np.ndarray],  # obj_id -> (T,) bool: has a result (call start)
        n_frames: int,
    ) -> None:
        self.n = n_frames
        self.windows = {d: (lo, hi) for d, lo, hi in windows}
        self.keyframes = {oid: sorted(k) for oid, k in keyframes.items()}  # a snapshot
        # objects with a result just before a window's first frame: the pass continues it
        self.continues: dict[str, set[int]] = {}
        for d, (lo, hi) in self.windows.items():
            before = lo - 1 if d == "forward" else hi + 1
            inside = 0 <= before < n_frames
            self.continues[d] = {oid for oid, p in present.items() if inside and p[before]}
        self._rank: dict[tuple[str, int], np.ndarray] = {}  # (pass, obj) -> (T,) int64
        self._best: dict[int, np.ndarray] = {}  # obj -> (T,) int64 rank of what is stored

    def direction_of(self, masks: Mapping, t: int) -> str:
        """The pass a yielded dict belongs to; RuntimeError (a backend bug) when untagged or
        from a pass this call does not run."""
        d = getattr(masks, "direction", None)
        if not isinstance(masks, PassMasks) or d not in self.windows:
            raise RuntimeError(
                f"propagate: the backend yielded frame {t} as {type(masks).__name__} of pass "
                f"{d!r}; this call runs {list(self.windows)}: yield base.PassMasks(direction, "
                "masks) tagged with the window's direction (backend contract, base.py)"
            )
        return d

    def rank(self, direction: str, obj_id: int) -> np.ndarray:
        """(T,) int64: smaller wins; 2 * distance to the source, +1 for the backward pass."""
        key = (direction, obj_id)
        r = self._rank.get(key)
        if r is None:
            lo, hi = self.windows[direction]
            cont = obj_id in self.continues[direction]
            dist = pass_distances(self.keyframes.get(obj_id, ()), self.n, direction, lo, hi, cont)
            r = np.where(dist >= 0, 2 * dist, NO_SOURCE) + (direction == "backward")
            self._rank[key] = r
        return r

    def keep(self, direction: str, t: int, obj_id: int) -> bool:
        """Whether to store this yield of (obj_id, t): True unless this call already stored a
        better-ranked one there (and then it is recorded as the one stored)."""
        r = int(self.rank(direction, obj_id)[t])
        best = self._best.get(obj_id)
        if best is None:
            best = self._best[obj_id] = np.full(self.n, NOTHING, np.int64)
        if r > best[t]:
            return False
        best[t] = r
        return True
