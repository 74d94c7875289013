"""Episode selection and per-episode plans: validation before any work, stage order."""

from __future__ import annotations

import pytest

from orchestrator.config import parse_pipeline
from orchestrator.plan import (
    DatasetInfo,
    PlanError,
    build_plans,
    describe_plans,
    parse_episode_spec,
)
from protocol.prompts_file import parse_prompts

DS = DatasetInfo("/data/x.zarr", "/data/x.zarr", (10, 25, 40), "img", 48, 64,
                 {"episodes": [{"instruction": "the red mug"}, {"instruction": "a cup"}, {}]})  # fmt: skip


def _pf(episodes: dict, coords: str = "abs"):
    return parse_prompts({"version": 1, "coords": coords, "episodes": episodes}, source="p.yaml")


def _arm_entry(**over):
    objs = {
        "arm_left": {"obj_id": 1, "prompts": [{"frame": 0, "points": [[5, 40]], "labels": [1]}]},
        "arm_right": {"obj_id": 2, "prompts": [{"frame": 2, "box": [40, 30, 63, 47]}]},
        "gripper_left": {"obj_id": 3, "prompts": [{"frame": 9, "box": [1, 1, 9, 9]}, {"frame": 0, "box": [2, 2, 8, 8]}]},
        "gripper_right": {"obj_id": 4, "prompts": [{"frame": 0, "box": [50, 2, 60, 9]}]},
    }  # fmt: skip
    objs.update(over)
    return {"objects": {k: v for k, v in objs.items() if v is not None}}


ARM = parse_pipeline({"pipeline": "arm_only", "prompts_file": "p.yaml"})


@pytest.mark.parametrize(
    "spec, want",
    [(None, [0, 1, 2]), ("1", [1]), ("0-2", [0, 1, 2]), ("2,0", [0, 2]), ("0-1,1,2", [0, 1, 2]),
     ([2, 0], [0, 2])],
)  # fmt: skip
def test_episode_spec(spec, want):
    assert parse_episode_spec(spec, 3) == want


@pytest.mark.parametrize("spec", ["3", "0-3", "2-1", "a", "1-b", "", "-1"])
def test_episode_spec_errors(spec):
    with pytest.raises(PlanError, match="--episodes"):
        parse_episode_spec(spec, 3)


def test_dataset_info_from_open():
    reply = {"dataset": "/d", "episode_ends": [5, 9], "attrs": {"a": 1},
             "keys": {"img": {"shape": [9, 48, 64, 3], "dtype": "|u1"},
                      "state": {"shape": [9, 7], "dtype": "<f4"}}}  # fmt: skip
    ds = DatasetInfo.from_open(reply, path="/d", camera_key=None)
    assert (ds.camera_key, ds.height, ds.width, ds.n_episodes) == ("img", 48, 64, 2)
    assert ds.bounds(1) == (5, 9)
    with pytest.raises(PlanError, match="camera_key: data/state"):
        DatasetInfo.from_open(reply, path="/d", camera_key="state")
    with pytest.raises(PlanError, match="'rgb' is not in"):
        DatasetInfo.from_open(reply, path="/d", camera_key="rgb")
    reply["keys"]["img2"] = reply["keys"]["img"]
    with pytest.raises(PlanError, match="set camera_key"):
        DatasetInfo.from_open(reply, path="/d", camera_key=None)


def test_rgbm_vlm_instruction_from_config_or_episode():
    cfg = parse_pipeline({"pipeline": "rgbm", "prompt": {"frame": 4}})
    plans = build_plans(cfg, DS, [0, 1], None)
    ops = [p.stages[0].prompts[0] for p in plans]
    assert [(o.vlm, o.frame, o.obj_id) for o in ops] == [("the red mug", 4, 1), ("a cup", 4, 1)]
    assert plans[1].start == 10 and plans[1].n_frames == 15 and plans[1].roles == {"target": 1}
    with pytest.raises(PlanError, match=r"episodes\[2\].instruction"):
        build_plans(cfg, DS, [2], None)
    fixed = parse_pipeline({"pipeline": "rgbm", "prompt": {"instruction": "bowl"}})
    assert build_plans(fixed, DS, [2], None)[0].stages[0].prompts[0].vlm == "bowl"
    late = parse_pipeline({"pipeline": "rgbm", "prompt": {"frame": 12}})
    with pytest.raises(PlanError, match="outside the episode's frames 0-9"):
        build_plans(late, DS, [0, 1], None)  # episode 0 has 10 frames, episode 1 has 15


def test_rgbm_file_and_text():
    cfg = parse_pipeline(
        {"pipeline": "rgbm", "prompts_file": "p.yaml", "prompt": {"source": "file", "obj_id": 7}}
    )
    pf = _pf(
        {
            0: {"target": {"frame": 3, "box": [1, 2, 30, 40]}},
            1: {"target": {"box": [10, 10, 80, 40]}},
        }
    )
    op = build_plans(cfg, DS, [0], pf)[0].stages[0].prompts[0]
    assert (op.frame, op.box, op.obj_id) == (3, (1.0, 2.0, 30.0, 40.0), 7)
    assert op.body("s")["box"] == [1.0, 2.0, 30.0, 40.0] and "rel" not in op.body("s")
    with pytest.raises(PlanError, match=r"episodes.1.target.box: .* not inside the 64x48 image"):
        build_plans(cfg, DS, [0, 1], pf)  # x1 = 80 > width 64
    with pytest.raises(PlanError, match=r"episodes.2.target: missing"):
        build_plans(cfg, DS, [2], pf)
    text = parse_pipeline({"pipeline": "rgbm", "prompt": {"source": "text", "text": "mug"}})
    assert build_plans(text, DS, [0], None)[0].stages[0].prompts[0].body("s") == {
        "session": "s", "frame": 0, "obj_id": 1, "text": "mug"}  # fmt: skip


