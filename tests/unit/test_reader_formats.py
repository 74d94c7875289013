"""Reader library: the buffers robot-learning people have, read back byte for byte.

Run: python3 -m pytest tests/unit/test_reader_formats.py -q  (each test with decode=native and zarr)
Buffers are written in tmp_path with zarr (format 2 the way zarr 2.x / diffusion_policy
write them, format 3, ZipStore as UMI ships them) and numcodecs / imagecodecs codecs.
"""

from __future__ import annotations

import json
import os
import zipfile

import numcodecs
import numpy as np
import pytest
import zarr
from numcodecs import Blosc

from services.reader.reader import ReaderConfig, ReplayReader
from services.reader.synth import (
    DP_BLOSC,
    Key,
    jpegxl,
    synthetic_frames,
    write_buffer,
    write_dp_buffer,
    write_umi_buffer,
)

H, W = 24, 40
LENGTHS = [7, 12, 5]  # episodes; T = 24
ENDS = np.cumsum(LENGTHS)


@pytest.fixture(params=["native", "zarr"])
def reader(request):
    """Both decode paths (the reader's own decoders, zarr's pipeline) must read every format."""
    r = ReplayReader(ReaderConfig(max_chunk_bytes=16 << 10, cache_bytes=1 << 20, threads=2,
                                  decode=request.param))  # fmt: skip
    yield r
    r.close()


def read_episode(reader: ReplayReader, path: str, ep: int, key: str, stride: int = 1):
    batches = list(reader.iter_frames(path, ep, key, stride=stride))
    for b in batches:
        assert b.frames.nbytes <= reader.config.max_chunk_bytes
    return np.concatenate([b.frames for b in batches])


def expected(ep: int, shape, dtype=np.uint8, stride: int = 1) -> np.ndarray:
    start = 0 if ep == 0 else int(ENDS[ep - 1])
    return synthetic_frames(np.arange(start, int(ENDS[ep]), stride), shape, dtype)


def test_diffusion_policy_buffer_describe_and_frames(tmp_path, reader):
    path = write_dp_buffer(tmp_path / "dp.zarr", LENGTHS, height=H, width=W)
    with open(os.path.join(path, "meta/episode_ends/.zarray")) as f:
        assert json.load(f)["compressor"] is None  # as ReplayBuffer.create_empty_zarr writes it
    info = reader.open(path)
    assert info["dataset"] == os.path.realpath(path)
    assert info["zarr_format"] == 2 and info["n_episodes"] == 3 and info["n_frames"] == 24
    assert info["episode_ends"].dtype == np.int64
    assert info["episode_ends"].tolist() == ENDS.tolist()
    assert info["episode_lengths"] == LENGTHS
    rgbm = info["keys"]["rgbm"]
    assert rgbm["shape"] == [24, H, W, 4] and rgbm["dtype"] == "|u1"
    assert rgbm["codec_ids"] == ["blosc"] and "lz4" in rgbm["codec"] and not rgbm["lowdim"]
    assert info["keys"]["action"]["lowdim"] and info["keys"]["action"]["dtype"] == "<f4"
    for ep in range(3):
        got = read_episode(reader, info["dataset"], ep, "rgbm")
        assert got.dtype == np.uint8 and np.array_equal(got, expected(ep, (H, W, 4)))
        got = read_episode(reader, info["dataset"], ep, "right_cam_img", stride=3)
        assert np.array_equal(got, expected(ep, (H, W, 3), stride=3))
        arrays = reader.arrays(info["dataset"], ep)
        assert sorted(arrays) == ["action", "right_state"]
        assert arrays["action"].tobytes() == expected(ep, (13,), np.float32).tobytes()


