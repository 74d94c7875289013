"""The grasp-frame finder and prompt-frame resolution (orchestrator/prompt_frame.py) on
hand-made gripper signals: closing, never closing, noisy, re-opening, larger-is-closed."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.config import GraspConfig, parse_pipeline
from orchestrator.plan import DatasetInfo, build_plans, describe_plans
from orchestrator.prompt_frame import (
    FrameError,
    find_grasp,
    grasp_choice,
    grasp_key,
    index_frame,
    parse_frame_spec,
    resolve_frames,
)
from protocol.prompts_file import PromptsFileError, parse_prompts


def ramp(n: int, t0: int, t1: int, a: float, b: float) -> np.ndarray:
    """a until t0, linear to b at t1, then b."""
    s = np.full(n, a, np.float64)
    s[t0:t1] = np.linspace(a, b, t1 - t0, endpoint=False)
    s[t1:] = b
    return s


def test_closing_settles_at_the_held_level():
    s = ramp(100, 60, 70, 0.08, 0.02)  # metres: open, closes over 10 frames, holds
    g = find_grasp(s)
    assert g.crossing == 65  # first frame at or below the midpoint 0.05
    assert g.frame == 69  # first frame within 10% of the range of the held level
    assert g.reopened is None and g.closings == 1
    assert g.threshold == pytest.approx(0.05)


def test_never_closing_falls_back_to_the_last_frame():
    g = find_grasp(np.full(50, 0.08))
    assert g.frame is None and "barely moves" in g.reason
    c = grasp_choice(np.full(50, 0.08), GraspConfig(), "right_state", 7, "smaller", 50)
    assert c.frame == 49 and c.note and "no grasp in right_state[7]" in c.note
    assert c.why.startswith("last (fallback")


def test_noise_alone_is_not_a_grasp():
    rng = np.random.default_rng(0)
    g = find_grasp(0.08 + rng.normal(0, 0.002, 300))
    assert g.frame is None


def test_noisy_closing_is_found_once():
    rng = np.random.default_rng(1)
    s = ramp(200, 120, 130, 0.08, 0.03) + rng.normal(0, 0.002, 200)
    g = find_grasp(s)
    assert g.closings == 1 and 120 <= g.crossing <= 127 and 124 <= g.frame <= 135


def test_reopening_uses_the_last_closing_and_says_so():
    s = ramp(120, 20, 26, 0.08, 0.02)  # closes at 20-26 ...
    s[50:56] = np.linspace(0.02, 0.08, 6)  # ... opens again (a failed grasp) ...
    s[56:] = 0.08
    s[80:86] = np.linspace(0.08, 0.03, 6)  # ... and grasps again
    s[86:] = 0.03
    g = find_grasp(s)
    assert g.closings == 2 and 80 <= g.frame <= 86 and g.reopened is None
    assert "last of 2 closings" in g.reason
    s[100:] = 0.08  # released at the end: still the closing's frame, with a note
    g = find_grasp(s)
    assert g.reopened == 100 and 80 <= g.frame <= 86 and "re-opens at t=100" in g.reason


def test_short_blip_and_closed_from_the_start():
    s = np.full(60, 0.08)
    s[30:32] = 0.02  # two frames closed: shorter than hold=3
    assert find_grasp(s).frame is None
    assert find_grasp(s, hold=2).frame == 30
    s = ramp(60, 30, 36, 0.02, 0.08)  # starts closed, opens: no closing at all
    g = find_grasp(s)
    assert g.frame is None and "closed from t=0" in g.reason


def test_larger_means_closed_and_explicit_threshold():
    s = ramp(80, 40, 46, 0.0, 800.0)  # e.g. a hand's joint values rising as it closes
    assert find_grasp(s, closing="smaller").frame is None  # read the wrong way: it opens
    g = find_grasp(s, closing="larger")
    assert 44 <= g.frame <= 46 and g.threshold == pytest.approx(400.0)
    g = find_grasp(s, closing="larger", threshold=100.0)
    assert g.crossing == 41 and g.threshold == pytest.approx(100.0)
    with pytest.raises(FrameError, match="closing"):
        find_grasp(s, closing="down")


def test_non_finite_and_empty_signals():
    s = ramp(30, 10, 15, 0.08, 0.02)
    s[3] = np.nan
    assert "not finite at t=3" in find_grasp(s).reason
    assert find_grasp(np.zeros(0)).frame is None


def test_frame_specs():
    assert parse_frame_spec("last", "x") == "last" and parse_frame_spec(" Grasp ", "x") == "grasp"
    assert parse_frame_spec("-1", "x") == -1 and parse_frame_spec(3, "x") == 3
    with pytest.raises(FrameError, match="prompt.frame"):
        parse_frame_spec("end", "prompt.frame")
    assert index_frame(-1, 10, "f") == 9 and index_frame(0, 10, "f") == 0
    with pytest.raises(FrameError, match="-1 is the last"):
        index_frame(-11, 10, "f")


def test_grasp_key_defaults_and_errors():
    keys = {"right_state": {"shape": [100, 13]}, "action": {"shape": [100, 13]}}
    assert grasp_key(GraspConfig(), keys) == ("right_state", 7, "smaller")
    umi = {"robot0_gripper_width": {"shape": [100, 1]}}
    assert grasp_key(GraspConfig(), umi) == ("robot0_gripper_width", 0, "smaller")
    with pytest.raises(FrameError, match="prompt.grasp.key: the buffer has none"):
        grasp_key(GraspConfig(), {"action": {"shape": [100, 7]}})
    with pytest.raises(FrameError, match="prompt.grasp.dim: 13 is not a dimension"):
        grasp_key(GraspConfig(dim=13), keys)
    with pytest.raises(FrameError, match="say which dimension"):
        grasp_key(GraspConfig(key="action"), keys)
    assert grasp_key(GraspConfig(key="action", dim=6, closing="larger"), keys) == (
        "action", 6, "larger")  # fmt: skip


class FakeReader:
    """Answers the reader's `arrays` op from memory (only what resolve_frames sends)."""

    def __init__(self, arrays: dict[int, np.ndarray]):
        self.arrays, self.calls = arrays, []

    def idempotent(self, op):  # the reader contract: arrays is idempotent
        return True

    def call(self, op, body, timeout=None, **kw):
        assert op == "arrays" and body["keys"] == ["right_state"]
        self.calls.append(body["episode"])
        return {"arrays": {"right_state": self.arrays[body["episode"]]}}


