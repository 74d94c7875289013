"""Every exporter output, written from a real zarr source on disk and read back.

Run: python3 -m pytest tests/unit/test_exporter_outputs.py -q
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr
from pycocotools import mask as mask_utils

from services.exporter.export import Export, MemoryBudget, read_status
from services.exporter.synthetic import (
    CAMERA_KEY,
    ROLE_IDS,
    export_episodes,
    make_replay_buffer,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

LENGTHS = [12, 9, 15]
H, W = 47, 62  # odd height (mp4 padding), width not a multiple of 8 (bit packing)
OPTIONS = {"dilation_radius": 2, "arm_only_zarr": True, "chunk_bytes": 40_000,
           "preview_stride": 2, "sheet_frames": 5, "sheet_cols": 2, "fsync": False,
           "pipeline": {"sam": "classical", "prompts": "configs/prompts/x.yaml"}}  # fmt: skip
ALL = ["rgbm", "arm_only", "npz", "preview", "ytvis"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[int, np.ndarray]]:
    d = tmp_path_factory.mktemp("export")
    src = make_replay_buffer(d / "src.zarr", LENGTHS, H, W)
    exp = Export.open(str(d / "out"), str(src), CAMERA_KEY, ALL, OPTIONS, MemoryBudget(1 << 30))
    sent = export_episodes(exp, LENGTHS, H, W, order=[2, 0, 1])  # out of order on purpose
    exp.close()
    return src, d / "out", sent


def expected_arm_only(masks: np.ndarray, radius: int) -> np.ndarray:
    """(T, H, W) uint8 0/255 from (5, T, H, W) bool in ROLE_IDS order, by the issue's formula."""
    _t, arm_l, arm_r, grip_l, grip_r = masks
    arm = (arm_l | arm_r) & ~(grip_l | grip_r)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return np.stack([cv2.dilate(a.astype(np.uint8) * 255, k) for a in arm])