@pytest.mark.parametrize(
    "compressor",
    [
        None,
        DP_BLOSC,
        Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),
        Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE),
        Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE),
        numcodecs.Zstd(level=3),
        numcodecs.GZip(level=1),
    ],
    ids=["none", "blosc-lz4", "blosc-lz4-shuffle", "blosc-zstd", "blosc-zstd-bit", "zstd", "gzip"],
)
@pytest.mark.parametrize(
    "chunks", [(1, H, W, 4), (5, H, W, 4), (4, H // 2, W // 3 + 1, 3)], ids=["frame", "5", "tiles"]
)
def test_lossless_codecs_and_chunkings_byte_exact(tmp_path, reader, compressor, chunks):
    keys = {"rgbm": Key((H, W, 4), chunks=chunks, compressor=compressor)}
    path = write_buffer(tmp_path / "b.zarr", LENGTHS, keys)
    for ep in range(3):
        assert read_episode(reader, path, ep, "rgbm").tobytes() == expected(ep, (H, W, 4)).tobytes()
    b = reader.frames(path, 1, "rgbm", start=2, stop=11, stride=4)
    assert np.array_equal(b.frames, expected(1, (H, W, 4))[2:11:4])


def test_umi_zip_jpegxl_per_frame_chunks_lossless(tmp_path, reader):
    path = write_umi_buffer(tmp_path / "umi.zarr.zip", LENGTHS, height=H, width=W)
    assert zipfile.is_zipfile(path)
    info = reader.open(path)
    cam = info["keys"]["camera0_rgb"]
    assert cam["chunks"] == [1, H, W, 3] and cam["codec_ids"] == ["imagecodecs_jpegxl"]
    for ep in range(3):
        got = read_episode(reader, path, ep, "camera0_rgb")
        assert got.tobytes() == expected(ep, (H, W, 3)).tobytes()
    pos = reader.arrays(path, 2, ["robot0_eef_pos"])["robot0_eef_pos"]
    assert np.array_equal(pos, expected(2, (3,), np.float32))


def test_jpegxl_lossy_is_close(tmp_path, reader):
    keys = {"camera0_rgb": Key((H, W, 3), chunks=(1, H, W, 3), compressor=jpegxl(False))}
    path = write_buffer(tmp_path / "lossy.zarr.zip", LENGTHS, keys)
    got = read_episode(reader, path, 1, "camera0_rgb").astype(np.int16)
    assert got.shape == (12, H, W, 3)
    assert np.abs(got - expected(1, (H, W, 3))).mean() < 12


def test_jpeg2k_reversible_byte_exact(tmp_path, reader):
    from imagecodecs.numcodecs import Jpeg2k

    keys = {"img": Key((H, W, 3), chunks=(1, H, W, 3), compressor=Jpeg2k(reversible=True))}
    path = write_buffer(tmp_path / "j2k.zarr", LENGTHS, keys)
    assert read_episode(reader, path, 0, "img").tobytes() == expected(0, (H, W, 3)).tobytes()


@pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3")
def test_zarr_format_3_codecs_byte_exact(tmp_path, reader):
    from zarr.codecs import BloscCodec, TransposeCodec
    from zarr.codecs.numcodecs import LZ4

    keys = {
        "rgb": Key((H, W, 3), chunks=(2, H, W, 3), compressor=[BloscCodec(cname="zstd")]),
        "state": Key((13,), np.float32, chunks=(5, 13), compressor=[LZ4()]),
        "raw": Key((H, W, 3), chunks=(3, H, W, 3), compressor=None),
    }
    path = write_buffer(tmp_path / "v3.zarr", LENGTHS, keys, zarr_format=3)
    root = zarr.open_group(path, mode="r+")
    t = root.create_array("data/t", shape=(24, 6, 5), chunks=(4, 6, 5), dtype="<u2",
                          filters=[TransposeCodec(order=(0, 2, 1))])  # fmt: skip
    t[:] = np.arange(24 * 30, dtype="<u2").reshape(24, 6, 5)
    s = root.create_array("data/sharded", shape=(24, H, W, 3), chunks=(2, H, W, 3),
                          shards=(4, H, W, 3), dtype=np.uint8)  # fmt: skip
    s[:] = synthetic_frames(np.arange(24), (H, W, 3))
    info = reader.open(path)
    assert info["zarr_format"] == 3
    for ep in range(3):
        for key in ("rgb", "raw", "sharded"):
            assert np.array_equal(read_episode(reader, path, ep, key), expected(ep, (H, W, 3)))
        assert np.array_equal(reader.arrays(path, ep, ["state"])["state"],
                              expected(ep, (13,), np.float32))  # fmt: skip
    got = reader.frames(path, 1, "t").frames
    assert np.array_equal(got, np.arange(24 * 30).reshape(24, 6, 5)[7:19])


def test_big_endian_and_missing_chunks_read_as_fill_value(tmp_path, reader):
    keys = {
        "be": Key((3,), ">f4", chunks=(4, 3)),
        "zeros": Key((H, W, 3), chunks=(2, H, W, 3), frames=lambda i: np.zeros((len(i), H, W, 3))),
    }
    path = write_buffer(tmp_path / "be.zarr", LENGTHS, keys)
    assert not any(n[0].isdigit() for n in os.listdir(os.path.join(path, "data/zeros")))
    got = reader.arrays(path, 1, ["be"])["be"]
    assert got.dtype == np.float32 and got.dtype.isnative
    assert np.array_equal(got, expected(1, (3,), np.float32))
    assert not reader.frames(path, 2, "zeros").frames.any()


def test_zip_with_the_zarr_in_a_top_level_folder(tmp_path, reader):
    src = write_dp_buffer(tmp_path / "dp.zarr", LENGTHS, height=H, width=W)
    zpath = tmp_path / "nested.zarr.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for dirpath, _, files in os.walk(src):
            for name in files:
                full = os.path.join(dirpath, name)
                zf.write(full, os.path.join("dp.zarr", os.path.relpath(full, src)))
    info = reader.open(str(zpath))
    assert info["n_episodes"] == 3
    assert np.array_equal(read_episode(reader, str(zpath), 2, "rgbm"), expected(2, (H, W, 4)))


def test_written_by_zarr_matches_zarr_reading_it(tmp_path, reader):
    """Cross-check against zarr's own slicing for a diffusion_policy default-chunked key."""
    path = write_dp_buffer(tmp_path / "dp.zarr", LENGTHS, height=H, width=W)
    arr = zarr.open_array(os.path.join(path, "data/right_cam_img"), mode="r")
    assert arr.chunks[0] > 24  # ~2 MB chunks along time: one chunk holds the whole buffer
    got = np.concatenate([read_episode(reader, path, ep, "right_cam_img") for ep in range(3)])
    assert np.array_equal(got, arr[:])
