"""Parsers on answers written the way Qwen2.5-VL writes them: fences, prose, damage, and junk."""

from __future__ import annotations

import pytest

from services.vlm.errors import AnswerParseError
from services.vlm.parsing import (
    extract_json,
    parse_bool_answer,
    parse_box_answer,
    parse_instruction_answer,
    parse_list_answer,
    parse_type_answer,
)

# -- boxes -------------------------------------------------------------------------------

QWEN_GROUNDING = """```json
[
\t{"bbox_2d": [352, 140, 437, 262], "label": "green cup"}
]
```"""

QWEN_WITH_PROSE = """Sure! Here is the object that best matches the description:

```json
{
    "bbox_2d": [412, 188, 503, 301],
    "label": "green cup",
    "description": "A cylindrical green ceramic cup on the right side of the wooden table, next to the laptop",
}
```

The cup is partially occluded by the laptop's screen."""

# The model copied the comments of DexGraspVLA's own prompt template into its answer.
QWEN_COPIED_COMMENTS = """```json
{
    "bbox_2d": [412, 188, 503, 301],
    "label": "green cup",  # Keep this very brief (3-4 words)
    "description": "A green cup, right of the #2 bowl"  # Detailed description
}
```"""

QWEN_SINGLE_QUOTES = "{'bbox_2d': [12, 40, 96, 150], 'label': 'red mug', 'description': None,}"

QWEN_BARE_IN_PROSE = (
    'The red mug [see left] is at {"bbox_2d": [12, 40, 96, 150], "label": "red mug"} in the image.'
)


@pytest.mark.parametrize(
    "text, box, label",
    [
        (QWEN_GROUNDING, [352, 140, 437, 262], "green cup"),
        (QWEN_WITH_PROSE, [412, 188, 503, 301], "green cup"),
        (QWEN_COPIED_COMMENTS, [412, 188, 503, 301], "green cup"),
        (QWEN_SINGLE_QUOTES, [12, 40, 96, 150], "red mug"),
        (QWEN_BARE_IN_PROSE, [12, 40, 96, 150], "red mug"),
        # Qwen2-VL's native grounding text once <|box_start|> tokens are stripped
        ("green cup(352,140),(437,262)", [352, 140, 437, 262], None),
    ],
)
def test_box_answers_that_parse(text, box, label):
    ans = parse_box_answer(text)
    assert ans.bbox == box
    assert ans.label == label


def test_box_keeps_strings_intact():
    ans = parse_box_answer(QWEN_COPIED_COMMENTS)
    assert ans.description == "A green cup, right of the #2 bowl"
    ans = parse_box_answer(QWEN_WITH_PROSE)
    assert ans.description.endswith("next to the laptop")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "no JSON"),
        ("I cannot find a green cup in this image.", "no JSON"),
        (
            '```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "cup"}, '
            '{"bbox_2d": [50, 60, 70, 80], "label": "cup"}]\n```',
            "exactly one object, got a list of 2",
        ),
        ('```json\n{"point_2d": [120, 80], "label": "cup"}\n```', "no bbox_2d field"),
        ('```json\n{"bbox_2d": [120, 80, 140], "label": "cup"}\n```', "4 numbers"),
        ('```json\n{"bbox_2d": ["120", 80, 140, 90]}\n```', "4 numbers"),
        ('```json\n{"bbox_2d": [1, 2, 3, 4], "label": 7}\n```', "label must be a string"),
        ('```json\n{"bbox_2d": [352, 140, 437', "incomplete"),  # cut at max_tokens
        ("(1,2),(3,4) or maybe (5,6),(7,8)", "no JSON"),  # two native boxes: ambiguous
    ],
)
def test_box_answers_that_fail_carry_the_raw_text(text, reason):
    with pytest.raises(AnswerParseError, match=reason) as ei:
        parse_box_answer(text)
    assert ei.value.raw == text


def test_truncated_answer_says_to_raise_max_tokens():
    with pytest.raises(AnswerParseError, match="max_tokens"):
        parse_box_answer('```json\n{"bbox_2d": [352, 140, 437', truncated=True)


def test_extract_json_prefers_the_json_fence_and_skips_prose_brackets():
    text = 'Options [a] and [b].\n```python\nx = [1]\n```\n```json\n{"a": [1, 2]}\n```'
    assert extract_json(text) == {"a": [1, 2]}
    assert extract_json("Result: [note] then {'k': True, 'v': None}") == {"k": True, "v": None}


