"""Propagation plans and the both-direction merge rule, applied by the session layer to every
backend's propagate.

plan_propagation decides what one propagate call computes: the passes (base.propagation_windows
over the session's keyframes), per object and pass which frames it owns (the merge rule below,
so a backend that computes each (object, frame) once, like classical, computes it in the pass
whose result the session keeps), and, for a bounded call, only the frames whose source
keyframe (or that keyframe's prompt) changed since the object's last propagation. Its
`windows` (base.Window) are what the backend receives.

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
    plan = plan_propagation(s.keyframes, s.present, s.n_frames, "both", None, None)
    merge = PassMerge(plan.passes, s.keyframes, s.present, s.n_frames)  # when the call starts
    for t, masks in backend.propagate(state, plan.windows):
        d = merge.direction_of(masks, t)                              # masks: base.PassMasks
        for oid, m in masks.items():
            if merge.keep(d, t, oid):
                s.store(t, oid, m)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from services.sam.backends.base import (
    PassMasks,
    Window,
    forward_owns,
    pass_distances,
    propagation_windows,
)

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


@dataclass
class Plan:
    """What one propagate call computes (plan_propagation)."""

    n_frames: int
    passes: list[tuple[str, int, int]]  # base.propagation_windows of the call (full extent)
    windows: list[Window]  # what the backend runs, in order
    # pass -> obj_id -> (T,) int64: the serial of the prompt each frame's result comes from in
    # that pass (Session.made_by's values), -1 where the pass has no source
    serials: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    # bounded calls: obj_id -> (T,) bool, the frames recomputed for it; None: unbounded
    recompute: dict[int, np.ndarray] | None = None

    @property
    def total(self) -> int:
        """Frame steps the backend runs (a frame of two windows counts twice)."""
        return sum(len(w) for w in self.windows)

    def frames(self) -> np.ndarray:
        """(T,) bool: frames some window covers."""
        out = np.zeros(self.n_frames, bool)
        for w in self.windows:
            out[w.lo : w.hi + 1] = True
        return out


def plan_propagation(
    keyframes: Mapping[
        int, Mapping[int, int] | Iterable[int]
    ],  # obj -> prompted frames (-> serial)
    present: Mapping[int, np.ndarray],  # obj_id -> (T,) bool: has a result
    n_frames: int,
    direction: str,
    start: int | None,
    max_frames: int | None,
    made_by: Mapping[int, np.ndarray] | None = None,  # obj -> (T,) int64 serial of each result
    bounded: bool = False,
) -> Plan:
    """The windows of one propagate call. Unbounded: the passes of propagation_windows, each
    object's frames split between them by the merge rule (ties forward). Bounded: per object
    only the frames whose source prompt differs from the one that made the stored result
    (`made_by`: a new or re-prompted keyframe changes the frames it is nearest to, up to the
    neighbouring keyframes, both ways), as one Window per run of such frames and pass."""
    keys_all = set().union(*(set(k) for k in keyframes.values())) if keyframes else set()
    passes = propagation_windows(keys_all, n_frames, direction, start, max_frames)
    objs = sorted(set(keyframes) | set(present))
    raw: dict[str, dict[int, np.ndarray]] = {}
    serials: dict[str, dict[int, np.ndarray]] = {}
    t = np.arange(n_frames)
    for d, lo, hi in passes:
        before = lo - 1 if d == "forward" else hi + 1
        raw[d], serials[d] = {}, {}
        for oid in objs:
            keys = keyframes.get(oid, ())
            p = present.get(oid)
            cont = p is not None and 0 <= before < n_frames and bool(p[before])
            dist = pass_distances(keys, n_frames, d, lo, hi, cont)
            raw[d][oid] = dist
            ser = np.full(n_frames, -1, np.int64)
            is_key = (dist >= 0) & (dist < n_frames)
            src = np.where(d == "forward", t - dist, t + dist)[is_key]
            if isinstance(keys, Mapping):
                ser[is_key] = [keys[int(f)] for f in src]
            else:
                ser[is_key] = src  # no serials given: the source frame stands for the prompt
            if made_by is not None and oid in made_by:
                ser[dist >= n_frames] = made_by[oid][before] if cont else -1
            serials[d][oid] = ser
    owners = {d: {oid: a.copy() for oid, a in per.items()} for d, per in raw.items()}
    if len(passes) == 2:
        for oid in objs:
            f, b = owners["forward"][oid], owners["backward"][oid]
            fwd = forward_owns(f, b)
            f[~fwd] = -1
            b[fwd] = -1
    if not bounded:
        windows = [Window(d, lo, hi, owners[d]) for d, lo, hi in passes]
        return Plan(n_frames, passes, windows, serials)
    if made_by is None:
        raise ValueError("made_by: a bounded plan needs the serial of every stored result")
    recompute: dict[int, np.ndarray] = {}
    per_pass: dict[str, dict[int, np.ndarray]] = {}
    for d, _, _ in passes:
        per_pass[d] = {}
        for oid in objs:
            old = made_by.get(oid, np.full(n_frames, -1, np.int64))
            redo = (owners[d][oid] >= 0) & (serials[d][oid] != old)
            per_pass[d][oid] = redo
            recompute[oid] = recompute.get(oid, np.zeros(n_frames, bool)) | redo
    windows = []
    for d, _, _ in passes:
        union = np.zeros(n_frames, bool)
        for redo in per_pass[d].values():
            union |= redo
        runs = _runs(union)
        if d == "backward":
            runs = runs[::-1]  # processed from the top down, as a whole backward pass is
        for lo, stop in runs:
            src = {}
            for oid, redo in per_pass[d].items():
                if redo[lo:stop].any():
                    a = np.full(n_frames, -1, np.int64)
                    a[lo:stop] = np.where(redo[lo:stop], owners[d][oid][lo:stop], -1)
                    src[oid] = a
            windows.append(Window(d, lo, stop - 1, src, bounded=True))
    return Plan(n_frames, passes, windows, serials, recompute)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open [start, stop) runs of True in a (T,) bool array."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def spans(frames: Mapping[int, np.ndarray]) -> list[list[int]]:
    """[[obj_id, start, stop], ...]: the half-open runs of each object's (T,) bool frames."""
    return [[int(oid), a, b] for oid in sorted(frames) for a, b in _runs(frames[oid])]
