"""Reader library: every bad input gets a clear error (class, code, message with the fix).

Run: python3 -m pytest tests/unit/test_reader_errors.py -q
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr

from services.reader.codecs import package_for
from services.reader.errors import (
    CodecUnavailable,
    DatasetNotFound,
    InvalidBuffer,
    NotAReplayBuffer,
    OutOfRange,
    TooLarge,
    UnknownKey,
)
from services.reader.reader import ReaderConfig, ReplayReader
from services.reader.synth import Key, write_buffer, write_dp_buffer

H, W = 16, 24
LENGTHS = [6, 4]


@pytest.fixture
def reader():
    r = ReplayReader(ReaderConfig(max_chunk_bytes=8 << 10, cache_bytes=1 << 20, threads=1))
    yield r
    r.close()


@pytest.fixture
def dp(tmp_path) -> str:
    return write_dp_buffer(tmp_path / "dp.zarr", LENGTHS, height=H, width=W)


def edit_json(path: str, fn) -> None:
    with open(path) as f:
        doc = json.load(f)
    fn(doc)
    with open(path, "w") as f:
        json.dump(doc, f)


def test_missing_path(reader, tmp_path):
    with pytest.raises(DatasetNotFound, match="does not exist") as e:
        reader.open(str(tmp_path / "nope.zarr"))
    assert e.value.code == "not_found"


def test_not_a_replay_buffer(reader, tmp_path):
    g = zarr.open_group(tmp_path / "plain.zarr", mode="w", zarr_format=2)
    g.create_array("data/x", shape=(3,), dtype="i4")
    with pytest.raises(NotAReplayBuffer, match="no meta/episode_ends") as e:
        reader.open(str(tmp_path / "plain.zarr"))
    assert e.value.code == "bad_request"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NotAReplayBuffer, match="not a zip"):
        reader.open(str(tmp_path / "notes.txt"))
    os.mkdir(tmp_path / "empty")
    with pytest.raises(NotAReplayBuffer):
        reader.open(str(tmp_path / "empty"))


def test_array_length_differs_from_episode_ends(reader, tmp_path):
    path = write_dp_buffer(tmp_path / "bad.zarr", LENGTHS, height=H, width=W,
                           episode_ends=[6, 9])  # fmt: skip
    with pytest.raises(InvalidBuffer, match=r"data/\w+ has length 10 but episode_ends\[-1\] is 9"):
        reader.open(path)


def test_non_monotonic_episode_ends(reader, tmp_path):
    path = write_dp_buffer(tmp_path / "bad.zarr", LENGTHS, height=H, width=W,
                           episode_ends=[7, 6, 10])  # fmt: skip
    with pytest.raises(
        InvalidBuffer, match=r"not monotonic: episode_ends\[1\]=6 < episode_ends\[0\]=7"
    ):
        reader.open(path)


def test_episode_ends_must_be_integers(reader, dp):
    edit_json(os.path.join(dp, "meta/episode_ends/.zarray"), lambda d: d.update(dtype="<f8"))
    with pytest.raises(InvalidBuffer, match="1-D integer array"):
        reader.open(dp)


@pytest.mark.parametrize("episode", [-1, 2, 100])
def test_episode_out_of_range(reader, dp, episode):
    with pytest.raises(OutOfRange, match=rf"episode {episode} is out of range.*valid 0\.\.1"):
        reader.frames(dp, episode, "rgbm")
    with pytest.raises(OutOfRange):
        reader.arrays(dp, episode)


@pytest.mark.parametrize(
    ("start", "stop", "stride", "match"),
    [
        (-1, None, 1, "start=-1 is out of range"),
        (6, None, 1, "start=6 is out of range"),
        (0, 7, 1, "stop=7 is out of range"),
        (4, 2, 1, "stop=2 is out of range"),
        (0, None, 0, "stride=0: must be >= 1"),
    ],
)
def test_frame_range_out_of_range(reader, dp, start, stop, stride, match):
    with pytest.raises(OutOfRange, match=match) as e:
        reader.frames(dp, 0, "rgbm", start, stop, stride)
    assert e.value.code == "bad_request"


def test_empty_range_is_not_an_error(reader, dp):
    b = reader.frames(dp, 0, "rgbm", 3, 3)
    assert b.frames.shape == (0, H, W, 4) and b.next is None


def test_unknown_key(reader, dp):
    with pytest.raises(UnknownKey, match=r"unknown key 'depth'.*\['action', 'rgbm'") as e:
        reader.frames(dp, 0, "depth")
    assert e.value.code == "not_found"
    with pytest.raises(UnknownKey):
        reader.arrays(dp, 0, ["action", "depth"])


def test_codec_not_installed_names_codec_and_package(reader, dp):
    edit_json(os.path.join(dp, "data/rgbm/.zarray"),
              lambda d: d.update(compressor={"id": "zfpy", "mode": 4, "tolerance": -1}))  # fmt: skip
    info = reader.open(dp)  # the other keys stay readable
    assert info["keys"]["rgbm"]["available"] is False
    assert "zfpy" in info["keys"]["rgbm"]["error"]
    with pytest.raises(
        CodecUnavailable, match="codec 'zfpy' is not installed.*pip install zfpy"
    ) as e:
        reader.frames(dp, 0, "rgbm")
    assert e.value.code == "unsupported"
    assert reader.frames(dp, 0, "right_cam_img").frames.shape[1:] == (H, W, 3)
    assert "rgbm" not in reader.arrays(dp, 0)


def test_imagecodecs_ids_point_at_imagecodecs(reader, dp):
    assert package_for("imagecodecs_jpegxl") == "imagecodecs"
    edit_json(os.path.join(dp, "data/rgbm/.zarray"),
              lambda d: d.update(compressor={"id": "imagecodecs_nosuchcodec"}))  # fmt: skip
    with pytest.raises(CodecUnavailable, match="'imagecodecs_nosuchcodec'.*'imagecodecs'"):
        reader.frames(dp, 0, "rgbm")


def test_pickle_codec_is_refused(reader, dp):
    edit_json(os.path.join(dp, "data/action/.zarray"),
              lambda d: d.update(filters=[{"id": "pickle"}]))  # fmt: skip
    with pytest.raises(CodecUnavailable, match="'pickle' is refused"):
        reader.arrays(dp, 0, ["action"])


def test_corrupt_chunk_is_an_error_and_reading_goes_on(reader, tmp_path):
    path = write_buffer(tmp_path / "c.zarr", LENGTHS, {"img": Key((H, W, 3), chunks=(2, H, W, 3))})
    with open(os.path.join(path, "data/img/1.0.0.0"), "wb") as f:
        f.write(b"garbage" * 10)
    with pytest.raises(InvalidBuffer, match=r"cannot decode chunk 1 of data/img"):
        reader.frames(path, 0, "img", 2, 4)
    assert reader.frames(path, 1, "img").frames.shape == (4, H, W, 3)
    with pytest.raises(InvalidBuffer):  # failures are not cached: it fails again, clearly
        reader.frames(path, 0, "img", 2, 4)


def test_frame_larger_than_the_cap(reader, tmp_path):
    path = write_buffer(tmp_path / "big.zarr", LENGTHS, {"img": Key((64, 64, 3))})
    with pytest.raises(TooLarge, match="more than the chunk cap 8192; raise.*max_chunk_bytes"):
        reader.frames(path, 0, "img")


def test_arrays_too_large_points_at_frames(reader, dp):
    with pytest.raises(TooLarge, match="frames op"):
        reader.arrays(dp, 0, ["rgbm"])


def test_roots_restrict_what_can_be_opened(tmp_path, dp):
    r = ReplayReader(ReaderConfig(roots=(str(tmp_path / "elsewhere"),)))
    try:
        with pytest.raises(DatasetNotFound, match="outside the reader's roots"):
            r.open(dp)
    finally:
        r.close()
    r = ReplayReader(ReaderConfig(roots=(str(tmp_path),)))
    try:
        assert r.open(dp)["n_episodes"] == 2
    finally:
        r.close()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (
            {"max_chunk": 10},
            r"reader options.max_chunk: unknown field; valid fields are \[.*'max_chunk_bytes'",
        ),
        ({"threads": 0}, "threads=0: must be a positive integer"),
        ({"threads": "2"}, r"reader options.threads: expected int, got str '2'; write a whole"),
        ({"roots": 3}, r"reader options.roots: expected a list, got int 3"),
        (
            {"max_chunk_bytes": 8 << 20, "cache_bytes": 1 << 20},
            "cache_bytes=1048576 must be >= 2 x",
        ),
        ({"decode": "numcodecs"}, r"decode='numcodecs': must be one of \['native', 'zarr'\]"),
    ],
)
def test_config_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        ReaderConfig.from_options(options)


def test_empty_buffer_opens(reader, tmp_path):
    path = write_buffer(tmp_path / "empty.zarr", [], {"img": Key((H, W, 3))})
    info = reader.open(path)
    assert info["n_episodes"] == 0 and info["n_frames"] == 0
    assert info["episode_ends"].dtype == np.int64
    with pytest.raises(OutOfRange, match="has 0 episodes"):
        reader.frames(path, 0, "img")
