"""Malformed messages: each is refused with a WireError naming the problem (never a crash).

Usage: python3 -m pytest tests/unit/test_wire_errors.py -q
"""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.wire import MAGIC, MAX_FRAMES, PREFIX, PROTOCOL_VERSION, WireError, decode, encode

REF0 = msgpack.ExtType(1, struct.pack(">I", 0))


def frame0(head, *, magic=MAGIC, version=PROTOCOL_VERSION, hlen_delta=0, raw: bytes | None = None):
    h = raw if raw is not None else msgpack.packb(head, use_bin_type=True)
    return PREFIX.pack(magic, version, 0, len(h) + hlen_delta) + h


def msg_with_array(entry, frames, body=None):
    head = {"op": "echo", "id": 3, "arrays": [entry], "body": body or {"a": REF0}}
    return [frame0(head), *frames]


def expect(frames, *fragments, code="bad_request"):
    with pytest.raises(WireError) as e:
        decode(frames)
    for f in fragments:
        assert f in e.value.message, e.value.message
    assert e.value.code == code
    return e.value


GOOD = np.arange(12, dtype="<i4").reshape(3, 4)  # 48 bytes


@pytest.mark.parametrize(
    "frames, fragments",
    [
        ([], ["no frames"]),
        ([b"MMS"], ["prefix", "3 bytes", "needs 12"]),
        ([b"MMSH\x00\x01\x00\x00\x00\x00"], ["prefix", "10 bytes"]),
        ([frame0({"op": "ping"}, magic=b"HTTP")], ["wrong magic", "HTTP"]),
        ([frame0({"op": "ping"}, hlen_delta=5)], ["declared header length"]),
        ([frame0(None, raw=b"\xc1\xc1\xc1")], ["header: not valid msgpack"]),
        ([frame0(None, raw=b"\x92\x01")], ["header: not valid msgpack"]),  # truncated array
        ([frame0(None, raw=msgpack.packb({"op": "a"}) + b"\x01")], ["not valid msgpack"]),
        ([frame0([1, 2, 3])], ["must be a msgpack map", "list"]),
        ([frame0("ping")], ["must be a msgpack map", "str"]),
        ([frame0({"op": "x", "arrays": "nope"})], ["arrays: must be a list"]),
        ([frame0({"op": "x", "arrays": [[1, 2]]})], ["arrays[0]: must be [dtype"]),
        (
            [frame0(None, raw=msgpack.packb({"op": "x", "body": msgpack.ExtType(7, b"abcd")}))],
            ["unknown msgpack extension type 7"],
        ),  # fmt: skip
        ([frame0({"op": "x", "body": {"a": REF0}})], ["array reference 0", "0 entries"]),
        ([frame0({"op": "x"}), b"stray"], ["frames [1]", "not referenced"]),
    ],
    ids=[
        "empty",
        "truncated",
        "short-prefix",
        "magic",
        "hlen",
        "garbage",
        "truncated-msgpack",
        "trailing-bytes",
        "list-header",
        "str-header",
        "arrays-type",
        "arrays-entry",
        "ext-type",
        "dangling-ref",
        "extra-frame",
    ],  # fmt: skip
)
def test_bad_frame0(frames, fragments):
    expect(frames, *fragments)


def test_other_protocol_version_is_version_mismatch():
    e = expect([frame0({"op": "ping"}, version=PROTOCOL_VERSION + 1)], "protocol version 2",
               code="version_mismatch")  # fmt: skip
    assert "upgrade" in e.message


