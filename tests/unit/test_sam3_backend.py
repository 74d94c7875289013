"""sam3 backend checks that need no GPU: options, the start-up failure without CUDA, the
tokenizer lookup, and the prompt-routing rules (concept restarts, points need outputs).

Usage: python3 -m pytest tests/unit/test_sam3_backend.py -q
"""

from __future__ import annotations

import gzip
import importlib.util

import numpy as np
import pytest

from protocol.errors import Unsupported
from services.sam.backends import create_backend
from services.sam.backends.sam3_backend import Sam3Backend, Sam3State
from services.sam.backends.sam3_convert import Sam3IdMap
from services.sam.backends.sam3_state import BPE_NAME, bpe_candidates, resolve_bpe_path


def _has_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def test_registry_builds_sam3_without_torch_and_rejects_unknown_options() -> None:
    b = create_backend("sam3", {"checkpoint": "/x/sam3.pt", "text_instances": "separate"})
    assert isinstance(b, Sam3Backend) and b.prompt_kinds == {"text", "box", "points"}
    with pytest.raises(
        ValueError, match="backend sam3 options.gpus: unknown field; valid fields are"
    ):
        create_backend("sam3", {"gpus": 2})


@pytest.mark.parametrize(
    ("opts", "field"),
    [
        ({"device": "cpu"}, "device"),
        ({"device": "mps"}, "device"),
        ({"text_instances": "x"}, "text_instances"),
    ],
)
def test_bad_options_name_the_field(opts, field) -> None:
    with pytest.raises(ValueError, match=field):
        Sam3Backend(**opts)


@pytest.mark.skipif(_has_cuda(), reason="this host has CUDA; the no-CUDA message cannot show")
def test_setup_without_cuda_fails_at_start_with_the_fix() -> None:
    with pytest.raises(RuntimeError, match="needs a CUDA GPU") as e:
        Sam3Backend(checkpoint="/nonexistent/sam3.pt").setup()
    assert "sam2" in str(e.value) and "GPU host" in str(e.value)


def test_bpe_lookup(tmp_path) -> None:
    pkg = tmp_path / "site" / "sam3"
    pkg.mkdir(parents=True)
    with pytest.raises(ValueError, match="bpe_path.*#339"):
        resolve_bpe_path(None, str(pkg))
    beside = tmp_path / "site" / "assets" / BPE_NAME  # where sam3 0.1.4's builder looks
    beside.parent.mkdir()
    beside.write_bytes(gzip.compress(b"vocab"))
    assert resolve_bpe_path(None, str(pkg)) == str(beside)
    inside = pkg / "assets" / BPE_NAME  # a repo install keeps it in the package
    inside.parent.mkdir()
    inside.write_bytes(gzip.compress(b"vocab"))
    assert bpe_candidates(str(pkg))[0] == str(inside)
    assert resolve_bpe_path(None, str(pkg)) == str(inside)
    assert resolve_bpe_path(str(beside), str(pkg)) == str(beside)
    with pytest.raises(ValueError, match="bpe_path: file"):
        resolve_bpe_path(str(tmp_path / "nope.gz"), str(pkg))


def _state(cached: dict | None = None, mode: str = "union") -> Sam3State:
    frames = np.zeros((4, 10, 10, 3), np.uint8)
    inf = {"cached_frame_outputs": cached or {}, "tracker_metadata": {"max_obj_id": 2}}
    return Sam3State(frames=frames, inference=inf, ids=Sam3IdMap(mode))


def test_second_concept_prompt_for_another_object_is_refused() -> None:
    st = _state()
    Sam3Backend._check_concept(st, 1)  # nothing yet: fine
    st.ids.start_concept(1)
    st.ids.external(0)
    Sam3Backend._check_concept(st, 1)  # re-prompting the same object restarts it: fine
    with pytest.raises(ValueError, match=r"drop objects \[1\]"):
        Sam3Backend._check_concept(st, 2)


def test_points_without_cached_outputs_explain_the_bootstrap() -> None:
    b = Sam3Backend()
    with pytest.raises(ValueError, match="add a text or box prompt and propagate first"):
        b._point_target(_state(), 0, 5, np.array([[1.0, 1.0]]), np.array([1]))


def test_points_route_to_new_single_or_clicked_instance() -> None:
    left = np.zeros((1, 10, 10), bool)
    left[0, :, :5] = True
    right = np.zeros((1, 10, 10), bool)
    right[0, :, 5:] = True
    st = _state({2: {0: left, 1: right}})
    st.ids.start_concept(1)
    st.ids.external(0), st.ids.external(1)  # "robot arm" found two arms, both obj 1
    b = Sam3Backend()
    pts = np.array([[8.0, 3.0]], np.float32)
    assert b._point_target(st, 2, 1, pts, np.array([1])) == 1  # the right arm was clicked
    with pytest.raises(ValueError, match="none contains the first foreground point"):
        b._point_target(st, 2, 1, pts, np.array([0]))
    sid = b._point_target(st, 2, 4, pts, np.array([1]))  # a new gripper object
    assert sid == 3 and st.ids.external(sid) == 4  # above SAM3's max_obj_id=2
    assert b._point_target(st, 2, 4, pts, np.array([1])) == 3  # then refined in place


def test_segment_image_is_unsupported_with_a_pointer_to_sam2() -> None:
    with pytest.raises(Unsupported, match="use backend sam2"):
        Sam3Backend().segment_image(np.zeros((4, 4, 3), np.uint8), None, None, None)
