"""Pure conversions between the sam service's prompts/results and SAM3's video API (no torch).

SAM3 (facebookresearch/sam3, Sam3VideoInference...) wants boxes as normalised [x, y, w, h],
points as [0, 1] coordinates (rel_coordinates=True), chooses its own object ids for what a
text/box prompt detects, and returns per frame {"out_obj_ids": (n,), "out_binary_masks":
(n, h, w) bool, ...}. The session layer speaks absolute-pixel xyxy boxes and points and
caller-chosen object ids. Everything that translates between the two lives here, tested in
tests/unit/test_sam3_convert.py without sam3 installed.

Usage:
    xywh = xyxy_to_xywh_norm([10, 20, 110, 220], width=640, height=480)   # [[x, y, w, h]]
    ids = Sam3IdMap("union"); ids.start_concept(obj_id=1)
    masks = outputs_to_masks(outputs, ids, 480, 640, all_ids=ids.external_ids())
    calls = plan_calls(propagation_windows(keys, T, "both", None, None))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

TEXT_INSTANCES = ("union", "separate")


# ---- coordinates -------------------------------------------------------------------------
def xyxy_to_xywh_norm(box: Sequence[float], width: int, height: int) -> list[list[float]]:
    """Absolute-pixel [x0, y0, x1, y1] -> SAM3's [[x, y, w, h]] in [0, 1] (clipped)."""
    b = np.asarray(box, np.float64)
    if b.shape != (4,) or not np.isfinite(b).all():
        raise ValueError(f"box: need 4 finite numbers [x0, y0, x1, y1], got {list(box)}")
    x0, x1 = np.clip(b[[0, 2]], 0, width) / width
    y0, y1 = np.clip(b[[1, 3]], 0, height) / height
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box: {b.tolist()} is empty inside the {width}x{height} image")
    return [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)]]


def xywh_norm_to_xyxy(box: Sequence[float], width: int, height: int) -> list[float]:
    """SAM3's normalised [x, y, w, h] (e.g. out_boxes_xywh) -> absolute-pixel xyxy."""
    x, y, w, h = (float(v) for v in box)
    return [x * width, y * height, (x + w) * width, (y + h) * height]


def points_abs_to_rel(points: np.ndarray, width: int, height: int) -> list[list[float]]:
    """(N, 2) absolute pixels (x, y) -> [[x / W, y / H], ...] clipped to [0, 1]."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    return np.clip(p / (width, height), 0.0, 1.0).tolist()


def points_rel_to_abs(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 2) [0, 1] coordinates -> (N, 2) float32 absolute pixels."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    return (p * (width, height)).astype(np.float32)


# ---- masks -------------------------------------------------------------------------------
def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) bool -> (height, width) bool by nearest neighbour (pixel centres)."""
    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]  # (1, h, w) as SAM3 keeps per-object masks
    if m.ndim != 2:
        raise ValueError(f"mask: expected (h, w), got shape {m.shape}")
    h, w = m.shape
    if (h, w) == (height, width):
        return m
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return m[rows[:, None], cols[None, :]]


def pick_instance(
    candidates: Mapping[int, np.ndarray],  # sam3 id -> (H, W) bool mask on the frame
    points: np.ndarray,  # (N, 2) absolute pixels
    labels: np.ndarray,  # (N,) 0/1
) -> int | None:
    """The instance whose mask holds the first foreground point (None if none does)."""
    pos = [p for p, lab in zip(np.asarray(points).reshape(-1, 2), labels, strict=True) if lab]
    if not pos:
        return None
    x, y = (int(v) for v in pos[0])
    for sid in sorted(candidates):
        m = candidates[sid]
        if 0 <= y < m.shape[0] and 0 <= x < m.shape[1] and m[y, x]:
            return sid
    return None


