"""Reader service: a real `python -m services.reader` process, a real client over tcp loopback.

Run: python3 -m pytest tests/integration/test_reader_service.py -q
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from protocol.client import RemoteError
from services.reader.client import stream_frames
from services.reader.synth import synthetic_frames, write_dp_buffer, write_umi_buffer
from tests.helpers import start_service

H, W = 24, 32
LENGTHS = [9, 14, 6]
ENDS = np.cumsum(LENGTHS)
MAX_CHUNK = 5 * H * W * 4  # five rgbm frames per reply at most


@pytest.fixture(scope="module")
def buffers(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("reader")
    bad = write_dp_buffer(d / "bad_len.zarr", LENGTHS, height=H, width=W, episode_ends=[9, 20])
    nonmono = write_dp_buffer(d / "nonmono.zarr", LENGTHS, height=H, width=W,
                              episode_ends=[9, 8, 29])  # fmt: skip
    codec = write_dp_buffer(d / "codec.zarr", LENGTHS, height=H, width=W)
    zarray = os.path.join(codec, "data/rgbm/.zarray")
    with open(zarray) as f:
        doc = json.load(f)
    doc["compressor"] = {"id": "imagecodecs_nosuchcodec"}
    with open(zarray, "w") as f:
        json.dump(doc, f)
    (d / "plain").mkdir()
    return {
        "dp": os.path.realpath(write_dp_buffer(d / "dp.zarr", LENGTHS, height=H, width=W)),
        "umi": os.path.realpath(write_umi_buffer(d / "umi.zarr.zip", LENGTHS, height=H, width=W)),
        "bad_len": bad,
        "nonmono": nonmono,
        "codec": codec,
        "plain": str(d / "plain"),
        "missing": str(d / "missing.zarr"),
    }


@pytest.fixture(scope="module")
def svc():
    opts = {"max_chunk_bytes": MAX_CHUNK, "cache_bytes": 40 * MAX_CHUNK, "threads": 2}
    with start_service("reader", backend="zarr", options=opts, timeout=20.0) as s:
        yield s


def expected(ep: int, shape, dtype=np.uint8) -> np.ndarray:
    start = 0 if ep == 0 else int(ENDS[ep - 1])
    return synthetic_frames(np.arange(start, int(ENDS[ep])), shape, dtype)


def test_open_describes_the_buffer(svc, buffers):
    info = svc.client.call("open", {"path": buffers["dp"]})
    assert info["dataset"] == buffers["dp"] and info["n_episodes"] == 3
    assert isinstance(info["episode_ends"], np.ndarray)
    assert info["episode_ends"].dtype == np.int64 and info["episode_ends"].tolist() == ENDS.tolist()
    assert info["keys"]["rgbm"]["shape"] == [29, H, W, 4]
    assert info["keys"]["right_state"] == {**info["keys"]["right_state"], "shape": [29, 13],
                                           "dtype": "<f4", "lowdim": True}  # fmt: skip


@pytest.mark.parametrize(("name", "key", "shape"),
                         [("dp", "rgbm", (H, W, 4)), ("dp", "right_cam_img", (H, W, 3)),
                          ("umi", "camera0_rgb", (H, W, 3))])  # fmt: skip
def test_frames_stream_byte_exact_in_bounded_chunks(svc, buffers, name, key, shape):
    for ep in range(3):
        parts = list(stream_frames(svc.client, buffers[name], ep, key, depth=3))
        assert all(f.nbytes <= MAX_CHUNK for _, f in parts)
        assert [s for s, _ in parts] == sorted(s for s, _ in parts)
        got = np.concatenate([f for _, f in parts])
        assert got.dtype == np.uint8 and got.tobytes() == expected(ep, shape).tobytes()


def test_frames_reply_fields_and_stride(svc, buffers):
    out = svc.client.call("frames", {"dataset": buffers["dp"], "episode": 1, "key": "rgbm",
                                     "start": 1, "stop": 13, "stride": 2})  # fmt: skip
    assert out["start"] == 1 and out["stop"] == 10 and out["next"] == 11
    assert out["episode_length"] == 14
    assert np.array_equal(out["frames"], expected(1, (H, W, 4))[1:10:2])
    parts = list(stream_frames(svc.client, buffers["dp"], 1, "rgbm", 1, 13, 2))
    assert np.array_equal(np.concatenate([f for _, f in parts]), expected(1, (H, W, 4))[1:13:2])


def test_arrays_returns_lowdim_keys(svc, buffers):
    out = svc.client.call("arrays", {"dataset": buffers["dp"], "episode": 2})["arrays"]
    assert sorted(out) == ["action", "right_state"]
    assert out["action"].dtype == np.float32
    assert out["action"].tobytes() == expected(2, (13,), np.float32).tobytes()
    one = svc.client.call("arrays", {"dataset": buffers["umi"], "episode": 0,
                                     "keys": ["robot0_gripper_width"]})["arrays"]  # fmt: skip
    assert np.array_equal(one["robot0_gripper_width"], expected(0, (1,), np.float32))


def call_error(svc, op: str, body: dict) -> RemoteError:
    with pytest.raises(RemoteError) as e:
        svc.client.call(op, body)
    return e.value


@pytest.mark.parametrize(
    ("op", "body", "code", "words"),
    [
        ("open", {"path": "missing"}, "not_found", ["does not exist"]),
        ("open", {"path": "plain"}, "bad_request", ["not a replay buffer", "meta/episode_ends"]),
        ("open", {"path": "bad_len"}, "bad_request", ["has length 29", "episode_ends[-1] is 20"]),
        ("open", {"path": "nonmono"}, "bad_request", ["not monotonic"]),
        (
            "frames",
            {"dataset": "dp", "episode": 3, "key": "rgbm"},
            "bad_request",
            ["episode 3 is out of range", "valid 0..2"],
        ),
        (
            "frames",
            {"dataset": "dp", "episode": 0, "key": "rgbm", "start": 9},
            "bad_request",
            ["start=9 is out of range"],
        ),
        (
            "frames",
            {"dataset": "dp", "episode": 0, "key": "rgbm", "stop": 10},
            "bad_request",
            ["stop=10 is out of range"],
        ),
        (
            "frames",
            {"dataset": "dp", "episode": 0, "key": "depth"},
            "not_found",
            ["unknown key 'depth'", "rgbm"],
        ),
        (
            "frames",
            {"dataset": "codec", "episode": 0, "key": "rgbm"},
            "unsupported",
            ["imagecodecs_nosuchcodec", "'imagecodecs'"],
        ),
        (
            "arrays",
            {"dataset": "dp", "episode": 0, "keys": ["rgbm", "action"]},
            "bad_request",
            ["frames op"],
        ),
        (
            "frames",
            {"dataset": "dp", "episode": 0, "key": "rgbm", "strid": 2},
            "bad_request",
            ["strid"],
        ),
        ("frames", {"dataset": "dp", "episode": "0", "key": "rgbm"}, "bad_request", ["episode"]),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_service_keeps_serving(svc, buffers, op, body, code,
                                                                     words):  # fmt: skip
    body = {k: buffers.get(v, v) if k in ("path", "dataset") else v for k, v in body.items()}
    err = call_error(svc, op, body)
    assert err.code == code
    for w in words:
        assert w in err.message
    out = svc.client.call("frames", {"dataset": buffers["dp"], "episode": 0, "key": "rgbm"})
    assert np.array_equal(out["frames"], expected(0, (H, W, 4))[: len(out["frames"])])
    assert svc.proc.poll() is None


def test_close_then_frames_reopens(svc, buffers):
    svc.client.call("open", {"path": buffers["umi"]})
    assert svc.client.call("close", {"dataset": buffers["umi"]}) == {"closed": True}
    assert svc.client.call("close", {"dataset": buffers["umi"]}) == {"closed": False}
    out = svc.client.call("frames", {"dataset": buffers["umi"], "episode": 2, "key": "camera0_rgb"})
    assert np.array_equal(out["frames"], expected(2, (H, W, 3))[: len(out["frames"])])


def test_info_reports_cache_and_capabilities(svc, buffers):
    svc.client.call("frames", {"dataset": buffers["dp"], "episode": 0, "key": "rgbm"})
    info = svc.client.call("info")
    assert info["service"] == "reader" and info["backend"] == "zarr"
    assert info["capabilities"]["max_chunk_bytes"] == MAX_CHUNK
    assert "imagecodecs_jpegxl" in info["capabilities"]["codecs"]
    assert info["decoded"] >= 1 and buffers["dp"] in info["datasets"]
