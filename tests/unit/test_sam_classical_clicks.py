"""Click corrections of the classical backend where the mask lost the object
(classical_clicks.is_lost / redetect, and add_prompt's choice between them and the local
refinement) on small synthetic images with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.sam.backends.base import Prompt, Window
from services.sam.backends.classical import ClassicalBackend
from services.sam.backends.classical_clicks import (
    deepest_point,
    is_lost,
    redetect,
    refine_with_clicks,
)
from services.sam.backends.classical_ops import features
from tests.unit.classical_scene import iou
from tests.unit.classical_scene import scene as _scene


def scene(x0=20, y0=40, size=36, **kw):
    """The shared scene with this module's default square."""
    return _scene(x0=x0, y0=y0, size=size, **kw)


def test_deepest_point_is_the_centre_of_a_square():
    _, m = scene(x0=20, y0=40, size=36)
    x, y = deepest_point(m)
    assert abs(x - 37.5) <= 1.5 and abs(y - 57.5) <= 1.5


def test_is_lost_by_the_distance_of_the_positive_click():
    _, ref = scene(x0=20)
    pos = np.array([[120, 58]], np.float32)
    assert is_lost(np.zeros_like(ref), pos, np.array([1]), ref)  # no mask at all
    assert is_lost(ref, pos, np.array([1]), ref)  # 64 px away from a 36 px object
    assert not is_lost(ref, np.array([[60, 58]], np.float32), np.array([1]), ref)  # near it
    assert not is_lost(ref, pos, np.array([0]), ref)  # a negative click says nothing
    big = np.zeros_like(ref)
    big[10:110, 10:100] = True  # the object grew: the distance is measured against that size
    assert not is_lost(big, pos, np.array([1]), ref)


def test_redetect_finds_the_object_where_the_click_is():
    img, m = scene(x0=100, y0=50)  # the object now
    _, ref = scene(x0=20, y0=40)  # where the keyframe had it
    wrong = np.zeros_like(m)
    wrong[10:30, 10:40] = True  # what the tracker followed instead
    out = redetect(features(img), ref, np.array([[118, 68], [25, 20]], np.float32),
                   np.array([1, 0]), prior=wrong)  # fmt: skip
    assert iou(out, m) > 0.85
    assert not (out & wrong).any()


def test_add_prompt_click_on_a_lost_object_replaces_the_wrong_mask():
    """Frame 0 has the object on the left; on frames 1-3 it is on the right and the
    propagated mask followed a patch of background instead. A positive click on frame 3
    finds the object again (the wrong mask goes); a click next to a mask that holds the
    object refines it locally."""
    img0, m0 = scene(x0=20, y0=40)
    img1, m1 = scene(x0=110, y0=50)
    frames = np.stack([img0, img1, img1, img1])
    be = ClassicalBackend()
    st = be.init_state(frames)
    be.add_prompt(st, Prompt(0, 1, mask=m0))
    n = len(frames)
    for _ in be.propagate(st, [Window("forward", 0, n - 1, {1: np.arange(n, dtype=np.int64)})]):
        pass
    wrong = np.zeros_like(m0)
    wrong[10:40, 10:50] = True  # what a tracker that lost the object might hold
    st.objects[1].results[3] = np.packbits(wrong, axis=-1)
    pos = np.array([[127, 67]], np.float32), np.array([1], np.int32)
    out = be.add_prompt(st, Prompt(3, 1, points=pos[0], labels=pos[1]))[1]
    assert iou(out, m1) > 0.85 and not (out & wrong).any()
    part = m1.copy()
    part[:, 128:] = False  # the right half missed: a click there is a local correction
    st.objects[1].results[2] = np.packbits(part, axis=-1)
    out = be.add_prompt(st, Prompt(2, 1, points=np.array([[138, 67]], np.float32),
                                   labels=pos[1]))[1]  # fmt: skip
    assert out[part].all() and out[60:75, 128:146].all()  # kept, and the clicked part added
    assert iou(out, m1) > iou(part, m1) + 0.2 and not (out & ~m1).any()


def test_background_click_alone_on_a_frame_without_mask_is_refused():
    img0, m0 = scene(x0=20, y0=40)
    be = ClassicalBackend()
    st = be.init_state(np.stack([img0, img0]))
    be.add_prompt(st, Prompt(0, 1, mask=m0))
    with pytest.raises(ValueError, match="background labels"):
        be.add_prompt(st, Prompt(1, 1, points=np.array([[5, 5]], np.float32),
                                 labels=np.array([0], np.int32)))  # fmt: skip


def test_a_far_click_on_background_colours_keeps_the_mask():
    """A positive click far from a good mask on colours the object never had (a thin missed
    structure, a stray click) neither re-detects the object there nor drops the mask."""
    img, m = scene(x0=20, y0=40)
    be = ClassicalBackend()
    st = be.init_state(np.stack([img, img]))
    be.add_prompt(st, Prompt(0, 1, mask=m))
    st.objects[1].results[1] = np.packbits(m, axis=-1)
    far = np.array([[140, 100]], np.float32), np.array([1], np.int32)
    out = be.add_prompt(st, Prompt(1, 1, points=far[0], labels=far[1]))[1]
    assert out[m].mean() > 0.95 and out[100, 140]


