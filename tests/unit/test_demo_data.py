"""Tests for the demo data generator (tools/demo_data.py): layout, determinism, GT, prompts.

Usage: python3 -m pytest tests/unit/test_demo_data.py -q   (add -m slow for the default-size check)
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
import zarr

from tools.demo_data import GRIPPER_DIM, GT_KEYS, DemoConfig, main, write_demo

H, W, T, E = 120, 160, 12, 2
SMALL = DemoConfig(seed=3, episodes=E, frames=T, height=H, width=W)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    paths = write_demo(SMALL, out)
    root = zarr.open_group(str(paths["data"]), mode="r")
    gt = zarr.open_group(str(paths["gt"]), mode="r")
    masks = {k: np.asarray(gt[f"data/{k}"][:]) for k in GT_KEYS}  # (T_total, H, W) bool each
    prompts = yaml.safe_load(paths["prompts"].read_text())
    return {"paths": paths, "root": root, "gt": gt, "masks": masks, "prompts": prompts}


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_layout_shapes_dtypes_and_codecs(demo):
    root, gt, paths = demo["root"], demo["gt"], demo["paths"]
    ends = np.asarray(root["meta/episode_ends"][:])
    assert ends.dtype == np.int64 and ends.tolist() == [T, 2 * T]
    assert np.asarray(gt["meta/episode_ends"][:]).tolist() == ends.tolist()
    img = root["data/head_cam_img"]
    assert img.shape == (E * T, H, W, 3) and img.dtype == np.uint8 and img.chunks == (2, H, W, 3)
    assert set(root["data"].array_keys()) == {"head_cam_img", "right_cam_img", "right_state",
                                               "action"}  # fmt: skip
    for key in ("right_state", "action"):
        assert root[f"data/{key}"].shape == (E * T, 13) and root[f"data/{key}"].dtype == np.float32
    for key in GT_KEYS:
        assert gt[f"data/{key}"].shape == (E * T, H, W) and gt[f"data/{key}"].dtype == np.bool_
    meta = json.loads((paths["data"] / "data/head_cam_img/.zarray").read_text())
    assert meta["zarr_format"] == 2
    assert meta["compressor"]["id"] == "blosc" and meta["compressor"]["cname"] == "lz4"
    ends_meta = json.loads((paths["data"] / "meta/episode_ends/.zarray").read_text())
    assert ends_meta["compressor"] is None and ends_meta["dtype"] == "<i8"
    episodes = root.attrs["episodes"]
    assert len(episodes) == E and all(e["instruction"] == "grasp the red mug" for e in episodes)


def test_same_seed_same_bytes_other_seed_differs(demo, tmp_path):
    again = write_demo(SMALL, tmp_path / "again")
    for key in ("data", "gt", "prompts"):
        a, b = demo["paths"][key], again[key]
        if a.is_dir():
            fa, fb = _files(a), _files(b)
            assert fa.keys() == fb.keys()
            assert [k for k in fa if fa[k] != fb[k]] == []
        else:
            assert a.read_bytes() == b.read_bytes()
    other = write_demo(
        DemoConfig(seed=4, episodes=1, frames=2, height=H, width=W), tmp_path / "other"
    )
    img_other = np.asarray(zarr.open_group(str(other["data"]), mode="r")["data/head_cam_img"][:2])
    assert not np.array_equal(img_other, np.asarray(demo["root"]["data/head_cam_img"][:2]))


def test_gt_masks_nonempty_disjoint_and_match_the_image(demo):
    masks = demo["masks"]
    for key, m in masks.items():
        assert m.reshape(len(m), -1).any(1).all(), f"{key} empty on some frame"
    keys = list(masks)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert not (masks[a] & masks[b]).any(), f"{a} and {b} overlap"
    img = np.asarray(demo["root"]["data/head_cam_img"][:]).astype(np.float32)  # (T, H, W, 3)
    target = img[masks["gt_target"]]
    assert target[:, 0].mean() > target[:, 1].mean() + 60  # the red mug is red
    arm = img[masks["gt_arm_left"] | masks["gt_arm_right"]].mean()
    grip = img[masks["gt_gripper_left"] | masks["gt_gripper_right"]].mean()
    assert arm > grip + 50  # light-grey links, charcoal grippers


def test_target_occluded_and_grippers_open_close(demo):
    masks = demo["masks"]
    for ep in range(E):
        s = slice(ep * T, (ep + 1) * T)
        area = masks["gt_target"][s].sum((1, 2))
        assert area.min() > 0 and area.min() < 0.92 * area[0], f"episode {ep}: no partial occlusion"
        for side, ratio in (("left", 1.25), ("right", 1.1)):  # right: open 76 px -> 61 on the mug
            g = masks[f"gt_gripper_{side}"][s].sum((1, 2)).astype(float)
            assert g.max() > ratio * g.min(), f"episode {ep}: {side} gripper area constant"


def test_state_and_action(demo):
    root = demo["root"]
    state = np.asarray(root["data/right_state"][:])  # (T_total, 13)
    action = np.asarray(root["data/action"][:])
    assert np.isfinite(state).all()
    for ep in range(E):
        s, e = ep * T, (ep + 1) * T
        np.testing.assert_array_equal(action[s : e - 1], state[s + 1 : e])
        np.testing.assert_array_equal(action[e - 1], state[e - 1])
        opening = state[s:e, GRIPPER_DIM]  # metres
        grasp = root.attrs["episodes"][ep]["grasp_frame"]
        assert 0.5 * T <= grasp < T - 1, "the gripper closes late in the episode"
        assert np.all(np.diff(opening) <= 1e-6), "the right gripper never re-opens"
        assert opening[0] == pytest.approx(0.114, abs=1e-4)  # open from the first frame
        assert np.all(np.abs(opening[grasp:] - opening[-1]) < 1e-6)  # closed, holding
        assert opening[0] - opening[-1] > 0.02  # closed on the mug (0.0915 m wide)
        quat = state[s:e, 3:7]
        np.testing.assert_allclose(np.linalg.norm(quat, axis=1), 1.0, atol=1e-5)
    assert len(root["data/right_state"].attrs["names"]) == 13
    assert root["data/right_state"].attrs["names"][GRIPPER_DIM] == "gripper_opening"
    assert root.attrs["gripper"] == {"key": "right_state", "dim": 7, "closing": "smaller"}


def test_gripper_closes_on_the_target(demo):
    masks, root = demo["masks"], demo["root"]
    k = np.ones((5, 5), bool)
    for ep in range(E):
        f = ep * T + root.attrs["episodes"][ep]["grasp_frame"]
        near = cv2.dilate(masks["gt_gripper_right"][f].astype(np.uint8), k.astype(np.uint8)) > 0
        assert (near & masks["gt_target"][f]).sum() > 10, f"episode {ep}: fingers not on the mug"
        near0 = cv2.dilate(masks["gt_gripper_right"][ep * T].astype(np.uint8), k.astype(np.uint8))
        assert not ((near0 > 0) & masks["gt_target"][ep * T]).any()  # far from it at first


def _red(im: np.ndarray) -> float:
    """Fraction of mug-red pixels (the wooden table is orange: its green is ~0.7 x red)."""
    r, g, b = (im[..., i].astype(float) for i in range(3))
    return float(((r > 60) & (g < 0.45 * r) & (b < 0.45 * r)).mean())


def test_wrist_camera(demo):
    wrist = np.asarray(demo["root"]["data/right_cam_img"][:])  # (T_total, H/2, W/2, 3) uint8
    assert wrist.shape == (E * T, H // 2, W // 2, 3) and wrist.dtype == np.uint8
    assert demo["root"]["data/right_cam_img"].chunks == (2, H // 2, W // 2, 3)
    for ep in range(E):
        first, last = wrist[ep * T].astype(int), wrist[(ep + 1) * T - 1].astype(int)
        red_last, red_first = _red(last), _red(first)
        assert red_last > 0.05 and red_last > 5 * red_first, "the mug fills the held view"


def _inside_box(box, h=H, w=W):
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1


def test_prompts_file_valid_and_on_target(demo):
    doc, masks = demo["prompts"], demo["masks"]
    assert doc["version"] == 1 and doc["coords"] == "abs"
    assert sorted(doc["episodes"]) == list(range(E))
    for ep, entry in doc["episodes"].items():
        off = ep * T
        tgt = entry["target"]
        assert tgt["frame"] == 0 and _inside_box(tgt["box"]) and "mug" in tgt["description"]
        ys, xs = np.nonzero(masks["gt_target"][off])
        x0, y0, x1, y1 = tgt["box"]
        assert x0 <= xs.min() and y0 <= ys.min() and x1 >= xs.max() and y1 >= ys.max()
        objs = entry["objects"]
        assert set(objs) == {"arm_left", "arm_right", "gripper_left", "gripper_right"}
        ids = [o["obj_id"] for o in objs.values()]
        assert sorted(ids) == [1, 2, 3, 4]
        for name, obj in objs.items():
            assert obj["prompts"], f"{name} has no prompt"
            for p in obj["prompts"]:
                assert 0 <= p["frame"] < T
                if "box" in p:
                    assert _inside_box(p["box"])
                for (x, y), lab in zip(p.get("points", []), p.get("labels", []), strict=True):
                    assert 0 <= x < W and 0 <= y < H and lab in (0, 1)
                    side = name.split("_")[1]
                    want = f"gt_{name}" if lab == 1 else f"gt_gripper_{side}"
                    assert masks[want][off + p["frame"], y, x], f"{name} point {x, y} off its mask"
            if name.startswith("arm"):
                labels = obj["prompts"][0]["labels"]
                assert labels.count(1) >= 2 and labels.count(0) == 1
            else:
                assert len({p["frame"] for p in obj["prompts"]}) >= 2


def test_cli_writes_outputs_and_prompts_copy(tmp_path):
    copy = tmp_path / "configs" / "demo.yaml"
    argv = ["--out", str(tmp_path / "out"), "--seed", "1", "--episodes", "1", "--frames", "3"]
    argv += ["--height", "64", "--width", "80", "--prompts-copy", str(copy)]
    assert main(argv) == 0
    assert (tmp_path / "out" / "demo.zarr" / ".zgroup").exists()
    assert copy.read_bytes() == (tmp_path / "out" / "prompts.yaml").read_bytes()


def test_invalid_config_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="frames"):
        write_demo(DemoConfig(frames=0), tmp_path)
    with pytest.raises(ValueError, match="height/width"):
        write_demo(DemoConfig(height=16), tmp_path)


@pytest.mark.slow
def test_committed_demo_prompts_match_the_generator(tmp_path):
    committed = REPO / "configs" / "prompts" / "demo.yaml"
    paths = write_demo(DemoConfig(), tmp_path)
    assert committed.read_text() == paths["prompts"].read_text()