def test_apostrophes_in_prose_do_not_open_strings():
    text = "Here's what I found (it's the cup's handle): {\"bbox_2d\": [1, 2, 3, 4]}"
    assert parse_box_answer(text).bbox == [1, 2, 3, 4]


# -- booleans ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "The fingers close around the red cup and it is lifted above the table.\nANSWER: True",
            True,
        ),
        ("The hand is open; the cup still stands on the table.\n\nANSWER: False", False),
        ("False: cup, bottle, plate", False),  # DexGraspVLA's own format
        ("True", True),
        ("**True**", True),
        (
            "The gripper is empty and the cup remains on the table, so the grasp failed.\n\nFalse.",
            False,
        ),
        ("Answer: false", False),
        ("Yes, the hand is holding the mug.", True),
        ("No.", False),
        ("No objects with height are left on the table.\nANSWER: True", True),
        ("No objects are left. The table is empty, so the answer is true.", True),
        ("The table still holds a bottle, so it is not empty. The answer is false.", False),
    ],
)
def test_bool_answers(text, expected):
    assert parse_bool_answer(text) is expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("It is true the hand touches the cup, but false that it holds it.", "both True and False"),
        ("I cannot tell from this angle.", "no True/False"),
        ("", "no True/False"),
    ],
)
def test_bool_answers_that_fail(text, reason):
    with pytest.raises(AnswerParseError, match=reason) as ei:
        parse_bool_answer(text)
    assert ei.value.raw == text


# -- prompt type -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The request names a colour and an object.\nANSWER: Type I", "I"),
        ("It asks to remove everything without describing objects.\nANSWER: Type II", "II"),
        ("This is a Type II prompt.", "II"),
        ("Unlike a Type I request, nothing is described. ANSWER: Type II", "II"),
        ("True: Contains specific object (cup) and property (green)", "I"),  # DexGraspVLA form
        ("False: No specific object characteristics mentioned", "II"),
        ("type 2", "II"),
    ],
)
def test_type_answers(text, expected):
    assert parse_type_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    ["Unlike Type II prompts, this one is Type I.", "It is a grasping request.", ""],
)
def test_type_answers_that_fail(text):
    with pytest.raises(AnswerParseError):
        parse_type_answer(text)


# -- lists and instructions ----------------------------------------------------------------


def test_decomposition_list():
    text = """Matching the request with the image, there are two green objects.

```json
["the green cup on the right", "the green block in the middle",]
```"""
    assert parse_list_answer(text) == [
        "the green cup on the right",
        "the green block in the middle",
    ]
    assert parse_list_answer("```json\n[]\n```") == []


@pytest.mark.parametrize(
    "text, reason",
    [
        ('```json\n{"objects": ["cup"]}\n```', "expected a JSON list"),
        ('```json\n["cup", 3]\n```', "item 1"),
        ('```json\n["cup", "  "]\n```', "item 1"),
    ],
)
def test_decomposition_list_failures(text, reason):
    with pytest.raises(AnswerParseError, match=reason):
        parse_list_answer(text)


GENERATE_INSTRUCTION = """```json
{
    "analysis": {
        "priority": "The blue cube is the rightmost object, closest to the arm.",
        "accessibility": "Nothing stands between the arm and the cube.",
        "risk": "The cube's edge is close to the table's border."
    },
    "target": "the blue cube on the far right of the table, next to the red cylinder"
}
```"""


def test_instruction_answer():
    out = parse_instruction_answer(GENERATE_INSTRUCTION)
    assert out["target"] == "the blue cube on the far right of the table, next to the red cylinder"
    assert out["analysis"]["risk"].startswith("The cube's edge")


@pytest.mark.parametrize(
    "text, reason",
    [
        ('```json\n{"analysis": {"priority": "right"}}\n```', "target must be a non-empty string"),
        ('```json\n{"target": ""}\n```', "target must be a non-empty string"),
        ('```json\n{"target": ["cube"]}\n```', "target must be a non-empty string"),
        ("The blue cube on the right.", "no JSON"),
    ],
)
def test_instruction_answer_failures(text, reason):
    with pytest.raises(AnswerParseError, match=reason):
        parse_instruction_answer(text)
