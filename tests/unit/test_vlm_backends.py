"""Backend seam: options, the prompts backend, vllm request building, the micro-batcher."""

from __future__ import annotations

import base64
import importlib.util
import os
import threading
import time

import cv2
import numpy as np
import pytest

from protocol import deadline
from protocol.deadline import DeadlineExceeded
from services.vlm.backends import make_backend
from services.vlm.backends.chat import ChatOptions
from services.vlm.backends.openai_backend import OpenAIOptions
from services.vlm.backends.vllm_backend import VllmBackend, VllmOptions, llm_kwargs, sampling_kwargs
from services.vlm.batching import BatcherClosed, MicroBatcher
from services.vlm.errors import (
    NotFoundError,
    OptionError,
    RequestError,
    UnsupportedError,
    UpstreamTimeout,
)

PROMPTS = """\
version: 1
coords: {coords}
episodes:
  0:
    target: {{frame: 0, box: {box}, description: "the red mug"}}
    plan:
      check_grasp_success: false
      mark_bounding_box: {{bbox_2d: {box}, label: "red mug"}}
  1:
    objects:
      arm_left: {{obj_id: 1, prompts: [{{frame: 0, box: {arm_box}}}]}}
"""
ARM_BOX = {"abs": "[0, 0, 10, 10]", "rel": "[0, 0, 1, 1]"}  # a [0, 1] box is refused under abs


def _rgb(h: int = 480, w: int = 640) -> np.ndarray:
    img = np.full((h, w, 3), 200, np.uint8)  # (H, W, 3) uint8 RGB
    img[120:360, 320:480] = (0, 160, 0)
    return img


def _prompts_backend(tmp_path, coords="abs", box="[320, 120, 480, 360]", **opts):
    p = tmp_path / "prompts.yaml"
    p.write_text(PROMPTS.format(coords=coords, box=box, arm_box=ARM_BOX[coords]))
    b = make_backend("prompts", {"prompts_file": str(p), **opts})
    b.setup()
    return b, p


# -- options ------------------------------------------------------------------------------


def test_unknown_option_lists_valid_ones():
    with pytest.raises(
        OptionError,
        match=r"openai backend options.base_ur: unknown field; valid fields are \[.*'base_url'",
    ):
        make_backend("openai", {"base_ur": "http://x"})
    with pytest.raises(OptionError, match=r"backend: 'llama' is not one of"):
        make_backend("llama", {})


def test_option_types_are_checked_by_the_one_rule():
    b = make_backend(
        "openai",
        {"concurrency": 3, "pre_resize": False, "timeout": 2, "extra_body": {"top_k": 1},
         "model": "qwen"},
    )  # fmt: skip
    assert b.concurrency == 3 and b.opts.pre_resize is False and b.opts.timeout == 2.0
    assert b.opts.extra_body == {"top_k": 1}
    # strings are not booleans or numbers (--option VALUE is YAML: pre_resize=false is false)
    with pytest.raises(OptionError, match=r"pre_resize: expected bool, got str 'no'; "
                                          r"write true or false without quotes"):  # fmt: skip
        make_backend("openai", {"pre_resize": "no"})
    with pytest.raises(OptionError, match=r"options.concurrency: expected int, got str '3'"):
        make_backend("openai", {"concurrency": "3"})
    with pytest.raises(OptionError, match="options.concurrency"):
        make_backend("openai", {"concurrency": "many"})
    with pytest.raises(OptionError, match="options.coords"):
        make_backend("openai", {"coords": "pixels"})
    with pytest.raises(OptionError, match="base_url"):
        make_backend("openai", {"base_url": "127.0.0.1:8000"})
    with pytest.raises(OptionError, match="max_tokens"):
        make_backend("vllm", {"max_tokens": 0})


def test_model_backends_share_the_chat_options():
    common = {f for f in ChatOptions.__dataclass_fields__}
    assert common <= set(OpenAIOptions.__dataclass_fields__)
    assert common <= set(VllmOptions.__dataclass_fields__)