# ---- object ids --------------------------------------------------------------------------
@dataclass
class Sam3IdMap:
    """SAM3's object ids <-> the caller's object ids.

    A text/box prompt ("concept") for caller id K restarts SAM3, which then assigns its own ids
    to every instance it detects, also later during propagation. "union": all of them are K
    (one mask, e.g. both arms of "robot arm"); "separate": the first is K and each further
    instance takes the next id above every id in use. Point prompts on a caller id without a
    SAM3 instance create one with a fresh SAM3 id (above SAM3's max_obj_id).
    """

    mode: str = "union"
    owner: int | None = None  # caller id of the current concept prompt
    to_ext: dict[int, int] = field(default_factory=dict)  # sam3 id -> caller id
    dropped: set[int] = field(default_factory=set)  # sam3 ids whose caller id was removed

    def __post_init__(self) -> None:
        if self.mode not in TEXT_INSTANCES:
            raise ValueError(f"text_instances: {self.mode!r} is not one of {TEXT_INSTANCES}")

    def external_ids(self) -> list[int]:
        return sorted(set(self.to_ext.values()))

    def sam3_ids(self, ext_id: int) -> list[int]:
        return sorted(s for s, e in self.to_ext.items() if e == ext_id)

    def start_concept(self, ext_id: int) -> None:
        """A text/box prompt for ext_id: SAM3 starts over, so do we."""
        self.owner = ext_id
        self.to_ext.clear()
        self.dropped.clear()

    def external(self, sam3_id: int, reserved: Iterable[int] = ()) -> int | None:
        """Caller id of a SAM3 id, allocating one for a new concept instance (None: ignore)."""
        sam3_id = int(sam3_id)
        if sam3_id in self.to_ext:
            return self.to_ext[sam3_id]
        if self.owner is None or sam3_id in self.dropped:
            return None
        ext = self.owner
        if self.mode == "separate" and self.owner in self.to_ext.values():
            ext = max([*self.to_ext.values(), *reserved, self.owner]) + 1
        self.to_ext[sam3_id] = ext
        return ext

    def new_point_object(self, ext_id: int, max_obj_id: int) -> int:
        """A fresh SAM3 id for a caller id first prompted with points."""
        if ext_id in self.to_ext.values():
            raise ValueError(f"obj_id: {ext_id} already has SAM3 instances {self.sam3_ids(ext_id)}")
        sid = max([int(max_obj_id), *self.to_ext, *self.dropped, -1]) + 1
        self.to_ext[sid] = ext_id
        return sid

    def remove(self, ext_id: int) -> list[int]:
        """Forget ext_id; returns its SAM3 ids (later detections with those ids are dropped)."""
        sids = self.sam3_ids(ext_id)
        for s in sids:
            del self.to_ext[s]
            self.dropped.add(s)
        if self.owner == ext_id:
            self.owner = None  # new instances of the concept are no longer wanted
        return sids

    def clear(self) -> None:
        self.owner = None
        self.to_ext.clear()
        self.dropped.clear()


def outputs_to_masks(
    outputs: Mapping | None,
    ids: Sam3IdMap,
    height: int,
    width: int,
    all_ids: Iterable[int] = (),
) -> dict[int, np.ndarray]:
    """SAM3's per-frame outputs -> {caller id: (height, width) bool}, full resolution.

    Instances mapped to the same caller id are OR-ed; every id in `all_ids` without an
    instance on this frame gets an all-False mask (so a re-propagation clears stale results).
    """
    out = {int(e): np.zeros((height, width), bool) for e in all_ids}
    if outputs is None:  # non-zero ranks of a multi-GPU run
        return out
    sam3_ids = np.asarray(outputs.get("out_obj_ids", ()), np.int64).reshape(-1)
    masks = outputs.get("out_binary_masks")
    if masks is None or len(sam3_ids) == 0:
        return out
    masks = np.asarray(masks)
    if masks.shape[0] != len(sam3_ids):
        raise ValueError(
            f"outputs: {len(sam3_ids)} out_obj_ids but {masks.shape[0]} out_binary_masks"
        )
    reserved = list(out)
    for sid, m in zip(sam3_ids.tolist(), masks, strict=True):
        ext = ids.external(sid, reserved)
        if ext is None:
            continue
        full = resize_mask(m, height, width)
        out[ext] = out[ext] | full if ext in out else full.copy()
    return out


# ---- propagation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Sam3Call:
    """Arguments of one Sam3VideoInference.propagate_in_video call and the frames it yields."""

    reverse: bool
    start_frame_idx: int
    max_frame_num_to_track: int
    first: int  # lowest frame yielded
    last: int  # highest frame yielded


def plan_calls(windows: Sequence[tuple[str, int, int]]) -> list[Sam3Call]:
    """Map base.propagation_windows to SAM3 propagate calls, merging "both" directions.

    SAM3 processes forward [s, min(s + max, T - 1)] and backward [max(s - max, 0), s - 1]
    (the start frame itself is excluded going backward). When a backward window starts inside
    the forward window before it, only its part below the forward start is run: the official
    "both" pattern (forward from S, then backward from S), no frame computed twice, and the
    sequence SAM3's action history expects for its fetch/partial propagation decisions. A
    backward window starting above a capped forward window runs whole (it must pass through
    the overlap to carry its memory; there the session layer's merge rule picks per object).
    """
    calls: list[Sam3Call] = []
    fwd: tuple[int, int] | None = None
    for direction, lo, hi in windows:
        if lo > hi:
            raise ValueError(f"windows: empty range [{lo}, {hi}]")
        if direction == "forward":
            calls.append(Sam3Call(False, lo, hi - lo, lo, hi))
            fwd = (lo, hi)
        elif direction == "backward":
            if fwd is not None and fwd[0] <= hi <= fwd[1]:
                hi = fwd[0] - 1  # the forward pass already covered [fwd[0], hi]
                if hi < lo:
                    continue
            calls.append(Sam3Call(True, hi + 1, hi + 1 - lo, lo, hi))
        else:
            raise ValueError(f"windows: direction {direction!r} is not forward/backward")
    return calls


def call_frames(call: Sam3Call) -> list[int]:
    """The frames a call yields, in order (what SAM3's _get_processing_order gives)."""
    if call.reverse:
        end = max(call.start_frame_idx - call.max_frame_num_to_track, 0)
        return list(range(call.start_frame_idx - 1, end - 1, -1))
    return list(range(call.start_frame_idx, call.start_frame_idx + call.max_frame_num_to_track + 1))