def test_rgbm_buffer_is_format_2_with_every_key_copied(exported) -> None:
    src_path, out, sent = exported
    root = out / "rgbm.zarr"
    assert json.loads((root / ".zgroup").read_text()) == {"zarr_format": 2}
    zarray = json.loads((root / "data" / "rgbm" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["dtype"] == "|u1"
    assert zarray["compressor"]["id"] == "blosc" and zarray["compressor"]["cname"] == "lz4"
    frame_bytes = H * W * 4
    assert zarray["chunks"] == [math.ceil(40_000 / frame_bytes), H, W, 4]  # ~chunk_bytes in time

    src = zarr.open_group(str(src_path), mode="r")
    dst = zarr.open_group(str(root), mode="r")
    assert dst.metadata.zarr_format == 2
    np.testing.assert_array_equal(dst["meta/episode_ends"][:], src["meta/episode_ends"][:])
    assert dst["meta/episode_ends"].dtype == np.int64
    src_keys = sorted(k for k, _ in src["data"].arrays())
    assert sorted(k for k, _ in dst["data"].arrays()) == sorted([*src_keys, "rgbm"])
    for key in src_keys:
        a, b = src[f"data/{key}"][:], dst[f"data/{key}"][:]
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), key  # byte for byte
        assert dict(dst[f"data/{key}"].attrs) == {"unit": "test"}

    rgbm = dst["data/rgbm"][:]  # (N, H, W, 4) uint8
    assert rgbm.shape == (sum(LENGTHS), H, W, 4) and rgbm.dtype == np.uint8
    np.testing.assert_array_equal(rgbm[..., :3], src[f"data/{CAMERA_KEY}"][:])
    assert set(np.unique(rgbm[..., 3])) <= {0, 1}
    ends = np.cumsum(LENGTHS)
    for ep, masks in sent.items():
        s, e = (ends[ep - 1] if ep else 0), ends[ep]
        np.testing.assert_array_equal(rgbm[s:e, ..., 3], masks[0].astype(np.uint8))  # target

    attrs = dict(dst["data/rgbm"].attrs)
    assert attrs["channel_order"] == "RGBM" and attrs["mask_values"] == [0, 1]
    assert attrs["source"]["path"] == str(src_path.resolve())
    assert attrs["source"]["camera_key"] == CAMERA_KEY and len(attrs["source"]["fingerprint"]) == 64
    assert attrs["pipeline"] == OPTIONS["pipeline"]
    assert attrs["export_options"]["dilation_radius"] == 2
    assert attrs["mask_obj_ids"] == {"0": [1], "1": [1], "2": [1]}


def test_arm_only_pngs_match_formula_and_dilation(exported) -> None:
    _src, out, sent = exported
    stack = zarr.open_group(str(out / "arm_only.zarr"), mode="r")
    arm_zarr = stack["data/arm_only_mask"][:]  # (N, H, W) uint8
    np.testing.assert_array_equal(stack["meta/episode_ends"][:], np.cumsum(LENGTHS))
    ends = np.cumsum(LENGTHS)
    for ep, masks in sent.items():
        folder = out / "arm_only" / f"{ep:04d}"
        files = sorted(folder.iterdir())
        assert [f.name for f in files] == [f"{t:05d}.png" for t in range(LENGTHS[ep])]
        pngs = np.stack([cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files])
        assert pngs.shape == (LENGTHS[ep], H, W) and pngs.dtype == np.uint8  # single channel
        assert set(np.unique(pngs)) <= {0, 255}
        expected = expected_arm_only(masks, radius=2)
        np.testing.assert_array_equal(pngs, expected)
        undilated = expected_arm_only(masks, radius=0)
        assert (expected > 0).sum() > (undilated > 0).sum()  # dilation did grow the mask
        s = ends[ep - 1] if ep else 0
        np.testing.assert_array_equal(arm_zarr[s : ends[ep]], pngs)


def test_npz_as_robointer_writes_it(exported) -> None:
    _src, out, sent = exported
    for ep, masks in sent.items():
        with np.load(out / "npz" / f"{ep:04d}.npz", allow_pickle=False) as z:
            assert z["masks"].shape == (5, LENGTHS[ep], 1, H, W) and z["masks"].dtype == bool
            np.testing.assert_array_equal(z["masks"][:, :, 0], masks)
            np.testing.assert_array_equal(z["obj_ids"], [1, 2, 3, 4, 5])
            assert list(z["roles"]) == list(ROLE_IDS)


def test_preview_mp4_and_contact_sheet(exported) -> None:
    _src, out, _sent = exported
    for ep, n in enumerate(LENGTHS):
        cap = cv2.VideoCapture(str(out / "preview" / f"{ep:04d}.mp4"))
        assert cap.isOpened()
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == math.ceil(n / 2)  # preview_stride 2
        decoded = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            assert frame.shape == (H + 1, W, 3)  # odd height padded for mp4v
            decoded += 1
        cap.release()
        assert decoded == math.ceil(n / 2)
        sheet = cv2.imread(str(out / "preview" / f"{ep:04d}_sheet.png"))
        assert sheet.shape == (3 * H, 2 * W, 3)  # 5 tiles, 2 per row, tiles never upscaled
        assert sheet.std() > 10


def test_ytvis_rle_decodes_back_to_the_masks(exported) -> None:
    src_path, out, sent = exported
    doc = json.loads((out / "ytvis" / "annotations.json").read_text())
    assert [v["id"] for v in doc["videos"]] == [1, 2, 3]
    assert [a["id"] for a in doc["annotations"]] == list(range(1, 16))
    assert {c["role"] for c in doc["categories"]} >= set(ROLE_IDS)
    rgb = zarr.open_group(str(src_path), mode="r")[f"data/{CAMERA_KEY}"][:]
    ends = np.cumsum(LENGTHS)
    for video in doc["videos"]:
        ep = video["episode"]
        assert video["length"] == LENGTHS[ep] and (video["height"], video["width"]) == (H, W)
        s = ends[ep - 1] if ep else 0
        for t, name in enumerate(video["file_names"]):
            jpg = cv2.cvtColor(
                cv2.imread(str(out / "ytvis" / "JPEGImages" / name)), cv2.COLOR_BGR2RGB
            )
            assert jpg.shape == (H, W, 3)
            err = [np.abs(jpg.astype(int) - rgb[s + u]).mean() for u in range(video["length"])]
            assert err[t] < 6 and int(np.argmin(err)) == t  # lossy, but this very frame
        anns = [a for a in doc["annotations"] if a["video_id"] == video["id"]]
        assert [a["obj_id"] for a in anns] == [1, 2, 3, 4, 5]
        for k, ann in enumerate(anns):
            for t, seg in enumerate(ann["segmentations"]):
                truth = sent[ep][k, t]
                if not truth.any():
                    assert seg is None and ann["bboxes"][t] is None and ann["areas"][t] is None
                    continue
                assert isinstance(seg["counts"], str) and seg["size"] == [H, W]
                rle = {"size": seg["size"], "counts": seg["counts"].encode()}
                np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), truth)
                assert ann["areas"][t] == int(truth.sum())
                ys, xs = np.nonzero(truth)
                assert ann["bboxes"][t] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                            ys.max() - ys.min() + 1]  # fmt: skip
    # obj 1 (target) is absent from each episode's last frame: null there
    assert doc["annotations"][0]["segmentations"][-1] is None
    per_episode = json.loads((out / "ytvis" / "videos" / "0001.json").read_text())
    assert per_episode["videos"][0]["episode"] == 1 and len(per_episode["annotations"]) == 5


