"""Wire format round trips: every dtype, 0-d, empty, strided, Fortran, inline vs out-of-band.

Usage: python3 -m pytest tests/unit/test_wire.py -q
"""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
import zmq

from protocol.wire import (
    INLINE_MAX_BYTES,
    MAGIC,
    PREFIX,
    PROTOCOL_VERSION,
    decode,
    encode,
)
from protocol.zio import recv_parts, send_parts

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64"]  # fmt: skip


def _array(dtype: str, shape: tuple, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def roundtrip(body: dict, **kw) -> tuple[dict, list]:
    frames = encode({"op": "t", "id": 1, "body": body}, **kw)
    # through bytes, as another process would see them
    wire = [bytes(memoryview(f).cast("B")) if isinstance(f, np.ndarray) else f for f in frames]
    return decode(wire)["body"], frames


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (7,), (33, 65), (64, 64, 3)])
def test_every_dtype_and_shape_round_trips(dtype, shape):
    a = _array(dtype, shape)
    out, _ = roundtrip({"a": a})
    b = out["a"]
    assert b.dtype == a.dtype and b.shape == a.shape
    assert np.array_equal(a, b, equal_nan=dtype.startswith("float"))


def test_big_endian_input_arrives_native_with_same_values():
    a = np.arange(600, dtype=">i4").reshape(20, 30)
    out, _ = roundtrip({"a": a})
    assert out["a"].dtype == np.dtype("<i4")
    assert np.array_equal(out["a"], a)


def test_big_endian_dtype_on_the_wire_is_accepted():
    a = np.arange(300, dtype=">f8")
    head = {"op": "t", "id": 1, "arrays": [[">f8", [300], a.nbytes, 1]],
            "body": {"a": msgpack.ExtType(1, struct.pack(">I", 0))}}  # fmt: skip
    h = msgpack.packb(head)
    out = decode([PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, len(h)) + h, a.tobytes()])
    assert np.array_equal(out["body"]["a"], a)


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a[::2, ::3],  # strided view
        lambda a: a.T,  # transposed (Fortran-ordered view)
        lambda a: np.asfortranarray(a),  # Fortran-order copy
        lambda a: a[:, 5],  # column
        lambda a: a[::-1],  # negative stride
    ],
    ids=["strided", "transposed", "fortran", "column", "reversed"],
)
def test_non_contiguous_and_fortran_arrays_are_sent_correctly(make):
    base = _array("float32", (200, 300))
    a = make(base)
    assert not a.flags.c_contiguous or a.ndim == 1
    out, _ = roundtrip({"a": a})
    assert out["a"].flags.c_contiguous
    assert np.array_equal(out["a"], a)


def test_small_arrays_travel_inline_and_large_ones_out_of_band():
    small = np.zeros(INLINE_MAX_BYTES - 1, np.uint8)
    large = np.zeros(INLINE_MAX_BYTES, np.uint8)
    frames = encode({"op": "t", "id": 1, "body": {"s": small, "l": large}})
    assert len(frames) == 2  # header + the large array
    assert frames[1] is large  # sent as is (zero-copy), not copied
    frames = encode({"op": "t", "id": 1, "body": {"s": large}}, inline_max=1 << 20)
    assert len(frames) == 1


def test_exact_frame_counts():
    big = [np.ones((64, 64), np.float32) * i for i in range(5)]
    body = {"xs": big[:3], "nested": {"y": big[3], "deeper": [{"z": big[4]}]},
            "tiny": np.arange(3), "n": 5, "empty": np.zeros((0, 4))}  # fmt: skip
    frames = encode({"op": "t", "id": 1, "body": body})
    assert len(frames) == 1 + 5
    out = decode(frames)["body"]
    for i in range(3):
        assert np.array_equal(out["xs"][i], big[i])
    assert np.array_equal(out["nested"]["deeper"][0]["z"], big[4])
    assert out["tiny"].tolist() == [0, 1, 2] and out["empty"].shape == (0, 4)
    assert len(encode({"op": "ping", "id": 1, "body": {}})) == 1


def test_header_prefix_layout():
    frames = encode({"op": "ping", "id": 9, "body": {}})
    f0 = frames[0]
    magic, version, flags, hlen = struct.unpack(">4sHHI", f0[:12])
    assert (magic, version, flags, hlen) == (b"MMSH", PROTOCOL_VERSION, 0, len(f0) - 12)
    head = msgpack.unpackb(f0[12:])
    assert head == {"op": "ping", "id": 9, "body": {}, "arrays": []}


