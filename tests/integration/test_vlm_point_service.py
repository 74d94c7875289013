"""The vlm `point` op as a real service process (openai backend in front of the chat-completions
test double, prompts backend), and a zero-shot grounding evaluation through it
(python -m tools.grounding eval --vlm)."""

from __future__ import annotations

import json

import pytest

from protocol.errors import RemoteError
from tests.helpers import start_service
from tests.integration.test_vlm_openai import ChatCompletionsDouble, scene
from tests.integration.test_vlm_service import PROMPTS
from tests.unit.test_grounding_tasks import grounding_folder
from tools import grounding
from tools.grounding_tasks import build_tasks


@pytest.fixture
def double():
    d = ChatCompletionsDouble()
    yield d
    d.close()


def test_point_through_the_service_and_a_zero_shot_eval(double, tmp_path, capsys) -> None:
    opts = {"base_url": double.base_url, "timeout": 2.0, "retries": 0, "coords": "norm1000"}
    with start_service("vlm", backend="openai", options=opts, retries=0) as svc:
        c = svc.client
        double.script.append({"answer": '```json\n{"point_2d": [625, 500], "label": "cup"}\n```'})
        out = c.call("point", {"image": scene(), "description": "the green cup"})
        assert out["visible"] is True and out["point"] == [400.0, 240.0] and out["label"] == "cup"
        double.script.append({"answer": "NOT_VISIBLE"})
        out = c.call("point", {"image": scene(), "description": "the purple whale"})
        assert out["visible"] is False and out["point"] is None
        double.script.append({"answer": "It might be somewhere on the left."})
        with pytest.raises(RemoteError, match="neither NOT_VISIBLE nor a point_2d") as ei:
            c.call("point", {"image": scene(), "description": "the cup"})
        assert ei.value.code == "internal"
        with pytest.raises(RemoteError, match="description"):
            c.call("point", {"image": scene()})

        grounding_folder(tmp_path / "g")
        build_tasks(tmp_path / "g", tmp_path / "t", emit_concat=False)
        # pair 01-02: view 02's mask is rows 5..8, cols 8..13 of 16x12; (0.7, 0.6) hits it
        double.script.extend([{"answer": '{"point_2d": [700, 600]}'}, {"answer": "NOT_VISIBLE"}])
        rc = grounding.main(["eval", "--data-json", str(tmp_path / "t" / "t1_val_multi.json"),
                             "--vlm", svc.endpoint, "--description", "the grey block",
                             "--output-json", str(tmp_path / "e.json")])  # fmt: skip
        assert rc == 0, capsys.readouterr().err
        report = json.loads((tmp_path / "e.json").read_text())
        m = report["metrics"]
        assert (m["hit_at_mask"], m["not_visible_accuracy"], m["total"]) == (1.0, 1.0, 2)
        assert [r["pred_text"] for r in report["results"]] == ["[(0.7000, 0.6000)]", "NOT_VISIBLE"]
        sent = [b["messages"][-1]["content"] for b in double.chat_requests()[-2:]]
        assert all('"the grey block"' in str(s) for s in sent)


def test_point_from_the_prompts_file(tmp_path) -> None:
    p = tmp_path / "prompts.yaml"
    p.write_text(PROMPTS)
    with start_service(
        "vlm", backend="prompts", options={"prompts_file": str(p)}, retries=0
    ) as svc:
        out = svc.client.call("point", {"image": scene(), "description": "cup", "episode": 0,
                                        "frame": 0})  # fmt: skip
        assert out["point"] == [400.0, 240.0] and out["visible"] is True  # box [320,120,480,360]
