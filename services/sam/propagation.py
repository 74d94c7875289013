"""One propagate call of the sam session layer: run the backend over a plan's windows and store
what the merge rule keeps.

Usage (sessions.SessionManager.propagate, with the session's lock held):
    plan = plan_propagation(s.keyframes, s.present, s.n_frames, "both", None, None,
                            made_by=s.made_by, bounded=True)
    res = run_plan(backend, s, plan, "both", on_progress=lambda done, total: ...)
    res.recomputed, res.spans                           # what the backend recomputed

Stored per yield: the mask (bit-packed), the serial of the prompt it comes from (made_by:
what the next bounded call compares with), and the other pass's mask where both passes of a
`both` call gave one (drift alarms). A bounded call stores nothing outside its windows' frames
(a backend like SAM2 computes every object there; the objects the plan did not ask for keep
their serial: their update is a non-overlap or memory effect of the recomputed object).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from services.sam.backends.base import SamBackend
from services.sam.merge import PassMerge, Plan, spans
from services.sam.store import Progress, Session


@dataclass
class Propagated:
    """What one propagate call did."""

    frames: int  # frames the call covered (bounded: the frames of its windows)
    obj_ids: list[int]
    recomputed: int  # distinct frames the backend segmented (a result stored) in this call
    spans: list[list[int]]  # [[obj_id, start, stop], ...] half-open runs recomputed per object


def run_plan(
    backend: SamBackend,
    s: Session,
    plan: Plan,
    direction: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> Propagated:
    """Run backend.propagate over plan.windows on session s; on_progress(done, total) after
    each frame step (total: plan.total)."""
    bounded = plan.recompute is not None
    merge = PassMerge(plan.passes, s.keyframes, s.present, s.n_frames)  # the both-way rule
    call = plan.frames()  # (T,) bool: a bounded call stores results only here
    stored: dict[int, np.ndarray] = {}  # obj -> (T,) bool, stored in this call
    kept: dict[int, dict[int, str]] = {}  # obj -> {frame: pass of the stored result}
    total, done, last = plan.total, 0, None
    s.progress = Progress(True, 0, total, direction)
    for t, per_obj in backend.propagate(s.state, plan.windows):
        d = merge.direction_of(per_obj, t)
        if not bounded or call[t]:
            _keep(s, plan, merge, d, t, per_obj, kept, stored)
        if t != last:  # one frame step done (a frame may come in several yields)
            last, done = t, min(total, done + 1)
            s.progress = Progress(True, done, total, direction)
            if on_progress is not None:
                on_progress(done, total)
    if done < total:  # e.g. a retried call classical skips: nothing to redo
        s.progress = Progress(True, total, total, direction)
        if on_progress is not None:
            on_progress(total, total)
    any_frame = np.zeros(s.n_frames, bool)
    for f in stored.values():
        any_frame |= f
    covered = call if bounded else _covered(plan.passes, s.n_frames)
    return Propagated(int(covered.sum()), s.obj_ids, int(any_frame.sum()), spans(stored))


def _keep(
    s: Session,
    plan: Plan,
    merge: PassMerge,
    d: str,
    t: int,
    per_obj: Mapping[int, np.ndarray],
    kept: dict[int, dict[int, str]],
    stored: dict[int, np.ndarray],
) -> None:
    """Store one yield's masks the merge rule keeps; the other pass's go to s.other."""
    for oid, m in per_obj.items():
        prev = kept.setdefault(oid, {}).get(t)
        if merge.keep(d, t, oid):
            if prev is not None and prev != d:  # replaced: the other pass's mask, for drift
                s.store_other(t, oid, s.packed(t, oid))
            elif prev is None:
                s.store_other(t, oid, None)  # an earlier call's other pass is stale now
            s.store(t, oid, m, made_by=_made_by(plan, d, t, oid))
            kept[oid][t] = d
            stored.setdefault(oid, np.zeros(s.n_frames, bool))[t] = True
        elif prev is not None and prev != d:
            s.store_other(t, oid, np.packbits(m, axis=-1))


def _made_by(plan: Plan, d: str, t: int, oid: int) -> int | None:
    """The serial a stored (oid, t) result of pass d comes from; None keeps the old one (a
    bounded call's update of an object it does not recompute there)."""
    if plan.recompute is not None and not (oid in plan.recompute and plan.recompute[oid][t]):
        return None
    ser = plan.serials[d].get(oid)
    return -1 if ser is None else int(ser[t])


def _covered(passes, n_frames: int) -> np.ndarray:
    covered = np.zeros(n_frames, bool)
    for _, lo, hi in passes:
        covered[lo : hi + 1] = True
    return covered
