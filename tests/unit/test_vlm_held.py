"""The planner task identify_held_object: prompt, strict parser (fenced JSON, prose, "no
object"), prompts-file answers and the prompts backend."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.prompts_file import PromptsFileError, parse_prompts
from services.vlm.backends.prompts_backend import PromptsBackend, PromptsOptions
from services.vlm.errors import AnswerParseError
from services.vlm.parsing import parse_held_answer
from services.vlm.prompts import TASKS, check_task, task_prompt

HELD = {"held": True, "label": "red mug", "description": "the red mug in the right gripper"}
NOTHING = {"held": False, "label": None, "description": None}


def test_task_is_registered_and_prompt_names_both_answers():
    spec = TASKS["identify_held_object"]
    assert spec.needs_image and not spec.needs_instruction
    text = task_prompt("identify_held_object", "grasp the red mug")
    assert '"held": true' in text and '"held": false' in text and "grasp the red mug" in text
    assert "{{" not in text  # the f-string braces are single in the text the model sees
    with pytest.raises(Exception, match="image"):
        check_task("identify_held_object", False, None)


@pytest.mark.parametrize("text", [
    '```json\n{"held": true, "label": "red mug", "description": "the red mug in the right gripper"}\n```',
    'The gripper closes around a mug.\n{"held": true, "label": "red mug", '
    '"description": "the red mug in the right gripper",}',  # prose around, trailing comma
    "```json\n[{'held': True, 'label': 'red mug', 'description': 'the red mug in the right gripper'}]\n```",
])  # fmt: skip
def test_held_answers(text):
    assert parse_held_answer(text) == HELD


def test_label_only_fills_the_description():
    out = parse_held_answer('```json\n{"held": true, "label": "blue bowl"}\n```')
    assert out == {"held": True, "label": "blue bowl", "description": "blue bowl"}


@pytest.mark.parametrize("text", [
    '```json\n{"held": false, "label": null, "description": null}\n```',
    '{"held": False}',
    "No object.",
    "Nothing is held by the gripper.",
    "The gripper is empty; the mug still stands on the table.",
    "None",
])  # fmt: skip
def test_nothing_held_is_an_answer(text):
    assert parse_held_answer(text) == NOTHING


@pytest.mark.parametrize("text, why", [
    ("The gripper holds the red mug.", "no JSON"),  # prose naming an object: not parseable
    ('{"held": "yes", "label": "mug"}', "held must be true or false"),
    ('{"held": true}', "names the object"),
    ('{"held": false, "label": "red mug"}', "held is false but"),
    ('{"held": true, "label": 3}', "label must be a string"),
    ('[{"held": true, "label": "a"}, {"held": true, "label": "b"}]', "exactly one"),
    ('```json\n{"held": true, "label": "red', "incomplete"),
])  # fmt: skip
def test_unclear_answers_are_errors(text, why):
    with pytest.raises(AnswerParseError, match=why) as e:
        parse_held_answer(text)
    assert e.value.raw == text  # the raw answer travels with the error


def _file(answer):
    doc = {
        "version": 1,
        "coords": "abs",
        "episodes": {0: {"plan": {"identify_held_object": answer}}},
    }
    return parse_prompts(doc).episodes[0].plan["identify_held_object"]


def test_prompts_file_answers():
    assert _file("the red mug") == {
        "held": True,
        "label": "the red mug",
        "description": "the red mug",
    }
    assert _file(False) == NOTHING
    assert _file({"held": True, "label": "red mug", "description": "x"})["description"] == "x"
    with pytest.raises(PromptsFileError, match="held: true needs"):
        _file({"held": True})
    with pytest.raises(PromptsFileError, match="held: false names no object"):
        _file({"held": False, "label": "mug"})
    with pytest.raises(
        PromptsFileError, match="held: expected bool, got str .no.; write true or false"
    ):
        _file({"held": "no"})


def test_prompts_backend_answers_from_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\ncoords: abs\nepisodes:\n"
        "  0: {target: {frame: 7, box: [2, 3, 20, 30], description: the red mug},\n"
        "      plan: {identify_held_object: {held: true, label: red mug, description: the red mug}}}\n"
        "  1: {plan: {identify_held_object: false}}\n"
    )
    be = PromptsBackend(PromptsOptions(prompts_file=str(path)))
    be.setup()
    img = np.zeros((40, 50, 3), np.uint8)
    out = be.plan("identify_held_object", img, None, episode=0)
    assert out["result"]["held"] and out["result"]["description"] == "the red mug"
    assert be.plan("identify_held_object", img, None, episode=1)["result"] == NOTHING
    assert be.bbox(img, "the red mug", episode=0, frame=7)["box"] == [2, 3, 20, 30]
