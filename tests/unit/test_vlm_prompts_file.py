"""Prompts file loader/validator: the whole schema, and errors that name episode and field."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from protocol.prompts_file import PromptsFileError, load_prompts_file, parse_prompts

GOOD_YAML = """\
version: 1
coords: abs
episodes:
  0:
    target: {frame: 0, box: [100, 120, 220, 260], description: "the red mug"}
    objects:
      arm_left:      {obj_id: 1, prompts: [{frame: 0, points: [[300, 200], [310, 40]], labels: [1, 0]}]}
      arm_right:     {obj_id: 2, prompts: [{frame: 0, box: [400, 100, 600, 400]}]}
      gripper_left:  {obj_id: 3, prompts: [{frame: 0, box: [280, 180, 330, 240]}, {frame: 60, box: [250, 200, 300, 260]}]}
      gripper_right: {obj_id: 4, prompts: [{frame: 0, box: [420, 300, 470, 360]}]}
    refinements: [{obj_id: 1, frame: 30, points: [[305, 210]], labels: [1]}]
    plan:
      classify_user_prompt: "I"
      decompose_user_prompt: ["the red mug on the left"]
      generate_instruction: "the red mug on the left"
      mark_bounding_box: {bbox_2d: [100, 120, 220, 260], label: "red mug"}
      check_grasp_success: true
  3:
    target: {box: [10, 10, 50, 50]}