def test_arm_only_stages_follow_seed_000():
    pf = _pf({0: {**_arm_entry(), "refinements": [{"obj_id": 1, "frame": 5, "points": [[6, 41]], "labels": [0]},
                                                  {"obj_id": 4, "frame": 1, "points": [[55, 5]], "labels": [1]}]}})  # fmt: skip
    (plan,) = build_plans(ARM, DS, [0], pf)
    names = [s.name for s in plan.stages]
    assert names == ["A/bootstrap", "A/refine", "B/grippers"]
    boot, refine, grip = plan.stages
    assert [(o.role, o.frame) for o in boot.prompts] == [("arm_left", 0), ("arm_right", 2)]
    assert [(o.obj_id, o.frame, o.labels) for o in refine.prompts] == [(1, 5, (0,))]
    # grippers (and gripper refinements) sorted by (frame, obj_id), as new ids after stage A
    assert [(o.obj_id, o.frame) for o in grip.prompts] == [(3, 0), (4, 0), (4, 1), (3, 9)]
    assert plan.roles == {"arm_left": 1, "arm_right": 2, "gripper_left": 3, "gripper_right": 4}
    assert plan.require_any == (3, 4) and plan.obj_ids == [1, 2, 3, 4]
    assert "B/grippers: gripper_left#3@0:box" in describe_plans([plan], done=[], direction="both")


def test_arm_only_each_side_optional_and_text_bootstrap():
    pf = _pf({0: _arm_entry(arm_right=None, gripper_right=None)})
    cfg = parse_pipeline({"pipeline": "arm_only", "prompts_file": "p.yaml",
                          "arm_only": {"bootstrap_text": {"arm_left": "left arm", "arm_right": "right arm"},
                                       "bootstrap_frame": 1, "obj_ids": {"arm_right": 9}}})  # fmt: skip
    (plan,) = build_plans(cfg, DS, [0], pf)
    boot, refine, grip = plan.stages
    assert [(o.text, o.obj_id, o.frame) for o in boot.prompts] == [
        ("left arm", 1, 1),
        ("right arm", 9, 1),
    ]
    assert [(o.role, o.points) for o in refine.prompts] == [("arm_left", ((5.0, 40.0),))]
    assert plan.roles == {"arm_left": 1, "arm_right": 9, "gripper_left": 3}


def _errors(entry, coords="abs", cfg=ARM) -> str:
    with pytest.raises(PlanError) as e:
        build_plans(cfg, DS, [0], _pf({0: entry}, coords))
    return str(e.value)


def test_arm_only_refuses_without_gripper_prompt():
    msg = _errors(_arm_entry(gripper_left=None, gripper_right=None))
    assert "no gripper prompt given" in msg and "nothing was run" in msg


def test_arm_only_validation_lists_every_problem():
    entry = _arm_entry(
        arm_left={"obj_id": 1, "prompts": [{"frame": 10, "points": [[64, 3]], "labels": [1]}]},
        gripper_right={"obj_id": 4, "prompts": [{"frame": 0, "box": [50, 2, 70, 9]}]},
    )
    msg = _errors(entry)
    assert "3 problem(s)" in msg
    assert "objects.arm_left.prompts[0].frame: 10 is outside the episode's frames 0-9" in msg
    assert "objects.arm_left.prompts[0].points[0]: [64, 3] is outside the 64x48 image" in msg
    assert "objects.gripper_right.prompts[0].box" in msg


def test_arm_only_rel_coords_and_unique_ids():
    rel = {"objects": {"arm_left": {"obj_id": 1, "prompts": [{"frame": 0, "points": [[0.5, 0.9]], "labels": [1]}]},
                       "gripper_left": {"obj_id": 2, "prompts": [{"frame": 0, "box": [0.1, 0.1, 0.3, 0.3]}]}}}  # fmt: skip
    (plan,) = build_plans(ARM, DS, [0], _pf({0: rel}, "rel"))
    assert plan.stages[0].prompts[0].body("s")["rel"] is True
    cfg = parse_pipeline({"pipeline": "arm_only", "prompts_file": "p.yaml",
                          "arm_only": {"bootstrap_text": {"arm_right": "r"}}})  # fmt: skip
    clash = _arm_entry(
        arm_right=None, gripper_left={"obj_id": 2, "prompts": [{"frame": 0, "box": [1, 1, 5, 5]}]}
    )
    assert "obj_id 2 is used by both gripper_left and arm_right" in _errors(clash, cfg=cfg)


def test_arm_only_inline_objects_apply_to_every_episode():
    cfg = parse_pipeline({"pipeline": "arm_only", "arm_only": _arm_entry()})
    plans = build_plans(cfg, DS, [0, 1, 2], None)
    assert [len(p.stages) for p in plans] == [2, 2, 2]
    assert plans[2].start == 25 and plans[2].n_frames == 15
