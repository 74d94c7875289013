"""Drift alarms (services/sam/drift.py) on synthetic tracks, and the session's `drift` with the
other pass's masks it keeps.

Usage: python3 -m pytest tests/unit/test_sam_drift.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from services.sam.backends.base import PassMasks, SamBackend
from services.sam.drift import drift_scores, drift_scores_packed
from services.sam.sessions import SessionManager

T, H, W = 20, 32, 48


def track() -> np.ndarray:
    """A 10x10 square sliding right 1 px per frame: (T, H, W) bool, nothing suspicious."""
    m = np.zeros((T, H, W), bool)
    for t in range(T):
        m[t, 10:20, 5 + t : 15 + t] = True
    return m


def test_a_smooth_track_scores_low_and_keyframes_zero():
    s = drift_scores(track(), {0})
    assert s.shape == (T,) and s.dtype == np.float32
    assert s[0] == 0.0 and (s < 0.15).all(), s


def test_vanish_reappear_and_area_jumps_stand_out():
    m = track()
    m[7] = False  # vanished for one frame
    m[13, 5:25, 0:40] = True  # a blow-up: the mask leaks into the background
    s = drift_scores(m, {0})
    assert s[7] >= 0.9 and 0.5 <= s[8] < 0.9  # the empty frame, then where it reappears
    assert s[13] == pytest.approx(1.0)  # 8x the area, on one frame
    assert 0.4 < s[12] < 0.6 and 0.4 < s[14] < 0.6  # its neighbours: half
    assert (s[1:6] < 0.15).all(), s  # calm before anything happened
    # calm after it, but carrying what happened since the keyframe: above the calm frames
    # before, below the events themselves
    assert (s[15:] > s[1:6].max()).all() and (s[15:] < 0.5).all(), s
    assert set(np.argsort(-s)[:2].tolist()) == {7, 13}
    step = track()
    step[10:, 0:30, 0:40] = True  # leaks at frame 10 and stays: a step, both sides half
    s = drift_scores(step, {0})
    assert 0.4 < s[9] < 0.6 and 0.4 < s[10] < 0.6 and s[12] < 0.15


def test_change_piles_up_from_the_nearest_keyframe():
    """A mask that changes by the same small amount on every frame (a square sliding 1 px per
    frame, 60 frames): no frame stands out, the accumulated change grows with the distance
    from the keyframe and restarts at each keyframe; a vanish still outranks it."""
    n = 60
    m = np.zeros((n, 16, 80), bool)
    for t in range(n):
        m[t, 3:13, 5 + t // 2 : 15 + t // 2] = True
        m[t, 3:13, 5 + (t + 1) // 2 : 15 + (t + 1) // 2] = True  # 0.5 px/frame on average
    s = drift_scores(m, {0})
    assert (np.diff(s[20:]) >= 0).all() and int(np.argmax(s)) == n - 1
    assert s[n - 1] > s[5] + 0.1  # far from the prompt: more suspicious than near it
    two = drift_scores(m, {0, n - 1})  # a keyframe at the end too: the middle is the worst
    assert two[n - 1] == 0 and abs(int(np.argmax(two)) - n // 2) <= 2
    assert two[n // 2] < s[n - 1]
    m[40] = False
    s = drift_scores(m, {0})
    assert int(np.argmax(s)) == 40 and s[40] >= 0.9 and (s < 0.9).sum() == n - 1


def test_disagreement_with_the_other_pass_where_both_cover():
    m = track()
    other = m.copy()
    other[10] = False
    other[10, 0:10, 30:40] = True  # the other pass followed something else on frame 10
    s = drift_scores(m, {0}, other)
    assert s[10] == pytest.approx(1.0) and s[9] < 0.15
    covered = np.ones(T, bool)
    covered[10] = False  # the other pass did not reach frame 10: no disagreement there
    assert drift_scores(m, {0}, other, covered)[10] < 0.15
    # bit-packed version (what the session stores) gives the same numbers
    got = drift_scores_packed(
        np.packbits(m, axis=-1), np.ones(T, bool), {0}, (np.packbits(other, axis=-1), covered)
    )
    assert np.array_equal(got, drift_scores(m, {0}, other, covered))


def test_frames_without_results_score_zero_and_bad_input_is_named():
    m = track()
    present = np.ones(T, bool)
    present[5:] = False
    s = drift_scores_packed(np.packbits(m, axis=-1), present, set())
    assert (s[5:] == 0).all()
    with pytest.raises(ValueError, match=r"masks: expected \(T, H, W\) bool"):
        drift_scores(m.astype(np.uint8), {0})
    with pytest.raises(ValueError, match="other: expected"):
        drift_scores(m, {0}, m[:3])


class TwoPassDouble(SamBackend):
    """TEST DOUBLE: the forward pass yields the track, the backward pass a different mask on
    frame 10 only (and the track elsewhere), like two SAM2 passes through an overlap."""

    name = "two-pass-test-double"
    prompt_kinds = frozenset({"mask"})

    def init_state(self, frames):
        return {}

    def add_prompt(self, state, prompt):
        return {prompt.obj_id: prompt.mask}

    def propagate(self, state, windows):
        m = track()
        for w in windows:
            for t in w.frames:
                mask = m[t].copy()
                if w.direction == "backward" and t == 10:
                    mask[:] = False
                    mask[0:10, 30:40] = True
                yield t, PassMasks(w.direction, {1: mask})

    def remove_object(self, state, obj_id):
        pass

    def reset(self, state):
        pass


def test_session_drift_uses_the_other_pass():
    mgr = SessionManager(TwoPassDouble())
    sid = mgr.start(H, W, T)
    mgr.put_frames(sid, 0, np.zeros((T, H, W, 3), np.uint8))
    m = track()
    mgr.add_prompt(sid, 0, 1, mask=m[0])
    mgr.add_prompt(sid, 19, 1, mask=m[19])
    mgr.propagate(sid, "both")  # frame 10: forward wins the tie... 10 from 0, 9 from 19
    ids, scores = mgr.drift(sid)
    assert ids == [1] and scores.shape == (1, T) and scores.dtype == np.float32
    assert scores[0, 10] > 0.9  # the passes disagree there
    assert scores[0, [0, 19]].tolist() == [0.0, 0.0]  # keyframes
    assert (np.delete(scores[0], [9, 10, 11]) < 0.15).all(), scores
