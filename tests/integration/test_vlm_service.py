"""The vlm service as a real process on a real socket: prompts backend, and openai backend in
front of ChatCompletionsDouble (the HTTP test double of a chat-completions server)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from protocol.errors import RemoteError
from tests.helpers import spawn_service, start_service
from tests.integration.test_vlm_openai import TRUE_BOX, ChatCompletionsDouble, scene

PROMPTS = """\
version: 1
coords: rel
episodes:
  0:
    target: {frame: 0, box: [0.5, 0.25, 0.75, 0.75], description: "the green cup"}
    plan: {check_grasp_success: true, decompose_user_prompt: ["the green cup"]}
  2:
    objects:
      arm_left: {obj_id: 1, prompts: [{frame: 0, points: [[0.4, 0.5]], labels: [1]}]}
"""


@pytest.fixture(scope="module")
def prompts_service(tmp_path_factory):
    p = tmp_path_factory.mktemp("vlm") / "prompts.yaml"
    p.write_text(PROMPTS)
    with start_service(
        "vlm", backend="prompts", options={"prompts_file": str(p)}, retries=0
    ) as svc:
        yield svc


def test_bbox_from_the_prompts_file(prompts_service):
    c = prompts_service.client
    out = c.call("bbox", {"image": scene(), "description": "cup", "episode": 0, "frame": 0})
    assert out["box"] == TRUE_BOX  # rel [0.5, 0.25, 0.75, 0.75] of a 640x480 image
    assert out["description"] == "the green cup" and isinstance(out["raw"], str)
    out = c.call("plan", {"task": "check_grasp_success", "image": scene(), "episode": 0})
    assert out == {
        "task": "check_grasp_success",
        "result": True,
        "raw": '{"check_grasp_success": true}',
    }


@pytest.mark.parametrize(
    "op, body, code, match",
    [
        (
            "bbox",
            {"description": "cup", "episode": 7},
            "not_found",
            "no entry for episode 7; the file has episodes [0, 2]",
        ),
        ("bbox", {"description": "cup", "episode": 2}, "not_found", "episodes.2.target: missing"),
        ("bbox", {"description": "cup", "episode": 0, "frame": 9}, "not_found", "not frame 9"),
        ("bbox", {"description": "cup"}, "bad_request", "send episode"),
        (
            "plan",
            {"task": "classify_user_prompt", "instruction": "grab it", "episode": 0},
            "unsupported",
            "no stored answer",
        ),
        ("plan", {"task": "fly", "episode": 0}, "bad_request", "not a planner task"),
    ],
)
def test_prompts_errors_are_replies(prompts_service, op, body, code, match):
    if op == "bbox":
        body = {"image": scene(), **body}
    with pytest.raises(RemoteError) as ei:
        prompts_service.client.call(op, body)
    assert ei.value.code == code and match in ei.value.message


def test_bad_requests_name_the_field(prompts_service):
    c = prompts_service.client
    with pytest.raises(RemoteError, match="description: required field is missing"):
        c.call("bbox", {"image": scene(), "episode": 0})
    with pytest.raises(
        RemoteError, match=r"image: expected RGB \(H, W, 3\) uint8, got uint8\[480, 640, 4\]"
    ):
        c.call(
            "bbox", {"image": np.zeros((480, 640, 4), np.uint8), "description": "x", "episode": 0}
        )
    with pytest.raises(RemoteError, match="descripton: unknown field"):
        c.call("bbox", {"image": scene(), "descripton": "x"})
    info = c.call("info", {})
    assert info["backend"] == "prompts" and "check_grasp_success" in info["capabilities"]["tasks"]
    assert info["vlm"]["episodes"] == 2 and info["vlm"]["coords"] == "rel"
    assert prompts_service.proc.poll() is None  # still serving


def test_unknown_option_stops_the_start_with_the_valid_ones():
    with pytest.raises(
        RuntimeError, match=r"options.prompt_file: unknown field; valid fields are .*'prompts_file'"
    ):
        spawn_service("vlm", backend="prompts", options={"prompt_file": "x.yaml"}, ready_timeout=30)


def test_openai_backend_through_the_service():
    double = ChatCompletionsDouble()
    try:
        opts = {"base_url": double.base_url, "timeout": 0.5, "retries": 0}
        with start_service("vlm", backend="openai", options=opts, retries=0) as svc:
            c = svc.client
            out = c.call("bbox", {"image": scene(), "description": "the green cup"})
            assert out["box"] == pytest.approx(TRUE_BOX, abs=1.5) and out["label"] == "green cup"
            futs = [
                c.submit("bbox", {"image": scene(), "description": "the green cup"})
                for _ in range(4)
            ]
            assert all(f.result()["box"] == out["box"] for f in futs)

            double.script.append({"answer": "Sorry, there is no such object."})
            with pytest.raises(RemoteError, match="no such object") as ei:
                c.call("bbox", {"image": scene(), "description": "the purple whale"})
            assert ei.value.code == "internal" and "unparseable model answer" in ei.value.message

            double.script.append({"delay": 1.5})
            with pytest.raises(RemoteError) as ei:
                c.call("plan", {"task": "check_grasp_success", "image": scene()})
            assert ei.value.code == "timeout" and "timeout=0.5s" in ei.value.message

            with pytest.raises(RemoteError, match="needs a non-empty instruction") as ei:
                c.call("plan", {"task": "check_instruction_complete", "image": scene()})
            assert ei.value.code == "bad_request"
            assert c.call("info", {})["vlm"]["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    finally:
        double.close()


def test_openai_backend_stops_at_the_callers_deadline():
    """A 3 s call to a vlm whose backend says timeout 25 s, retries 3 (~100 s) answers within
    ~3 s with an error naming the deadline: the server hands the handler the call's deadline."""
    double = ChatCompletionsDouble()
    double.delay = 20.0
    try:
        opts = {"base_url": double.base_url, "model": "m", "timeout": 25, "retries": 3}
        with start_service("vlm", backend="openai", options=opts, retries=0) as svc:
            t0 = time.monotonic()
            with pytest.raises(RemoteError) as ei:
                svc.client.call("bbox", {"image": scene(), "description": "the cup"}, timeout=3.0)
            took = time.monotonic() - t0
            assert took < 3.5, took
            assert ei.value.code == "timeout" and "caller's deadline" in ei.value.message
            assert len(double.chat_requests()) == 1
            assert svc.client.call("info", {})["vlm"]["model"] == "m"  # the worker is free again
    finally:
        double.close()
