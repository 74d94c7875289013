"""The classical backend's session state (classical.py) and the queries on it: per object
its prompts, keyframe masks, colour models and stored results; which pass owns each
(object, frame); the nearest keyframe, the reference shape and colours of a click.

Usage:
    st = ClassicalState(frames)                        # (T, H, W, 3) uint8, read only
    obj = st.objects.setdefault(1, ObjectState())
    m = stored(obj, t, width)                          # (H, W) bool, its stored mask
    own = pass_owners(st, windows)                     # {pass: {obj: (T,) source distance}}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.sam.backends.base import PASSES, Window
from services.sam.backends.classical_ops import ColourModel, quantise

# a click re-detects a lost object only where P(object | colour) on the nearest keyframe is
# above this (keyframe masks from boxes hold background, so the object's own colours often
# score 0.3-0.5; a background click on sky/grass scores below 0.2)
OBJECT_LIKE = 0.25


def nearest(keys: list[int], frame: int) -> int | None:
    """The keyframe of `keys` nearest to `frame` (ties: the earlier one), None if empty."""
    return min(keys, key=lambda k: (abs(k - frame), k)) if keys else None


@dataclass
class ObjectState:
    prompts: dict[int, dict] = field(default_factory=dict)  # frame -> accumulated prompt
    keymasks: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> (H, W) bool
    models: dict[int, ColourModel] = field(default_factory=dict)  # keyframe -> colour model
    results: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> (H, W8) packed
    version: int = 0  # bumped whenever its prompts or prompt masks change
    # frame -> its stored mask's pixel count before the prompts added there since the last
    # propagation (None: it had none); the correction's own area change (option lost_area)
    before: dict[int, int | None] = field(default_factory=dict)
    done: tuple | None = None  # (version, ownership) of its last propagation


@dataclass
class ClassicalState:
    frames: np.ndarray  # (T, H, W, 3) uint8, the session's store (read only here)
    objects: dict[int, ObjectState] = field(default_factory=dict)


def stored(obj: ObjectState, frame: int, w: int) -> np.ndarray:
    """The object's stored (H, W) bool mask on `frame`."""
    return np.unpackbits(obj.results[frame], axis=-1, count=w).astype(bool)


def stored_area(obj: ObjectState, frame: int) -> int:
    """Pixels of the object's stored mask on `frame` (a popcount of the packed bits)."""
    return int(np.bitwise_count(obj.results[frame]).sum())


def area_change(obj: ObjectState, frame: int) -> float | None:
    """Keyframe mask area / the stored mask's area before its prompts since the last
    propagation; None when nothing was stored there (or it was empty)."""
    before = obj.before.get(frame)
    if not before:
        return None
    return np.count_nonzero(obj.keymasks[frame]) / before


def reference(obj: ObjectState, frame: int) -> np.ndarray | None:
    """The object's mask on its nearest other keyframe (None: no other non-empty one)."""
    k = nearest([k for k, m in obj.keymasks.items() if k != frame and m.any()], frame)
    return obj.keymasks[k] if k is not None else None


def object_like(obj: ObjectState, frame: int, img: np.ndarray, xy: np.ndarray) -> bool:
    """Whether the colours around (x, y) could be the object's: P(object | colour) above
    OBJECT_LIKE on its nearest other keyframe (its colour model; True when it has none)."""
    k = nearest([k for k, m in obj.models.items() if k != frame and m is not None], frame)
    if k is None:
        return True
    model = obj.models[k]
    x, y = int(xy[0]), int(xy[1])
    patch = img[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3]
    return float(model.lut[quantise(patch)].mean()) > OBJECT_LIKE


def others_mask(st: ClassicalState, frame: int, obj_id: int) -> np.ndarray | None:
    """(H, W) bool union of the other objects' masks on `frame`, or None."""
    w = st.frames.shape[2]
    out = None
    for oid, o in st.objects.items():
        if oid != obj_id and frame in o.results:
            m = stored(o, frame, w)
            out = m if out is None else out | m
    return out


def pass_owners(st: ClassicalState, windows: list[Window]) -> dict:
    """Per pass: {obj_id: (T,) int source distance, -1 where the pass does not own it},
    from the windows' sources (the session layer's plan: the merge rule's owner of each
    (object, frame), so each is computed once, by the pass whose result the session
    keeps)."""
    n = st.frames.shape[0]
    dist: dict[str, dict[int, np.ndarray]] = {}
    for d in PASSES:
        mine = [w for w in windows if w.direction == d]
        if not mine:
            continue
        dist[d] = {}
        for oid in st.objects:
            a = np.full(n, -1, np.int64)
            for w in mine:
                src = w.sources.get(oid)
                if src is not None:
                    a[w.lo : w.hi + 1] = src[w.lo : w.hi + 1]
            dist[d][oid] = a
    return dist
