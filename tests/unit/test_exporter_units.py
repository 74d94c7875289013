"""Pure pieces of the exporter: options, chunking, held masks, arm-only math, RLE, npz.

Run: python3 -m pytest tests/unit/test_exporter_units.py -q
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from pycocotools import mask as mask_utils

from protocol.masks import pack
from services.exporter.buffer import ZarrOut, time_chunk
from services.exporter.episode import EpisodeJob, blocks
from services.exporter.errors import ExportError
from services.exporter.held import HeldEpisode
from services.exporter.layout import Layout
from services.exporter.masks_out import NpzWriter, arm_only_masks, ellipse_kernel
from services.exporter.options import ExportOptions, parse_outputs
from services.exporter.preview import sheet_indices
from services.exporter.ytvis import encode_rles

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# ---- options -----------------------------------------------------------------------------


def test_options_defaults_and_codec() -> None:
    opts = ExportOptions.from_dict({})
    codec = opts.codec()
    assert codec.codec_id == "blosc" and codec.cname == "lz4" and opts.chunk_bytes == 2_000_000
    assert ExportOptions.from_dict({"compressor": "none"}).codec() is None
    assert ExportOptions.from_dict({"preview_fps": 5}).preview_fps == 5.0  # int accepted


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"dilate": 3}, "options.dilate: unknown field; valid fields are ['approved_only', 'arm_"),
        ({"dilation_radius": -1}, "options.dilation_radius: -1 is out of range"),
        ({"dilation_radius": True}, "options.dilation_radius: expected int, got bool True"),
        ({"fsync": "no"}, "options.fsync: expected bool, got str 'no'; write true or false"),
        ({"compressor": "jpeg"}, "options.compressor: 'jpeg'"),
        ({"compressor": "blosc", "clevel": 12}, "options.clevel: 12; blosc takes 0..9"),
        ({"shuffle": "maybe"}, "options.shuffle"),
        ({"rgbm_key": "a/b"}, "options.rgbm_key"),
        ({"pipeline": {"x": object()}}, "options.pipeline: must be JSON-serialisable"),
    ],
)
def test_options_refused_with_the_field_named(raw: dict, needle: str) -> None:
    with pytest.raises(ExportError) as err:
        ExportOptions.from_dict(raw)
    assert err.value.code == "bad_request" and needle in err.value.message


def test_outputs_validated_and_ordered() -> None:
    assert parse_outputs(["ytvis", "rgbm"]) == ("rgbm", "ytvis")
    with pytest.raises(ExportError, match="unknown output 'mp4'"):
        parse_outputs(["mp4"])
    with pytest.raises(ExportError, match="outputs: empty"):
        parse_outputs([])


# ---- chunking and blocks -----------------------------------------------------------------


def test_time_chunks_match_diffusion_policy_defaults() -> None:
    # diffusion_policy get_optimal_chunks(target 2e6) gives these for common shapes
    assert time_chunk((480, 640, 4), np.uint8, 2_000_000, 10_000) == 2
    assert time_chunk((480, 640, 3), np.uint8, 2_000_000, 10_000) == 3
    assert time_chunk((13,), np.float32, 2_000_000, 100_000) == 38462
    assert time_chunk((13,), np.float32, 2_000_000, 500) == 500  # capped at the length
    assert time_chunk((2000, 2000, 4), np.uint8, 2_000_000, 10) == 1  # at least one frame


def test_blocks_align_to_global_chunk_boundaries() -> None:
    got = blocks(5, 23, align=4, max_frames=9)  # step 8: boundaries at 8, 16
    assert got == [(5, 8), (8, 16), (16, 23)]
    assert blocks(0, 3, align=4, max_frames=1) == [(0, 3)]
    covered = [t for a, b in blocks(7, 50, 3, 10) for t in range(a, b)]
    assert covered == list(range(7, 50))


# ---- held masks --------------------------------------------------------------------------


def test_held_masks_round_trip_and_received() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((2, 10, 7, 13)) > 0.5  # (n_obj, T, H, W) bool, W not a multiple of 8
    held = HeldEpisode(n_frames=10, height=7, width=13)
    assert held.put(0, [4, 9], pack(masks[:, :6]), 13) == 6
    assert held.missing() == {4: 6, 9: 6}
    assert held.put(6, [9], pack(masks[1:, 6:]), 13) == 6  # obj 4 still lacks 6..9
    assert held.put(6, [4], pack(masks[:1, 6:]), 13) == 10
    assert held.missing() == {}
    np.testing.assert_array_equal(held.unpack(4, 0, 10), masks[0])
    np.testing.assert_array_equal(held.unpack(9, 3, 8), masks[1, 3:8])
    assert held.nbytes == 2 * 10 * 7 * 2  # packed: 2 bytes per 13-pixel row
    assert held.any_pixels(4)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"start": 8}, "start: frames [8, 12) are outside"),
        ({"width": 14}, "width: 14 does not match"),
        ({"obj_ids": [1, 1]}, "obj_ids: [1, 1] has duplicates"),
        ({"obj_ids": [1]}, "obj_ids: 1 ids for 2 masks"),
        ({"packed": np.zeros((2, 4, 7, 2), np.float32)}, "masks: expected packed uint8"),
        ({"packed": np.zeros((2, 4, 6, 2), np.uint8)}, "masks: frame shape (H=6"),
    ],
)
def test_held_masks_validation_names_the_field(kwargs: dict, needle: str) -> None:
    held = HeldEpisode(n_frames=10, height=7, width=13)
    args = {"start": 0, "obj_ids": [1, 2], "packed": np.zeros((2, 4, 7, 2), np.uint8), "width": 13}
    with pytest.raises(ExportError) as err:
        held.put(**{**args, **kwargs})
    assert needle in err.value.message


# ---- arm-only ----------------------------------------------------------------------------


def _job(held: HeldEpisode, roles: dict[str, int], tmp: Path, radius: int = 0) -> EpisodeJob:
    opts = ExportOptions.from_dict({"dilation_radius": radius, "fsync": False})
    return EpisodeJob(0, 0, held.n_frames, held.height, held.width, held, roles, opts, Layout(tmp))


def test_arm_only_formula(tmp_path: Path) -> None:
    h, w = 6, 8
    arm_l = np.zeros((1, h, w), bool)
    arm_l[0, 1:4, 0:6] = True
    arm_r = np.zeros((1, h, w), bool)
    arm_r[0, 5, :] = True
    grip = np.zeros((1, h, w), bool)
    grip[0, 2:5, 4:8] = True  # overlaps arm_l's end and arm_r
    held = HeldEpisode(1, h, w)
    roles = {"arm_left": 1, "arm_right": 2, "gripper_left": 3}
    job = _job(held, roles, tmp_path)
    out = arm_only_masks(job, {1: arm_l, 2: arm_r, 3: grip}, None)
    expected = np.zeros((h, w), np.uint8)
    expected[1:4, 0:6] = 255
    expected[5, :] = 255
    expected[2:5, 4:8] = 0  # gripper cut out of both arms
    np.testing.assert_array_equal(out[0], expected)


@pytest.mark.parametrize("radius", [1, 3, 6])
def test_dilation_is_an_elliptical_disc_of_the_radius(tmp_path: Path, radius: int) -> None:
    size = 2 * radius + 9
    dot = np.zeros((1, size, size), bool)
    dot[0, size // 2, size // 2] = True
    held = HeldEpisode(1, size, size)
    job = _job(held, {"arm_left": 1, "gripper_left": 2}, tmp_path, radius)
    out = arm_only_masks(job, {1: dot, 2: np.zeros_like(dot)}, ellipse_kernel(radius))[0] > 0
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    dist = np.hypot(yy, xx)
    assert out[dist <= radius - 0.5].all()  # the disc is filled
    assert not out[dist > radius + 0.5].any()  # nothing beyond the radius
    assert out[0 + size // 2, size // 2 + radius] and out[size // 2 - radius, size // 2]
    assert ellipse_kernel(0) is None


# ---- RLE, sheet, npz ---------------------------------------------------------------------


def test_rle_round_trip_and_null_for_absent() -> None:
    rng = np.random.default_rng(2)
    masks = rng.random((3, 9, 11)) > 0.6
    masks[1] = False
    rles = encode_rles(masks)
    assert rles[1] is None
    for i in (0, 2):
        rle = {"size": rles[i]["size"], "counts": rles[i]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), masks[i])


def test_sheet_indices_spread_over_the_episode() -> None:
    assert sheet_indices(100, 5) == [0, 25, 50, 74, 99]
    assert sheet_indices(3, 12) == [0, 1, 2]


def test_npz_is_deterministic_and_streams_the_robointer_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((2, 70, 5, 9)) > 0.5  # more than one 64-frame block
    held = HeldEpisode(70, 5, 9)
    held.put(0, [3, 7], pack(masks), 9)
    digests = []
    for run in ("a", "b"):
        writer = NpzWriter()
        writer.begin(_job(held, {"target": 7}, tmp_path / run))
        path = Path(writer.commit()["npz"])
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
        with np.load(path, allow_pickle=False) as z:
            assert z["masks"].shape == (2, 70, 1, 5, 9)
            np.testing.assert_array_equal(z["masks"][:, :, 0], masks)
            assert list(z["roles"]) == ["", "target"] and list(z["obj_ids"]) == [3, 7]
        with zipfile.ZipFile(path) as zf:
            assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert digests[0] == digests[1]


def test_zarr_out_writes_all_zero_chunks_and_fsyncs(tmp_path: Path) -> None:
    arrays = {"m": ((10, 4, 5), np.uint8, {"a": 1})}
    meta = {"episode_ends": np.array([4, 10], np.int64)}
    out = ZarrOut.create(tmp_path / "b.zarr", arrays, meta, None, chunk_bytes=60, fsync=True)
    assert out.array("m").chunks == (3, 4, 5)
    out.write("m", 2, np.zeros((5, 4, 5), np.uint8))  # chunks 0, 1, 2: all zeros, still files
    assert sorted(p.name for p in (tmp_path / "b.zarr/data/m").glob("[0-9]*")) == [
        "0.0.0",
        "1.0.0",
        "2.0.0",
    ]
    out.write("m", 0, np.full((3, 4, 5), 7, np.uint8))
    out.write("m", 1, np.zeros((2, 4, 5), np.uint8))  # read-modify-write keeps frame 0
    got = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["data/m"][:]
    assert got[0].min() == 7 and got[1:].max() == 0
    out.update_attrs("m", lambda a: a.setdefault("ids", {}).update({"1": [2]}))
    assert out.attrs("m") == {"a": 1, "ids": {"1": [2]}}
    assert not list(tmp_path.glob("**/.tmp-*")) and not list(tmp_path.glob("**/*.partial"))
