"""direction: both, end to end: where the forward and the backward pass both cover a frame,
each object's mask on that frame comes from its NEAREST prompted keyframe; a tie goes to the
forward pass (the rule of orchestrator/README.md, implemented by the sam service).

A static 9-frame scene holds a red and a blue square. The gripper object is prompted on the
red square at keyframe 0 and on the blue square at keyframe 8, so its mask on each frame says
which keyframe it came from: frames 0-4 (4 is a tie) must be red, frames 5-8 blue. The same
run with direction forward / backward shows the option matters (red on 0-7 / blue on 1-8).
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from orchestrator.run import run_pipeline
from tests.integration.test_orchestrator_pipeline import local_mesh

T, H, W = 9, 64, 96
RED = (slice(10, 26), slice(10, 28))  # rows, cols of the red square
BLUE = (slice(34, 52), slice(62, 80))
GREEN = (slice(40, 60), slice(20, 50))  # the "arm"


def _box(region) -> list[int]:
    rows, cols = region
    return [cols.start - 3, rows.start - 3, cols.stop + 2, rows.stop + 2]  # x0, y0, x1, y1


def _write_buffer(path) -> None:
    frame = np.full((H, W, 3), 128, np.uint8)  # (H, W, 3) RGB, grey table
    frame[RED] = (220, 30, 30)
    frame[BLUE] = (30, 40, 220)
    frame[GREEN] = (40, 200, 60)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("meta/episode_ends", shape=(1,), dtype="int64", chunks=(1,), compressors=None)
    root["meta/episode_ends"][:] = [T]
    img = root.create_array("data/img", shape=(T, H, W, 3), dtype="uint8", chunks=(3, H, W, 3))
    img[:] = np.broadcast_to(frame, (T, H, W, 3))  # static scene: no motion to track


def _iou(mask: np.ndarray, region) -> float:
    ref = np.zeros((H, W), bool)
    ref[region] = True
    return float((mask & ref).sum() / max(1, (mask | ref).sum()))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("both")
    _write_buffer(tmp / "scene.zarr")
    with local_mesh(tmp) as mesh:
        yield tmp, mesh


def _gripper_masks(scene, direction: str) -> np.ndarray:
    tmp, mesh = scene
    objects = {
        "arm_left": {"obj_id": 1, "prompts": [{"frame": 0, "box": _box(GREEN)}]},
        "gripper_left": {"obj_id": 3, "prompts": [{"frame": 0, "box": _box(RED)}, {"frame": 8, "box": _box(BLUE)}]},
    }  # fmt: skip
    cfg = {"pipeline": "arm_only", "direction": direction, "outputs": ["npz"],
           "arm_only": {"objects": objects}, "run": {"progress": False}}  # fmt: skip
    out = tmp / f"out_{direction}"
    rep = run_pipeline(cfg, str(tmp / "scene.zarr"), str(out), str(mesh.services))
    assert rep["totals"]["done"] == 1, rep["episodes"]
    npz = np.load(out / "npz" / "0000.npz")
    assert list(npz["obj_ids"]) == [1, 3]
    return npz["masks"][1, :, 0]  # (T, H, W) bool: the gripper


def _colours(masks: np.ndarray) -> str:
    """Per frame: r (the red square), b (the blue square) or ? (neither, clearly)."""
    out = ""
    for m in masks:
        red, blue = _iou(m, RED), _iou(m, BLUE)
        out += "r" if red > 0.7 and blue < 0.1 else "b" if blue > 0.7 and red < 0.1 else "?"
    return out


def test_both_takes_the_nearest_keyframe_and_ties_go_forward(scene):
    assert _colours(_gripper_masks(scene, "both")) == "rrrrrbbbb"


@pytest.mark.parametrize("direction, want", [("forward", "rrrrrrrrb"), ("backward", "rbbbbbbbb")])
def test_one_way_directions_differ(scene, direction, want):
    assert _colours(_gripper_masks(scene, direction)) == want