"""


def _good() -> dict:
    return yaml.safe_load(GOOD_YAML)


def test_load_yaml_file(tmp_path):
    p = tmp_path / "prompts.yaml"
    p.write_text(GOOD_YAML)
    pf = load_prompts_file(p)
    assert pf.coords == "abs" and sorted(pf.episodes) == [0, 3]
    ep = pf.episode(0)
    assert ep.target.box == (100, 120, 220, 260) and ep.target.description == "the red mug"
    assert ep.objects["arm_left"].prompts[0].points == ((300, 200), (310, 40))
    assert ep.objects["arm_left"].prompts[0].labels == (1, 0)
    assert [p.frame for p in ep.objects["gripper_left"].prompts] == [0, 60]
    assert ep.refinements[0].obj_id == 1 and ep.refinements[0].prompt.frame == 30
    assert ep.plan["generate_instruction"] == {"target": "the red mug on the left"}
    assert ep.plan["check_grasp_success"] is True
    assert pf.episode(3).target.frame == 0  # frame defaults to 0


def test_load_json_file_with_string_episode_keys(tmp_path):
    p = tmp_path / "prompts.json"
    p.write_text(
        json.dumps(
            {
                "version": 1,
                "coords": "rel",
                "episodes": {"7": {"target": {"frame": 2, "box": [0.25, 0.5, 0.75, 1.0]}}},
            }
        )
    )
    pf = load_prompts_file(p)
    assert pf.box_pixels(pf.episode(7).target.box, height=480, width=640) == [160, 240, 480, 480]
    assert pf.points_pixels(((0.5, 0.5),), 480, 640) == [[320, 240]]


def test_missing_episode_names_what_exists(tmp_path):
    pf = parse_prompts(_good(), source="demo.yaml")
    with pytest.raises(PromptsFileError, match=r"demo.yaml: episodes.5: .*episodes \[0, 3\]"):
        pf.episode(5)


def _set(d: dict, path: str, value) -> dict:
    """Set d[a][b]... for path 'a.b...' (ints index lists); value DELETE removes the key."""
    keys = [int(k) if k.lstrip("-").isdigit() else k for k in path.split(".")]
    cur = d
    for k in keys[:-1]:
        cur = cur[k]
    if value is _DELETE:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return d


_DELETE = object()
EP = "episodes.0"


@pytest.mark.parametrize(
    "path, value, match",
    [
        ("coords", _DELETE, r"coords: required"),
        ("coords", "px", r"coords: 'px' is not one of \['abs', 'rel'\]"),
        ("version", 2, r"version: only version 1"),
        ("extra", 1, r"file.extra: unknown field; valid fields are"),
        ("episodes", {}, r"episodes: must be a non-empty mapping"),
        ("episodes.0.notes", "x", rf"{EP}.notes: unknown field; valid fields are"),
        ("episodes.0.target.box", [220, 120, 100, 260], rf"{EP}.target.box: .*x0 < x1"),
        ("episodes.0.target.box", [100, 120, 220], rf"{EP}.target.box: must be \[x0, y0, x1, y1\]"),
        ("episodes.0.target.box", [-1, 120, 220, 260], rf"{EP}.target.box\[0\]: -1 is outside"),
        ("episodes.0.target.frame", -1, rf"{EP}.target.frame: must be a non-negative integer"),
        (
            "episodes.0.target.frame",
            1.5,
            rf"{EP}.target.frame: expected int, got float 1.5; write a whole",
        ),
        (
            "episodes.0.target.frame",
            True,
            rf"{EP}.target.frame: expected int, got bool True; write a whole",
        ),
        (
            "episodes.0.approved",
            "no",
            rf"{EP}.approved: expected bool, got str 'no'; write true or false",
        ),
        ("episodes.0.target.description", 3, rf"{EP}.target.description: expected str, got int 3"),
        (
            "episodes.0.objects.arm_right.obj_id",
            1,
            rf"{EP}.objects.arm_right.obj_id: obj_id 1 is already used by arm_left",
        ),
        (
            "episodes.0.objects.elbow",
            {"obj_id": 9, "prompts": [{"frame": 0, "box": [1, 1, 2, 2]}]},
            rf"{EP}.objects.elbow: unknown field; valid fields are",
        ),
        (
            "episodes.0.objects.arm_left.prompts.0.labels",
            [1, 2],
            r"arm_left.prompts\[0\].labels\[1\]: must be 0 or 1",
        ),
        (
            "episodes.0.objects.arm_left.prompts.0.labels",
            [1],
            r"needs one label per point: 2 points, got 1",
        ),
        ("episodes.0.objects.arm_left.prompts.0.labels", _DELETE, r"points need labels"),
        ("episodes.0.objects.arm_right.prompts.0.labels", [1], r"labels given without points"),
        (
            "episodes.0.objects.arm_right.prompts.0.box",
            _DELETE,
            r"arm_right.prompts\[0\]: a prompt needs points",
        ),
        (
            "episodes.0.objects.arm_right.prompts.0.frame",
            _DELETE,
            r"arm_right.prompts\[0\].frame: required",
        ),
        (
            "episodes.0.objects.arm_right.prompts",
            [],
            r"arm_right.prompts: must be a non-empty list",
        ),
        (
            "episodes.0.objects.arm_left.prompts.0.points",
            [[1, 2, 3], [4, 5]],
            r"points\[0\]: must be \[x, y\]",
        ),
        (
            "episodes.0.refinements.0.obj_id",
            8,
            rf"{EP}.refinements\[0\].obj_id: obj_id 8 is not an object",
        ),
        (
            "episodes.0.plan.classify_user_prompt",
            "III",
            rf"{EP}.plan.classify_user_prompt: must be \"I\" or \"II\"",
        ),
        (
            "episodes.0.plan.check_grasp_success",
            "yes",
            rf"{EP}.plan.check_grasp_success: expected bool, got .*; write true or false",
        ),
        (
            "episodes.0.plan.decompose_user_prompt",
            "cup",
            rf"{EP}.plan.decompose_user_prompt: must be a list",
        ),
        (
            "episodes.0.plan.plan_route",
            True,
            rf"{EP}.plan.plan_route: unknown field; valid fields are",
        ),
    ],
)
def test_schema_errors_name_episode_and_field(path, value, match):
    data = _set(copy.deepcopy(_good()), path, value)
    with pytest.raises(PromptsFileError, match=match) as ei:
        parse_prompts(data, source="demo.yaml")
    assert str(ei.value).startswith("demo.yaml: ")


def test_rel_coords_must_be_fractions():
    data = {
        "version": 1,
        "coords": "rel",
        "episodes": {0: {"target": {"box": [0.1, 0.1, 1.5, 0.9]}}},
    }
    with pytest.raises(PromptsFileError, match=r"target.box\[2\]: 1.5 is outside \[0, 1\]"):
        parse_prompts(data)


@pytest.mark.parametrize("key", [-1, "abc", True])
def test_episode_keys_must_be_non_negative_ints(key):
    data = {"version": 1, "coords": "abs", "episodes": {key: {"target": {"box": [1, 1, 2, 2]}}}}
    with pytest.raises(PromptsFileError, match="non-negative integers"):
        parse_prompts(data)


def test_same_episode_twice_as_int_and_string():
    data = {
        "version": 1,
        "coords": "abs",
        "episodes": {0: {"target": {"box": [1, 1, 2, 2]}}, "0": {"target": {"box": [1, 1, 2, 2]}}},
    }
    with pytest.raises(PromptsFileError, match="appears twice"):
        parse_prompts(data)


def test_duplicate_yaml_keys_are_refused(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text(GOOD_YAML + "  3:\n    target: {box: [1, 1, 2, 2]}\n")
    with pytest.raises(PromptsFileError, match=r"dup.yaml: line \d+: duplicate key 3"):
        load_prompts_file(p)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(PromptsFileError, match="cannot read the prompts file"):
        load_prompts_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nepisodes: [unclosed\n")
    with pytest.raises(PromptsFileError, match="not valid YAML/JSON"):
        load_prompts_file(bad)


def test_abs_coordinates_that_look_relative_are_refused_with_the_fix():
    """Issue 14 item 2: a [0, 1] box under coords: abs used to pass and fail later in SAM."""
    doc = _good()
    doc["episodes"][3]["target"]["box"] = [0.1, 0.2, 0.5, 0.6]
    with pytest.raises(PromptsFileError, match=r"episodes.3.target.box: .* looks like relative"):
        parse_prompts(doc, source="p.yaml")
    with pytest.raises(PromptsFileError, match="write `coords: rel`"):
        parse_prompts(doc, source="p.yaml")
    doc = _good()
    doc["episodes"][0]["objects"]["arm_left"]["prompts"][0]["points"] = [[0.4, 0.5], [0.2, 0.1]]
    with pytest.raises(PromptsFileError, match=r"arm_left.prompts\[0\].points: .* look like rel"):
        parse_prompts(doc)
    doc["coords"] = "rel"  # declared: fine (the other boxes are then > 1 -> trim them)
    doc["episodes"] = {0: {"objects": {"arm_left": doc["episodes"][0]["objects"]["arm_left"]}}}
    assert parse_prompts(doc).episodes[0].objects["arm_left"].prompts[0].points[0] == (0.4, 0.5)


def test_buffer_entry_and_fingerprints():
    from protocol.prompts_file import buffer_fingerprint, episode_fingerprint

    fp = buffer_fingerprint([10, 20], "head_cam_img", 96, 128)
    assert fp == buffer_fingerprint((10, 20), "head_cam_img", 96, 128) and len(fp) == 64
    assert fp != buffer_fingerprint([10, 20], "head_cam_img", 96, 96)
    assert fp != buffer_fingerprint([10, 21], "head_cam_img", 96, 128)
    assert fp != buffer_fingerprint([10, 20], "wrist", 96, 128)
    doc = _good()
    doc["buffer"] = {"fingerprint": fp, "camera_key": "head_cam_img", "size": [128, 96]}
    pf = parse_prompts(doc)
    assert pf.buffer.fingerprint == fp and pf.buffer.size == (128, 96)
    assert "head_cam_img" in pf.buffer.describe()
    doc["buffer"]["fingerprint"] = "abc"
    with pytest.raises(PromptsFileError, match="buffer.fingerprint: must be 64"):
        parse_prompts(doc)
    doc["buffer"] = {"fingerprint": fp, "camera_key": "x", "extra": 1}
    with pytest.raises(PromptsFileError, match="buffer.extra: unknown field; valid fields are"):
        parse_prompts(doc)
    # per-episode fingerprint: changes with the prompts, not with bookkeeping or key order
    entry = _good()["episodes"][3]
    f0 = episode_fingerprint(entry, "abs")
    assert f0 == parse_prompts(_good()).episodes[3].fingerprint
    assert episode_fingerprint({**entry, "round": 4, "annotator": "ann"}, "abs") == f0
    assert episode_fingerprint({"target": {"box": [10.0, 10, 50, 50]}}, "abs") == f0
    assert episode_fingerprint(entry, "rel") != f0
    assert episode_fingerprint({"target": {"box": [10, 10, 50, 51]}}, "abs") != f0