@pytest.mark.parametrize(
    "entry, frames, fragments",
    [
        (["<i4", [3, 4], 48, 1], [], ["index 1", "frames 1..0"]),  # missing frame
        (["<i4", [3, 4], 48, 2], [GOOD.tobytes()], ["index 2"]),
        (["<i4", [3, 4], 48, 0], [GOOD.tobytes()], ["index 0"]),
        (["<i4", [3, 4], 48, 1], [GOOD.tobytes(), b"x"], ["frames [2]", "not referenced"]),
        (["<i4", [3, 4], 48, 1], [GOOD.tobytes()[:40]], ["declared 48 bytes", "carries 40"]),
        (["<i4", [3, 5], 48, 1], [GOOD.tobytes()], ["nbytes", "48", "= 60"]),  # shape mismatch
        (["<i4", [3, 4], 44, 1], [GOOD.tobytes()], ["nbytes: 44"]),
        (["<i4", [3, 4], 48, GOOD.tobytes()[:10]], [], ["declared 48 bytes", "carries 10"]),
        (["|O", [3], 24, 1], [b"x" * 24], ["dtype", "'|O'", "not supported"]),
        (["|V4", [3], 12, 1], [b"x" * 12], ["'|V4'", "not supported"]),
        (["<c8", [3], 24, 1], [b"x" * 24], ["'<c8'", "not supported"]),
        ([7, [3], 24, 1], [b"x" * 24], ["dtype: 7"]),
        (["<i4", "3", 12, 1], [b"x" * 12], ["shape: must be a list"]),
        (["<i4", [-1], 4, 1], [b"x" * 4], ["shape", "[-1]"]),
        (["<i4", [1.5], 4, 1], [b"x" * 4], ["shape", "1.5"]),
        (["<i4", [1] * 40, 4, 1], [b"x" * 4], ["at most 32"]),
        (["<i4", [3, 4], "48", 1], [GOOD.tobytes()], ["nbytes: '48'"]),
        (["<i4", [3, 4], 48, "1"], [GOOD.tobytes()], ["where must be a frame index"]),
    ],
    ids=[
        "missing-frame",
        "index-too-high",
        "index-zero",
        "extra-frame",
        "short-frame",
        "shape-mismatch",
        "nbytes-mismatch",
        "short-inline",
        "object",
        "void",
        "complex",
        "dtype-type",
        "shape-type",
        "negative-dim",
        "float-dim",
        "ndim",
        "nbytes-type",
        "where-type",
    ],  # fmt: skip
)
def test_bad_array_entries(entry, frames, fragments):
    e = expect(msg_with_array(entry, frames), *fragments)
    assert (e.msg_id, e.op) == (3, "echo")  # so the server can address its error reply


@pytest.mark.parametrize(
    "shape, nbytes",
    [([1 << 40, 1 << 40], 1 << 20), ([1 << 62], 1 << 62), ([1 << 49, 0], 0), ([2**64 - 1], 8)],
    ids=["huge-product", "huge-nbytes", "huge-empty-dim", "overflow"],
)
def test_absurd_declared_sizes_are_refused_without_allocating(shape, nbytes):
    expect(msg_with_array(["|u1", shape, nbytes, 1], [b"x" * 16]), "arrays[0]")


def test_absurd_header_length_is_refused():
    f0 = PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, 0xFFFFFFFF) + b"\x80"
    expect([f0], "declared header length 4294967295")


def test_frame_referenced_twice_is_refused():
    head = {"op": "x", "id": 1, "body": {"a": REF0, "b": msgpack.ExtType(1, struct.pack(">I", 1))},
            "arrays": [["|u1", [4], 4, 1], ["|u1", [4], 4, 1]]}  # fmt: skip
    expect([frame0(head), b"abcd"], "frame 1 is referenced twice")


def test_too_many_frames_is_refused():
    expect([frame0({"op": "x"})] + [b""] * (MAX_FRAMES + 1), "exceeds the limit")


def test_deep_nesting_is_refused():
    body: object = REF0
    for _ in range(80):
        body = [body]
    head = {"op": "x", "id": 1, "arrays": [["|u1", [2], 2, b"ab"]], "body": body}
    expect([frame0(head)], "nesting deeper than")


def test_huge_container_count_is_refused_by_msgpack_limits():
    # a map header that claims 2**31 entries in a 5-byte header must not allocate
    expect([frame0(None, raw=b"\xdf\x80\x00\x00\x00")], "not valid msgpack")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.lists(st.binary(max_size=32), max_size=3))
def test_fuzz_random_bytes_never_crash(raw, extra):
    for f0 in (raw, frame0(None, raw=raw)):
        try:
            decode([f0, *extra])
        except WireError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_valid_messages_never_crash(data):
    frames = encode(
        {"op": "echo", "id": 5, "body": {"a": np.arange(3000, dtype=np.int16), "s": "x"}}
    )
    f0 = bytearray(frames[0])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(f0) - 1))
        f0[i] = data.draw(st.integers(0, 255))
    payload = bytes(memoryview(frames[1]).cast("B"))
    cut = data.draw(st.integers(0, len(payload)))
    try:
        out = decode([bytes(f0), payload[:cut]])
    except WireError:
        return
    assert isinstance(out, dict)
