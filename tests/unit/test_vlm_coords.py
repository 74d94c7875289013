"""Qwen2.5-VL smart_resize and the mapping of model boxes back to the original image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.vlm.coords import MAX_PIXELS, MIN_PIXELS, BoxConvention, smart_resize
from services.vlm.errors import InvalidBoxError, OptionError


@pytest.mark.parametrize(
    "hw, expected",
    [
        # 480/28 = 17.14 -> 17*28 = 476 ; 640/28 = 22.86 -> 23*28 = 644 ; area within bounds
        ((480, 640), (476, 644)),
        ((720, 1280), (728, 1288)),
        ((1080, 1920), (1092, 1932)),
        ((224, 224), (224, 224)),
        # 70/28 = 2.5 rounds to the even 2 (Python round), as the processor does
        ((70, 700), (56, 700)),
        # area 100 < min_pixels 3136: scaled up by sqrt(3136/100) = 5.6 -> 56x56
        ((10, 10), (56, 56)),
        # area 24e6 > max_pixels: beta = sqrt(24e6/12845056) = 1.3669 -> floor(2926.3/28)*28
        ((4000, 6000), (2912, 4368)),
    ],
)
def test_smart_resize_known_sizes(hw, expected):
    assert smart_resize(*hw) == expected


def test_smart_resize_respects_custom_bounds():
    # a processor started with max_pixels=1280*28*28 (a common vllm serve setting)
    # beta = sqrt(1080*1920 / 1003520) = 1.43747; 1080/beta = 751.3 -> 728; 1920/beta = 1335.7 -> 1316
    h, w = smart_resize(1080, 1920, max_pixels=1280 * 28 * 28)
    assert (h, w) == (728, 1316)
    assert h * w <= 1280 * 28 * 28


def test_smart_resize_refuses_extreme_aspect_and_empty():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2100)
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 640)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6000), st.integers(1, 6000))
def test_smart_resize_properties(h, w):
    if max(h, w) / min(h, w) > 200:
        return
    rh, rw = smart_resize(h, w)
    assert rh % 28 == 0 and rw % 28 == 0
    assert MIN_PIXELS <= rh * rw <= MAX_PIXELS
    if min(h, w) >= 100:  # aspect ratio kept up to rounding each side to a multiple of 28
        assert abs(math.log((rh / rw) / (h / w))) < 0.3


def test_resized_box_maps_back_to_original():
    conv = BoxConvention("resized")
    # the object occupies x 320..480, y 120..360 of a 640x480 image; the model saw 644x476
    model_box = [320 * 644 / 640, 120 * 476 / 480, 480 * 644 / 640, 360 * 476 / 480]
    assert conv.to_original(model_box, 480, 640) == pytest.approx([320, 120, 480, 360], abs=0.01)


@pytest.mark.parametrize(
    "coords, box, expected",
    [
        ("norm1000", [500, 250, 750, 1000], [320, 120, 480, 480]),
        ("norm1", [0.5, 0.25, 0.75, 1.0], [320, 120, 480, 480]),
        ("original", [320, 120, 480, 480], [320, 120, 480, 480]),
    ],
)
def test_other_conventions(coords, box, expected):
    assert BoxConvention(coords).to_original(box, 480, 640) == pytest.approx(expected)


def test_small_overshoot_is_clamped():
    conv = BoxConvention("resized")
    assert conv.to_original([-5, -3, 650, 480], 480, 640) == [0, 0, 640, 480]


@pytest.mark.parametrize(
    "box, match",
    [
        ([300, 100, 200, 200], "inverted"),
        ([100, 300, 200, 200], "inverted"),
        ([100, 100, 100, 200], "empty"),
        ([-60, 10, -1, 20], "empty"),  # entirely left of the image
        ([10, 10, 900, 400], "coords=resized"),  # 0-1000 numbers read as resized pixels
        ([1, 2, 3], "4 finite numbers"),
        ([1, 2, float("nan"), 4], "4 finite numbers"),
    ],
)
def test_bad_boxes_are_rejected(box, match):
    with pytest.raises(InvalidBoxError, match=match) as ei:
        BoxConvention("resized").to_original(box, 480, 640, raw="the raw answer")
    assert "the raw answer" in str(ei.value)


def test_pixels_read_as_norm1_are_refused_not_clamped():
    with pytest.raises(InvalidBoxError, match="coords=norm1"):
        BoxConvention("norm1").to_original([100, 100, 300, 300], 480, 640)


def test_prepare_image_sends_what_the_model_sees():
    img = np.zeros((480, 640, 3), np.uint8)  # (H, W, 3) uint8
    img[100:200, 300:400] = (0, 255, 0)
    out = BoxConvention("resized").prepare_image(img)
    assert out.shape == (476, 644, 3) and out.dtype == np.uint8
    assert out[150, 352].tolist() == [0, 255, 0]
    assert BoxConvention("resized", pre_resize=False).prepare_image(img) is img
    assert BoxConvention("norm1000").prepare_image(img) is img


def test_hint_names_the_model_image_size():
    assert "644x476" in BoxConvention("resized").hint(480, 640)
    assert "0-1000" in BoxConvention("norm1000").hint(480, 640)
    assert "640x480" in BoxConvention("original").hint(480, 640)


def test_bad_convention_options():
    with pytest.raises(OptionError, match="coords"):
        BoxConvention("pixels")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="min_pixels"):
        BoxConvention(min_pixels=10, max_pixels=5)