def test_refine_keeps_the_prior_when_the_reach_covers_all_of_it():
    img, m = scene(x0=20, y0=40)
    out = refine_with_clicks(features(img), m, np.array([[140, 100], [38, 58]], np.float32),
                             np.array([1, 0]), ref_size=400)  # fmt: skip
    assert out[m].mean() > 0.8  # the negative click removes its surroundings at most


def _two_tone(h=200, w=260):
    """A large red object with a patch of the background's own colours in it (a shadowed
    part: only the earlier mask tells it from the background), its mask and the patch's."""
    img, _ = _scene(h=h, w=w, x0=0, y0=0, size=0)
    m = np.zeros((h, w), bool)
    m[40:180, 40:220] = True
    patch = np.zeros_like(m)
    patch[92:120, 70:98] = True
    img[m & ~patch] = (200, 40, 40)
    return img, m, patch


def test_a_negative_click_in_a_small_wrong_region_removes_only_that_region():
    """The mask holds the object and a 12 px blob of background at its left edge; a negative
    click at the blob's centre edits about the blob (its reach follows the click's distance
    to the mask's boundary), not the background-coloured patch of the object 37 px away."""
    img, m, patch = _two_tone()
    prior = m.copy()
    prior[100:112, 28:40] = True  # the wrong blob
    out = refine_with_clicks(features(img), prior, np.array([[33, 106]], np.float32),
                             np.array([0]), ref_size=180)  # fmt: skip
    assert not out[100:112, 28:38].any()  # the blob went
    inner = np.zeros_like(m)
    inner[43:177, 43:217] = True  # inside the 2 px band along the boundary that may move
    assert out[patch & inner].all()  # the background-coloured patch stayed, all of it
    grown = cv2.dilate(prior.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert not (out & ~grown).any()  # a negative click adds nothing (beyond that band)


def test_a_positive_click_only_adds_to_the_mask():
    """A missed red part of the object: a positive click at its centre adds it and takes
    nothing of the mask away (not the background-coloured patch 20 px from the click either)."""
    img, m, patch = _two_tone()
    prior = m.copy()
    prior[90:130, 40:64] = False  # a red part at the left edge missed
    out = refine_with_clicks(features(img), prior, np.array([[50, 110]], np.float32),
                             np.array([1]), ref_size=180)  # fmt: skip
    inner = np.zeros_like(m)
    inner[43:177, 43:217] = True  # inside the 2 px band along the boundary that may move
    assert out[prior & inner].all()
    assert out[92:128, 42:62].all()  # the missed part joined
    assert np.count_nonzero(out & ~m) < 0.01 * m.sum()


def test_a_click_after_a_box_edits_the_box_mask_near_it():
    """Frame 0 prompted with a box, then a positive click in the object's patch of background
    colours: the click edits the box's mask near it, like a click on any other frame. (GrabCut
    on the box again with the click as a sure-object seed took the patch for the object and
    the rest for background: IoU 0.03.)"""
    img, m, patch = _two_tone()
    be = ClassicalBackend()
    st = be.init_state(np.stack([img, img]))
    boxed = be.add_prompt(st, Prompt(0, 1, box=np.array([34, 34, 226, 186], np.float32)))[1]
    assert iou(boxed, m) > 0.95 and not boxed[patch].any()
    click = np.array([[84, 106]], np.float32), np.array([1], np.int32)
    out = be.add_prompt(st, Prompt(0, 1, points=click[0], labels=click[1]))[1]
    assert out[106, 84] and iou(out, m) >= iou(boxed, m)
    yy, xx = np.mgrid[: m.shape[0], : m.shape[1]]
    far = (yy - 106) ** 2 + (xx - 84) ** 2 > 60**2
    assert np.count_nonzero((out != boxed) & far) < 0.001 * m.sum()  # the rest stays
    assert np.array_equal(st.objects[1].keymasks[0], out)


def test_a_click_after_a_mask_that_replaced_a_box_edits_that_mask():
    """Box, then a mask prompt on the same frame (it replaces the box), then a click: the
    click edits the mask prompt, not the box's earlier mask."""
    img, m, patch = _two_tone()
    be = ClassicalBackend()
    st = be.init_state(np.stack([img, img]))
    be.add_prompt(st, Prompt(0, 1, box=np.array([34, 34, 226, 186], np.float32)))
    given = m.copy()
    given[:, 130:] = False  # the user's mask: the object's left half
    assert np.array_equal(be.add_prompt(st, Prompt(0, 1, mask=given))[1], given)
    click = np.array([[60, 60]], np.float32), np.array([0], np.int32)  # a removal, near a corner
    out = be.add_prompt(st, Prompt(0, 1, points=click[0], labels=click[1]))[1]
    assert not out[:, 140:].any()  # the right half, absent from the mask prompt, stays out
    assert np.count_nonzero(out & given) > 0.7 * given.sum()