def test_decoded_arrays_are_read_only_views_of_the_frames():
    a = np.arange(10_000, dtype=np.int32)
    frames = encode({"op": "t", "id": 1, "body": {"a": a}})
    wire = [frames[0], bytearray(a.tobytes())]
    out = decode(wire)["body"]["a"]
    assert not out.flags.writeable and not out.flags.owndata
    wire[1][:4] = b"\xff\xff\xff\xff"  # the array is a view: it sees the frame's bytes
    assert out[0] == -1


def test_array_that_views_a_whole_received_frame_is_resent_as_that_frame():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://wire-reuse")
        b.connect("inproc://wire-reuse")
        x = _array("uint8", (100, 200, 3))
        send_parts(a, encode({"op": "t", "id": 1, "body": {"x": x}}))
        got = decode(recv_parts(b))["body"]["x"]
        frame = got.base.base.obj  # the zmq.Frame behind the decoded view
        tail = np.frombuffer(frame.buffer[3:], np.uint8)  # a view of all but 3 bytes of it
        body = {"same": got, "part": got[1:], "flat": got.ravel(), "tail": tail}
        out = encode({"id": 1, "ok": True, "body": body})
        assert len(out) == 5
        assert isinstance(out[1], zmq.Frame)  # whole frame: shared, not re-registered
        assert not isinstance(out[2], zmq.Frame)  # a slice: sent from the array
        assert isinstance(out[3], zmq.Frame)  # reshaped view of the whole frame
        assert not isinstance(out[4], zmq.Frame)  # a memoryview slice of the frame
        send_parts(b, out)
        back = decode(recv_parts(a))["body"]
        assert np.array_equal(back["same"], x) and np.array_equal(back["part"], x[1:])
        assert np.array_equal(back["flat"], x.ravel())
        assert np.array_equal(back["tail"], x.ravel()[3:])
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


def test_numpy_scalars_tuples_and_nested_containers():
    body = {"i": np.int64(3), "f": np.float32(1.5), "b": np.bool_(True), "t": (1, 2),
            "l": [[1.0, 2.0]], "d": {"k": None, "bytes": b"\x00\x01"}}  # fmt: skip
    out, _ = roundtrip(body)
    assert out == {"i": 3, "f": 1.5, "b": True, "t": [1, 2], "l": [[1.0, 2.0]],
                   "d": {"k": None, "bytes": b"\x00\x01"}}  # fmt: skip
    assert type(out["i"]) is int and type(out["b"]) is bool


@pytest.mark.parametrize(
    "value, name",
    [
        (np.array([object(), 1], dtype=object), "object"),
        (np.zeros(3, dtype="V4"), "V4"),
        (np.zeros(2, dtype=[("a", "<i4"), ("b", "<f4")]), "('a', '<i4')"),
        (np.array(["ab", "c"]), "<U2"),
        (np.zeros(3, np.complex64), "complex64"),
        (np.zeros(2, "datetime64[s]"), "datetime64[s]"),
    ],
    ids=["object", "void", "structured", "unicode", "complex", "datetime"],
)
def test_unsupported_dtypes_are_refused_naming_the_type(value, name):
    with pytest.raises(TypeError, match="cannot travel on the wire") as e:
        encode({"op": "t", "id": 1, "body": {"a": value}})
    assert name in str(e.value)


def test_non_msgpack_objects_are_refused_and_pickle_is_never_used():
    class Thing:
        pass

    with pytest.raises(TypeError, match="'Thing'.*pickle is never used"):
        encode({"op": "t", "id": 1, "body": {"x": Thing()}})


def test_a_100mb_array_round_trips_without_copies():
    a = np.zeros((100, 1024, 1024), np.uint8)  # 100 MiB
    a[50, 512, 512] = 7
    frames = encode({"op": "t", "id": 1, "body": {"a": a}})
    assert len(frames) == 2 and frames[1] is a
    out = decode(frames)["body"]["a"]
    assert np.shares_memory(out, a)  # in process: decode is a view of the sent buffer
    assert out.shape == a.shape and out[50, 512, 512] == 7


def test_the_readme_byte_example_is_what_encode_writes():
    """protocol/README.md spells out a ping request byte by byte; keep it true."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "protocol" / "README.md").read_text()
    block = text.split("Example, a ping request", 1)[1].split("```", 2)[1]
    hexes = ""
    for line in block.splitlines():  # hex tokens, then 3+ spaces and a comment
        m = re.match(r"\s*([0-9a-f]+(?:\s{1,2}[0-9a-f]+)*)", line)
        hexes += m.group(1).replace(" ", "") if m else ""
    want = bytes.fromhex(hexes)
    got = encode({"op": "ping", "id": 1, "deadline": 5.0, "body": {}})
    assert got == [want] and len(want) == 57
