"""The vlm `point` task: strict parsing, coordinate mapping, the chat and prompts backends.

Run: python3 -m pytest tests/unit/test_vlm_point.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from services.vlm.backends.chat import ChatBackend, ChatOptions, Completion
from services.vlm.coords import BoxConvention
from services.vlm.errors import AnswerParseError
from services.vlm.point import InvalidPointError, parse_point_answer, point_hint, point_to_original
from tests.unit.test_vlm_backends import _prompts_backend


def test_parse_point_json_and_not_visible() -> None:
    a = parse_point_answer('It is the cup.\n```json\n{"point_2d": [322, 119], "label": "cup"}\n```')
    assert a.point == [322.0, 119.0] and a.label == "cup"
    assert parse_point_answer('[{"point_2d": [[1, 2]]}]').point == [1.0, 2.0]
    assert parse_point_answer("NOT_VISIBLE").point is None
    assert parse_point_answer("I looked carefully: NOT_VISIBLE.").point is None
    assert parse_point_answer("the cup is at (12, 34)").point == [12.0, 34.0]


@pytest.mark.parametrize("text, match", [
    ('NOT_VISIBLE ```json\n{"point_2d": [1, 2]}\n```', "both a point and NOT_VISIBLE"),
    ("I cannot tell where it is.", "neither NOT_VISIBLE nor a point_2d"),
    ("(1, 2) or (3, 4)", "neither NOT_VISIBLE nor a point_2d"),
    ('{"point_2d": [1, 2, 3]}', "point_2d must be 2 numbers"),
    ('{"bbox_2d": [1, 2, 3, 4]}', "no point_2d field"),
    ('{"point_2d": [1, 2], "label": 5}', "label must be a string"),
    ('[{"point_2d": [1, 2]}, {"point_2d": [3, 4]}]', "exactly one object"),
])  # fmt: skip
def test_parse_point_refuses_what_it_cannot_read(text: str, match: str) -> None:
    with pytest.raises(AnswerParseError, match=match):
        parse_point_answer(text)


def test_point_mapping_per_convention() -> None:
    h, w = 480, 640
    assert point_to_original(BoxConvention("norm1000"), [500, 250], h, w) == [320.0, 120.0]
    assert point_to_original(BoxConvention("norm1"), [0.25, 0.5], h, w) == [160.0, 240.0]
    # resized: 640x480 is seen as 644x476 (smart_resize): scale back per axis
    assert point_to_original(BoxConvention("resized"), [322, 238], h, w) == [320.0, 240.0]
    assert point_to_original(BoxConvention("original"), [650, -5], h, w) == [640.0, 0.0]  # clamped
    with pytest.raises(InvalidPointError, match="outside the coordinate range of coords=norm1"):
        point_to_original(BoxConvention("norm1"), [320, 240], h, w)  # pixels sent as norm1
    assert "point_2d" in point_hint(BoxConvention("norm1000"), h, w)


class ScriptedChat(ChatBackend):
    """Test double of a model backend: complete() returns scripted answers (no model here)."""

    def __init__(self, answers: list[str], **opts) -> None:
        super().__init__(ChatOptions(**opts))
        self.answers = list(answers)
        self.prompts: list[str] = []

    def complete(self, messages: list) -> Completion:
        self.prompts.append(messages[-1]["content"][-1]["text"])
        return Completion(self.answers.pop(0))


def test_chat_backend_point_and_not_visible() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    be = ScriptedChat(['```json\n{"point_2d": [500, 250], "label": "cup"}\n```', "NOT_VISIBLE"],
                      coords="norm1000")  # fmt: skip
    out = be.point(image, "the green cup")
    assert out["visible"] and out["point"] == [320.0, 120.0] and out["model_point"] == [500, 250]
    assert out["label"] == "cup" and out["model_size"] == [480, 640]
    assert '"the green cup"' in be.prompts[0] and "NOT_VISIBLE" in be.prompts[0]
    out = be.point(image, "the purple whale")
    assert out == {"visible": False, "point": None, "label": "", "description": "the purple whale",
                   "raw": "NOT_VISIBLE", "model_point": None, "model_size": [480, 640]}  # fmt: skip


def test_prompts_backend_point_is_the_box_centre(tmp_path) -> None:
    be, _ = _prompts_backend(tmp_path)  # target box [320, 120, 480, 360] in pixels
    out = be.point(np.zeros((480, 640, 3), np.uint8), "cup", 0, 0)
    assert out["visible"] and out["point"] == [400.0, 240.0]
