"""Drift alarms: a per-frame suspicion score for one object's propagated masks.

Usage:
    from services.sam.drift import drift_scores
    scores = drift_scores(masks, keyframes={0, 40})            # masks: (T, H, W) bool
    scores = drift_scores(fwd, {0, 40}, other=bwd)             # + disagreement of the passes
    worst = np.argsort(-scores)[: max(1, len(scores) // 10)]   # the 10% most suspicious

Each score is in [0, 1], higher = more suspicious, the largest of:
- area jump: j = |log((a_t + 1) / (a_n + 1))| / log(3) against each neighbouring frame n (a
  tripled or thirded area scores 1); a spike (a jump to both neighbours) scores the smaller
  jump, a step (one side) STEP_WEIGHT times the larger;
- vanish / reappear: an empty frame next to one where the object is seen (VANISH), the
  first frame it is seen again (REAPPEAR);
- shape change: (1 - IoU with the previous frame) * SHAPE_WEIGHT (fast motion alone moves a
  mask, so this counts half);
- disagreement: 1 - IoU with `other` (the opposite pass of a `both` propagation) on the
  frames both passes cover (`other_covered`, default every frame); both empty: 0;
- accumulated change: the sum of the scores above over the frames from the nearest keyframe
  to this one (ties: the earlier keyframe); CUM_FULL of it scores CUM_WEIGHT. A tracker
  rarely fails in one frame: it drifts a little on every frame, none of which stands out,
  and its worst frame is where the most change piled up since the prompt. Measured on the
  DAVIS dev split (bench-vos, box protocol), the worst frame was among the 10% most
  suspicious on 1 of 10 sequences without this term and on 4 with it (mask protocol: 2 and
  6), and the flagged frames' mean J fell from 0.50 to 0.45 (sequence mean 0.56). Motion
  alone counts as change too, so a long smooth track piles up as well (at most CUM_WEIGHT):
  the term says where to look first; a spike or a vanish outranks it.
Prompted keyframes score 0 (a person drew them); frames without a result (`present` false in
drift_scores_packed) score 0. Computed on bit-packed masks (popcounts), so a 100-frame
480x640 object takes a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

VANISH = 0.9  # an empty frame next to one where the object is seen
REAPPEAR = 0.6  # the first frame it is seen again after an empty one
STEP_WEIGHT = 0.5  # an area change that persists: half its jump on both sides
SHAPE_WEIGHT = 0.5
JUMP_RATIO = 3.0  # an area ratio this large scores 1
CUM_WEIGHT = 0.5  # the accumulated change scores at most this (a spike or a vanish outranks it)
CUM_FULL = 10.0  # ... reached when the scores since the nearest keyframe sum to this


def drift_scores(
    masks: np.ndarray,  # (T, H, W) bool
    keyframes: Iterable[int],
    other: np.ndarray | None = None,  # (T, H, W) bool, the opposite pass
    other_covered: np.ndarray | None = None,  # (T,) bool: frames `other` covers
) -> np.ndarray:
    """(T,) float32 suspicion scores in [0, 1] (module docstring)."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.dtype != bool:
        raise ValueError(f"masks: expected (T, H, W) bool, got {masks.dtype}{list(masks.shape)}")
    t_len = masks.shape[0]
    packed = np.packbits(masks, axis=-1)  # (T, H, ceil(W/8))
    present = np.ones(t_len, bool)
    pair = None
    if other is not None:
        other = np.asarray(other)
        if other.shape != masks.shape or other.dtype != bool:
            raise ValueError(
                f"other: expected {list(masks.shape)} bool like masks, got "
                f"{other.dtype}{list(other.shape)}"
            )
        cov = np.ones(t_len, bool) if other_covered is None else np.asarray(other_covered, bool)
        if cov.shape != (t_len,):
            raise ValueError(f"other_covered: expected ({t_len},) bool, got {list(cov.shape)}")
        pair = (np.packbits(other, axis=-1), cov)
    return drift_scores_packed(packed, present, keyframes, pair)