def test_status_lists_done_episodes(exported) -> None:
    _src, out, _sent = exported
    st = read_status(str(out))
    assert (st["done"], st["n_episodes"], st["exists"]) == ([0, 1, 2], 3, True)
    assert sorted(st["records"]) == ["0", "1", "2"]  # what each done record's meta says
    assert set(st["records"]["0"]) == {"source", "approved", "round", "prompts_fingerprint"}
    assert read_status(str(out / "nope"))["exists"] is False


def test_zarr_v3_source_and_zstd_compressor(tmp_path: Path) -> None:
    src = make_replay_buffer(tmp_path / "src3.zarr", [5, 4], 16, 24, zarr_format=3)
    exp = Export.open(str(tmp_path / "out"), str(src), CAMERA_KEY, ["rgbm"],
                      {"compressor": "zstd", "clevel": 3, "fsync": False}, MemoryBudget(1 << 30))  # fmt: skip
    sent = export_episodes(exp, [5, 4], 16, 24)
    exp.close()
    zarray = json.loads((tmp_path / "out/rgbm.zarr/data/rgbm/.zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["compressor"]["id"] == "zstd"
    dst = zarr.open_group(str(tmp_path / "out/rgbm.zarr"), mode="r")
    np.testing.assert_array_equal(dst["data/rgbm"][5:, ..., 3], sent[1][0])
    np.testing.assert_array_equal(
        dst["data/action"][:], zarr.open_group(str(src))["data/action"][:]
    )


def test_zip_source(tmp_path: Path) -> None:
    folder = make_replay_buffer(tmp_path / "src.zarr", [3, 4], 12, 16)
    zipped = tmp_path / "src.zarr.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    exp = Export.open(str(tmp_path / "out"), str(zipped), CAMERA_KEY, ["rgbm"], {"fsync": False},
                      MemoryBudget(1 << 30))  # fmt: skip
    export_episodes(exp, [3, 4], 12, 16)
    exp.close()
    dst = zarr.open_group(str(tmp_path / "out/rgbm.zarr"), mode="r")
    src = zarr.open_group(str(folder), mode="r")
    np.testing.assert_array_equal(dst["data/rgbm"][..., :3], src[f"data/{CAMERA_KEY}"][:])
    assert dst["data/rgbm"].attrs["source"]["path"] == str(zipped)
