"""The `vllm` backend for real: needs vllm, a CUDA GPU and local Qwen2.5-VL weights.

Run on a GPU host inside the vllm environment (`make env SERVICE=vlm BACKEND=vllm`):
    VLM_VLLM_MODEL=/models/Qwen2.5-VL-3B-Instruct python -m pytest -m slow tests/integration/test_vlm_vllm.py
Skipped elsewhere (the reason says which requirement is missing).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from services.vlm.backends import make_backend
from tests.integration.test_vlm_openai import TRUE_BOX, scene


def _missing() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (make env SERVICE=vlm BACKEND=vllm)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if not os.environ.get("VLM_VLLM_MODEL"):
        return "set VLM_VLLM_MODEL to a local Qwen2.5-VL checkpoint"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def vllm_backend():
    b = make_backend(
        "vllm",
        {
            "model": os.environ["VLM_VLLM_MODEL"],
            "max_model_len": 4096,
            "gpu_memory_utilization": 0.5,
        },
    )
    b.setup()
    yield b
    b.close()


def test_qwen_finds_the_green_cup(vllm_backend):
    out = vllm_backend.bbox(scene(), "the green rectangle")
    assert _iou(out["box"], TRUE_BOX) > 0.5, out["raw"]


def test_planner_tasks_answer_in_the_parsed_forms(vllm_backend):
    assert vllm_backend.plan("classify_user_prompt", None, "clear the table")["result"] == "II"
    out = vllm_backend.plan("check_user_prompt_complete", scene(), None)
    assert out["result"] is False, out["raw"]  # two objects stand on the table