# -- prompts backend -----------------------------------------------------------------------


def test_prompts_bbox_abs_and_rel(tmp_path):
    b, _ = _prompts_backend(tmp_path)
    out = b.bbox(_rgb(), "anything", 0, 0)
    assert out["box"] == [320, 120, 480, 360] and out["label"] == "the red mug"
    b, _ = _prompts_backend(tmp_path, coords="rel", box="[0.5, 0.25, 0.75, 0.75]")
    assert b.bbox(_rgb(), "x", 0, None)["box"] == [320, 120, 480, 360]
    assert b.bbox(_rgb(240, 320), "x", 0, None)["box"] == [160, 60, 240, 180]


def test_prompts_bbox_errors_are_clear(tmp_path):
    b, p = _prompts_backend(tmp_path)
    with pytest.raises(
        NotFoundError, match=r"episodes.9: no entry for episode 9; the file has episodes \[0, 1\]"
    ):
        b.bbox(_rgb(), "x", 9, 0)
    with pytest.raises(NotFoundError, match=r"episodes.1.target: missing; add target"):
        b.bbox(_rgb(), "x", 1, 0)
    with pytest.raises(NotFoundError, match="given for frame 0, not frame 5"):
        b.bbox(_rgb(), "x", 0, 5)
    with pytest.raises(RequestError, match="send episode"):
        b.bbox(_rgb(), "x", None, None)
    with pytest.raises(RequestError, match="reaches beyond the 320x240 image"):
        b.bbox(_rgb(240, 320), "x", 0, 0)
    with pytest.raises(RequestError, match=r"image: expected RGB \(H, W, 3\) uint8"):
        b.bbox(np.zeros((480, 640, 4), np.uint8), "x", 0, 0)


def test_prompts_file_is_reread_when_it_changes(tmp_path):
    b, p = _prompts_backend(tmp_path)
    p.write_text(PROMPTS.format(coords="abs", box="[10, 20, 30, 40]", arm_box=ARM_BOX["abs"]))
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert b.bbox(_rgb(), "x", 0, 0)["box"] == [10, 20, 30, 40]


def test_prompts_plan_answers_or_unsupported(tmp_path):
    b, _ = _prompts_backend(tmp_path, coords="rel", box="[0.5, 0.25, 0.75, 0.75]")
    out = b.plan("check_grasp_success", _rgb(), None, 0)
    assert out["task"] == "check_grasp_success" and out["result"] is False
    out = b.plan("mark_bounding_box", _rgb(), "the red mug", 0)
    assert out["result"]["bbox_2d"] == [320, 120, 480, 360] and out["result"]["label"] == "red mug"
    with pytest.raises(
        UnsupportedError, match=r"episodes.0.plan.classify_user_prompt: no stored answer"
    ):
        b.plan("classify_user_prompt", None, "grab the cup", 0)
    with pytest.raises(UnsupportedError, match="send episode"):
        b.plan("check_grasp_success", _rgb(), None, None)
    with pytest.raises(RequestError, match="not a planner task"):
        b.plan("open_door", None, None, 0)


def test_prompts_backend_without_file_says_how_to_set_it():
    b = make_backend("prompts", {})
    b.setup()
    with pytest.raises(RequestError, match="--option prompts_file="):
        b.bbox(_rgb(), "x", 0, 0)


