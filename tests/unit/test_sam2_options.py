"""sam2 backend checks that need no torch: options, config-name resolution, start-up errors.

Usage: python3 -m pytest tests/unit/test_sam2_options.py -q
"""

from __future__ import annotations

import importlib.util

import pytest

from services.sam.backends import create_backend
from services.sam.backends.sam2_backend import Sam2Backend
from services.sam.backends.sam2_build import short_config_name

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_registry_builds_sam2_lazily_and_rejects_unknown_options() -> None:
    b = create_backend("sam2", {"checkpoint": "/m/sam2.1_hiera_large.pt", "device": "cpu"})
    assert isinstance(b, Sam2Backend) and b.model is None  # nothing loaded before setup()
    assert b.prompt_kinds == {"points", "box", "mask"}
    with pytest.raises(
        ValueError, match="backend sam2 options.image_size: unknown field; valid fields are"
    ):
        create_backend("sam2", {"image_size": 512})


@pytest.mark.parametrize(
    ("opts", "field"),
    [
        ({"autocast_dtype": "float32"}, "autocast_dtype"),
        ({"video_source": "mp4"}, "video_source"),
        ({"device": "tpu"}, "device"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"hydra_overrides": [1]}, "hydra_overrides"),
    ],
)
def test_bad_options_name_the_field(opts, field) -> None:
    with pytest.raises(ValueError, match=field):
        Sam2Backend(**opts)


@pytest.mark.parametrize(
    ("text", "config"),
    [
        ("/ckpt/sam2.1_hiera_tiny.pt", "configs/sam2.1/sam2.1_hiera_t.yaml"),
        ("sam2.1_hiera_small.pt", "configs/sam2.1/sam2.1_hiera_s.yaml"),
        ("x/sam2.1_hiera_base_plus.pt", "configs/sam2.1/sam2.1_hiera_b+.yaml"),
        ("sam2_hiera_large.pt", "configs/sam2/sam2_hiera_l.yaml"),
        ("sam2.1_hiera_l", "configs/sam2.1/sam2.1_hiera_l.yaml"),
        ("sam2_hiera_b+", "configs/sam2/sam2_hiera_b+.yaml"),
        ("my_finetune.pt", None),
    ],
)
def test_config_inferred_from_names(text, config) -> None:
    assert short_config_name(text) == config


def test_setup_errors_name_the_fix() -> None:
    if HAS_TORCH:  # the sam2 env: gets as far as the missing checkpoint option
        with pytest.raises(ValueError, match="checkpoint: required"):
            Sam2Backend(device="cpu").setup()
    else:  # the light env: says which environment to use
        with pytest.raises(RuntimeError, match="requirements-sam2.txt"):
            Sam2Backend(device="cpu").setup()