def drift_scores_packed(
    packed: np.ndarray,  # (T, H, ceil(W/8)) uint8, protocol.masks.pack layout
    present: np.ndarray,  # (T,) bool: frames holding a result
    keyframes: Iterable[int],
    other: tuple[np.ndarray, np.ndarray] | None = None,  # (packed like `packed`, (T,) bool)
) -> np.ndarray:
    """drift_scores on bit-packed masks (the sam session's result store)."""
    t_len = packed.shape[0]
    flat = packed.reshape(t_len, -1)
    area = np.bitwise_count(flat).sum(axis=1).astype(np.float64)  # (T,)
    score = np.zeros(t_len, np.float64)
    if t_len > 1:
        pair = present[1:] & present[:-1]  # (T-1,) neighbouring pairs with results
        jump = np.abs(np.log((area[1:] + 1) / (area[:-1] + 1))) / np.log(JUMP_RATIO)
        jump = np.where(pair, np.minimum(jump, 1.0), np.nan)  # jump[i]: between i and i+1
        prev = np.concatenate(([np.nan], jump))  # (T,) jump from the previous frame
        nxt = np.concatenate((jump, [np.nan]))  # (T,) jump to the next frame
        hi = np.fmax(prev, nxt)
        lo = np.where(np.isnan(prev) | np.isnan(nxt), hi, np.fmin(prev, nxt))
        # a spike (unlike both neighbours) scores its jump, a step half of it on both sides
        score = np.fmax(score, np.nan_to_num(np.fmax(lo, STEP_WEIGHT * hi)))
        empty = area == 0
        flip = pair & (empty[1:] != empty[:-1])  # vanished or reappeared between i and i+1
        flip_prev = np.concatenate(([False], flip))
        flip_next = np.concatenate((flip, [False]))
        near_flip = flip_prev | flip_next
        score = np.maximum(score, np.where(near_flip & empty, VANISH, 0.0))
        score = np.maximum(score, np.where(flip_prev & ~empty, REAPPEAR, 0.0))
        inter = np.bitwise_count(flat[1:] & flat[:-1]).sum(axis=1)
        union = np.bitwise_count(flat[1:] | flat[:-1]).sum(axis=1)
        shape = np.where(pair & (union > 0), 1.0 - inter / np.maximum(union, 1), 0.0)
        score[1:] = np.maximum(score[1:], SHAPE_WEIGHT * shape)
    if other is not None:
        o_packed, o_present = other
        o_flat = o_packed.reshape(t_len, -1)
        inter = np.bitwise_count(flat & o_flat).sum(axis=1)
        union = np.bitwise_count(flat | o_flat).sum(axis=1)
        cover = o_present & present & (union > 0)
        score = np.maximum(score, np.where(cover, 1.0 - inter / np.maximum(union, 1), 0.0))
    score[~present] = 0.0
    keys = sorted({int(k) for k in keyframes if 0 <= k < t_len})
    if keys:
        score = np.maximum(
            score, CUM_WEIGHT * np.minimum(1.0, _accumulated(score, keys) / CUM_FULL)
        )
        score[~present] = 0.0
    score[keys] = 0.0
    return score.astype(np.float32)


def _accumulated(score: np.ndarray, keys: list[int]) -> np.ndarray:
    """(T,) sum of `score` over the frames from each frame's nearest keyframe (sorted `keys`;
    ties: the earlier one) to the frame, both included."""
    t_len = len(score)
    csum = np.concatenate(([0.0], np.cumsum(score)))  # csum[i] = score[:i].sum()
    idx = np.arange(t_len)
    ka = np.asarray(keys)
    at = np.searchsorted(ka, idx)
    left = ka[np.clip(at - 1, 0, len(ka) - 1)]
    right = ka[np.clip(at, 0, len(ka) - 1)]
    left = np.where(left <= idx, left, right)  # frames before the first keyframe
    right = np.where(right >= idx, right, left)  # frames after the last one
    near = np.where(idx - left <= right - idx, left, right)
    lo, hi = np.minimum(near, idx), np.maximum(near, idx)
    return csum[hi + 1] - csum[lo]