def test_prompts_backend_refuses_a_bad_file_at_setup(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("version: 1\ncoords: abs\nepisodes: {0: {target: {box: [5, 5, 1, 1]}}}\n")
    with pytest.raises(ValueError, match=r"episodes.0.target.box: .*x0 < x1"):
        make_backend("prompts", {"prompts_file": str(p)}).setup()


# -- vllm request building (runs without vllm) ---------------------------------------------


def test_vllm_engine_and_sampling_arguments():
    opts = VllmOptions(
        model="/models/Qwen2.5-VL-7B-Instruct",
        max_tokens=256,
        max_pixels=1280 * 28 * 28,
        engine_kwargs={"enforce_eager": True},
    )
    kw = llm_kwargs(opts)
    assert kw["model"] == "/models/Qwen2.5-VL-7B-Instruct"
    assert kw["limit_mm_per_prompt"] == {"image": 1}
    assert kw["mm_processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 1003520}
    assert kw["enforce_eager"] is True
    assert sampling_kwargs(opts) == {"temperature": 0.0, "max_tokens": 256, "seed": 0}
    assert "mm_processor_kwargs" not in llm_kwargs(VllmOptions(coords="norm1000"))


def test_vllm_messages_carry_the_resized_image_and_the_prompt():
    b = VllmBackend.from_options({"system_prompt": "You are a helpful assistant."})
    msgs = b.messages("Find the green cup.", _rgb())
    assert msgs[0] == {"role": "system", "content": "You are a helpful assistant."}
    image_part, text_part = msgs[1]["content"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    img = cv2.imdecode(
        np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR
    )
    assert img.shape == (476, 644, 3)  # smart_resize(480, 640): what Qwen2.5-VL sees
    assert img[240, 400, 1] > 120 and img[240, 400, 2] < 60  # BGR: the green patch stayed green
    assert text_part == {"type": "text", "text": "Find the green cup."}


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_setup_without_vllm_names_the_install_command():
    b = VllmBackend.from_options({})
    with pytest.raises(ImportError, match=r"make env SERVICE=vlm BACKEND=vllm"):
        b.setup()


# -- micro-batcher ----------------------------------------------------------------------------


def test_batcher_joins_concurrent_requests_and_keeps_order():
    sizes: list[int] = []

    def double(items: list[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.02)  # a GPU step
        return [2 * x for x in items]

    b = MicroBatcher(double, max_batch=4, max_wait_s=0.05)
    results: dict[int, int] = {}

    def call(i: int) -> None:
        results[i] = b.submit(i).result(timeout=5)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert results == {i: 2 * i for i in range(10)}
    assert max(sizes) > 1 and max(sizes) <= 4 and sum(sizes) == 10
    with pytest.raises(BatcherClosed):
        b.submit(1)


def test_batcher_hands_a_failure_to_every_item_of_the_batch():
    def boom(items):
        raise RuntimeError("CUDA out of memory")

    b = MicroBatcher(boom, max_batch=8, max_wait_s=0.0)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        b.submit(1).result(timeout=5)
    b.close()


def test_batcher_does_not_run_an_item_whose_deadline_passed_in_the_queue():
    ran: list[list[int]] = []

    def slow(items: list[int]) -> list[int]:
        ran.append(list(items))
        time.sleep(0.3)  # a GPU step
        return items

    b = MicroBatcher(slow, max_batch=1, max_wait_s=0.0)
    first = b.submit(1)  # occupies the batch thread for 0.3 s
    late = b.submit(2, deadline=time.monotonic() + 0.1)  # expires while queued behind it
    fine = b.submit(3, deadline=time.monotonic() + 5.0)
    assert first.result(timeout=5) == 1 and fine.result(timeout=5) == 3
    with pytest.raises(DeadlineExceeded, match="caller's deadline passed"):
        late.result(timeout=5)
    assert ran == [[1], [3]]  # item 2 never reached the model
    b.close()


def test_vllm_complete_stops_at_the_callers_deadline():
    b = VllmBackend.from_options({})
    release = threading.Event()
    b._batcher = MicroBatcher(lambda items: [release.wait(10) and None] * len(items), 4, 0.0)
    t0 = time.monotonic()
    with deadline.scope(t0 + 1.0), pytest.raises(UpstreamTimeout, match="caller's deadline"):
        b.complete([{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 1.5
    release.set()
    b.close()