def _ds(lengths):
    ends = tuple(int(e) for e in np.cumsum(lengths))
    return DatasetInfo("/d.zarr", "/d.zarr", ends, "img", 48, 64,
                       {"episodes": [{"instruction": "grasp the mug"}] * len(lengths)})  # fmt: skip


def test_resolve_and_plan_grasp_last_and_overrides():
    lengths = [40, 30, 20]
    states = {}
    for ep, n in enumerate(lengths):
        st = np.zeros((n, 13), np.float32)
        st[:, 7] = ramp(n, n // 2, n // 2 + 4, 0.1, 0.05) if ep != 1 else 0.1  # 1: never
        states[ep] = st
    reader = FakeReader(states)
    cfg = parse_pipeline({"pipeline": "rgbm", "prompt": {"frame": "grasp"}})
    assert cfg.direction == "auto"
    pf = parse_prompts({"version": 1, "coords": "abs", "episodes": {2: {"frame": -2}}})
    keys = {"right_state": {"shape": [90, 13]}}
    frames, errors = resolve_frames(cfg, _ds(lengths), [0, 1, 2], pf, keys, reader)
    assert errors == [] and reader.calls == [0, 1]  # the override needs no signal
    assert frames[0].frame == 24 and frames[0].why.startswith("grasp at t=24 from right_state[7]")
    assert frames[1].frame == 29 and frames[1].note  # never closes: last frame, noted
    assert frames[2].frame == 18 and "override" in frames[2].why and frames[2].held
    plans = build_plans(cfg, _ds(lengths), [0, 1, 2], pf, frames)
    assert [p.direction for p in plans] == ["both", "backward", "both"]
    op = plans[0].stages[0].prompts[0]
    assert op.frame == 24 and op.held and op.vlm == "grasp the mug"
    text = describe_plans(plans)
    assert "prompt frame 24: grasp at t=24" in text and "NOTE no grasp" in text
    assert "propagate backward" in text


def test_plans_without_a_reader_index_and_last():
    cfg = parse_pipeline({"pipeline": "rgbm", "prompt": {"frame": -1}})
    (p,) = build_plans(cfg, _ds([12]), [0], None)
    assert p.stages[0].prompts[0].frame == 11 and p.direction == "backward"
    assert p.stages[0].prompts[0].held  # describe auto: the held object on end frames
    cfg = parse_pipeline({"pipeline": "rgbm", "prompt": {"frame": 3, "describe": "held"}})
    (p,) = build_plans(cfg, _ds([12]), [0], None)
    assert p.stages[0].prompts[0].held and p.direction == "both"
    cfg = parse_pipeline({"pipeline": "rgbm", "prompt": {"frame": 0}, "direction": "forward"})
    (p,) = build_plans(cfg, _ds([12]), [0], None)
    assert not p.stages[0].prompts[0].held and p.direction == "forward"


def test_config_and_prompts_file_errors_name_the_field():
    with pytest.raises(ValueError, match="prompt.frame"):
        parse_pipeline({"pipeline": "rgbm", "prompt": {"frame": "end"}})
    with pytest.raises(ValueError, match="prompt.grasp.hold"):
        parse_pipeline({"pipeline": "rgbm", "prompt": {"frame": "grasp", "grasp": {"hold": 0}}})
    with pytest.raises(ValueError, match="prompt.grasp.bogus"):
        parse_pipeline({"pipeline": "rgbm", "prompt": {"grasp": {"bogus": 1}}})
    with pytest.raises(PromptsFileError, match=r"episodes.0.frame"):
        parse_prompts({"version": 1, "coords": "abs", "episodes": {0: {"frame": "end"}}})
    with pytest.raises(PromptsFileError, match=r"episodes.0.frame: the target's own"):
        parse_prompts({"version": 1, "coords": "abs", "episodes": {
            0: {"frame": "last", "target": {"frame": 0, "box": [1, 1, 5, 5]}}}})  # fmt: skip
    cfg = parse_pipeline({"pipeline": "rgbm", "prompt": {"frame": "grasp", "grasp":
                          {"key": "robot0_gripper_width", "threshold": 0.03, "closing": "smaller"}}})  # fmt: skip
    assert cfg.prompt.grasp.threshold == 0.03 and cfg.to_dict()["prompt"]["grasp"]["hold"] == 3
