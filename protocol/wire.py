"""The mesh wire format: one message = a ZeroMQ multipart of a header frame and array frames.

Usage:
    frames = encode({"op": "frames", "id": 7, "body": {"frames": arr}})   # list of buffers
    msg = decode(received_frames)           # -> dict; arrays are read-only views (no copy)

Frame 0 is a 12-byte prefix followed by a msgpack header:

    offset  size  field
    0       4     magic b"MMSH"
    4       2     protocol version, uint16 big-endian (PROTOCOL_VERSION)
    6       2     flags, uint16 big-endian (0; reserved)
    8       4     header length in bytes, uint32 big-endian (= len(frame 0) - 12)
    12      n     msgpack map: op, id, deadline?, body, arrays, (replies) ok, error

`arrays` is a table, one entry per array: [dtype, shape, nbytes, where], where `dtype` is
numpy's dtype.str ("|u1", "<f4", "|b1" ...), `shape` a list of ints, `nbytes` the byte length,
and `where` either the index (>= 1) of the frame holding the raw C-order bytes, or the bytes
themselves (a msgpack bin) for small arrays sent inline. Inside `body` an array is the msgpack
extension type 1 whose 4-byte payload is the big-endian uint32 index into that table.
Every out-of-band frame is referenced by exactly one entry; missing or extra frames are errors.

Buffer lifetime: decoded arrays are np.frombuffer views of the received zmq frames and stay
valid as long as the array (which holds a reference to the frame) lives. They are read-only;
copy one (np.array(a)) to mutate it. On send, the encoder keeps a reference to each array
until zmq is done with it (pyzmq copy=False holds the buffer), so do not mutate an array
you passed to send until the call returned.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from .errors import BAD_REQUEST, VERSION_MISMATCH

MAGIC = b"MMSH"
PROTOCOL_VERSION = 1
PREFIX = struct.Struct(">4sHHI")  # magic, version, flags, header length
PREFIX_SIZE = PREFIX.size  # 12
EXT_ARRAY = 1  # msgpack ext type code: a reference into the header's arrays table

INLINE_MAX_BYTES = 1024  # arrays smaller than this travel inside the header
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a header (body included) above this is refused
MAX_NDIM = 32  # numpy's own limit is 64; nothing in this mesh needs more than 5
MAX_FRAMES = 4096  # arrays in one message

_ALLOWED = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
            np.uint64, np.float16, np.float32, np.float64]  # fmt: skip
ALLOWED_DTYPES: dict[str, np.dtype] = {}
for _t in _ALLOWED:
    _d = np.dtype(_t)
    ALLOWED_DTYPES[_d.str] = _d  # native little-endian ("<f4") or byte-order-free ("|u1")
    ALLOWED_DTYPES[_d.newbyteorder(">").str] = _d.newbyteorder(">")  # accepted on receive


class WireError(Exception):
    """A message that cannot be decoded. `code` is bad_request or version_mismatch."""

    def __init__(self, message: str, code: str = BAD_REQUEST, msg_id: Any = None, op: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.msg_id = msg_id
        self.op = op


@dataclass(frozen=True, slots=True)
class _ArrayRef:
    index: int


def _check_dtype(a: np.ndarray) -> np.ndarray:
    dt = a.dtype
    if dt.str in ALLOWED_DTYPES and dt.byteorder != ">":
        return a
    if dt.kind in "biuf" and dt.newbyteorder("<").str in ALLOWED_DTYPES:
        return a.astype(dt.newbyteorder("<"))  # big-endian -> little-endian, once
    raise TypeError(
        f"array dtype {dt!r} cannot travel on the wire: only bool, int8-64, uint8-64 and "
        f"float16/32/64 are supported (object, void, string and complex arrays are refused; "
        f"convert them first). Pickle is never used."
    )


def encode(header: dict, *, inline_max: int = INLINE_MAX_BYTES) -> list:
    """Encode a header dict (with numpy arrays anywhere in `body`) into frames.

    Returns [frame0 bytes, buffer1, buffer2, ...]; buffers are contiguous numpy arrays that
    zmq can send with copy=False. Non-contiguous / Fortran arrays are made C-contiguous once.
    """
    table: list = []
    frames: list = [b""]

    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            a = _check_dtype(obj)
            if not a.flags.c_contiguous:
                a = np.ascontiguousarray(a)
            idx = len(table)
            if a.nbytes < inline_max:
                table.append([a.dtype.str, list(a.shape), a.nbytes, a.tobytes()])
            else:
                frames.append(a)
                table.append([a.dtype.str, list(a.shape), a.nbytes, len(frames) - 1])
            return msgpack.ExtType(EXT_ARRAY, struct.pack(">I", idx))
        if isinstance(obj, np.generic):  # numpy scalars -> plain Python numbers
            if isinstance(obj, np.bool_ | np.integer | np.floating):
                return obj.item()
        if isinstance(obj, tuple | set | frozenset):
            return list(obj)
        raise TypeError(
            f"cannot encode {type(obj).__name__!r} on the wire: use msgpack types "
            f"(None, bool, int, float, str, bytes, list, dict) or numpy arrays; pickle is never used"
        )

    body = msgpack.packb(header.get("body"), default=default, use_bin_type=True)
    # The arrays table is only known once the body is packed, so the header map is written
    # by hand: its other entries, the table, then the already packed body.
    head = {k: v for k, v in header.items() if k not in ("body", "arrays")}
    parts = [_PACKER.pack_map_header(len(head) + 2)]
    for k, v in head.items():
        parts.append(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True, default=default))
    parts.append(msgpack.packb("arrays") + msgpack.packb(table, use_bin_type=True))
    parts.append(msgpack.packb("body") + body)
    header_bytes = b"".join(parts)
    frames[0] = PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, len(header_bytes)) + header_bytes
    return frames


_PACKER = msgpack.Packer()


MAX_DEPTH = 64  # nesting depth of a body that carries arrays


def _ext_hook(code: int, data: bytes) -> Any:
    if code != EXT_ARRAY or len(data) != 4:
        raise WireError(
            f"header: unknown msgpack extension type {code} (only {EXT_ARRAY} = array ref)"
        )
    return _ArrayRef(struct.unpack(">I", data)[0])


def _buf(frame: Any) -> memoryview:
    if isinstance(frame, bytes | bytearray | memoryview):
        return memoryview(frame).cast("B")
    if isinstance(frame, np.ndarray):  # an encoded but never sent frame (in-process use, tests)
        return memoryview(frame.reshape(-1).view(np.uint8))
    return frame.buffer  # zmq.Frame received with copy=False


def decode(frames: list) -> dict:
    """Decode received frames (zmq.Frame or bytes) into a header dict; raises WireError."""
    if not frames:
        raise WireError("message: no frames")
    if len(frames) > MAX_FRAMES + 1:
        raise WireError(f"message: {len(frames)} frames exceeds the limit of {MAX_FRAMES + 1}")
    f0 = _buf(frames[0])
    if len(f0) < PREFIX_SIZE:
        raise WireError(
            f"prefix: frame 0 has {len(f0)} bytes, the fixed prefix needs {PREFIX_SIZE}"
        )
    magic, version, _flags, hlen = PREFIX.unpack_from(f0)
    if magic != MAGIC:
        raise WireError(
            f"prefix: wrong magic {bytes(magic)!r}, expected {MAGIC!r} (not a mesh message)"
        )
    if version != PROTOCOL_VERSION:
        raise WireError(
            f"prefix: protocol version {version}, this peer speaks {PROTOCOL_VERSION}; "
            f"upgrade the older side",
            code=VERSION_MISMATCH,
        )
    if hlen != len(f0) - PREFIX_SIZE:
        raise WireError(
            f"prefix: declared header length {hlen} but frame 0 carries {len(f0) - PREFIX_SIZE} bytes"
        )
    if hlen > MAX_HEADER_BYTES:
        raise WireError(f"prefix: header of {hlen} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    try:
        head = msgpack.unpackb(
            f0[PREFIX_SIZE:], raw=False, ext_hook=_ext_hook, strict_map_key=False,
            max_str_len=hlen, max_bin_len=hlen,
            max_array_len=min(hlen, 1 << 20), max_map_len=min(hlen, 1 << 20), max_ext_len=16,
        )  # fmt: skip
    except WireError:
        raise
    except Exception as e:  # msgpack raises several types for garbage and deep nesting
        raise WireError(f"header: not valid msgpack ({type(e).__name__}: {e})") from None
    if not isinstance(head, dict):
        raise WireError(f"header: must be a msgpack map, got {type(head).__name__}")
    msg_id, op = head.get("id"), head.get("op")
    try:
        arrays = _decode_arrays(head.get("arrays", []), frames)
        if arrays:
            head["body"] = _resolve(head.get("body"), arrays, 0)
    except WireError as e:
        e.msg_id, e.op = msg_id, op
        raise
    return head


def _decode_arrays(table: Any, frames: list) -> list:
    if not isinstance(table, list):
        raise WireError(f"arrays: must be a list, got {type(table).__name__}")
    used = set()
    out = []
    for i, entry in enumerate(table):
        if not (isinstance(entry, list) and len(entry) == 4):
            raise WireError(f"arrays[{i}]: must be [dtype, shape, nbytes, frame|bytes]")
        dts, shape, nbytes, where = entry
        dt = ALLOWED_DTYPES.get(dts) if isinstance(dts, str) else None
        if dt is None:
            raise WireError(
                f"arrays[{i}].dtype: {dts!r} is not supported (bool, int8-64, uint8-64, float16/32/64)"
            )
        if not (isinstance(shape, list) and len(shape) <= MAX_NDIM):
            raise WireError(f"arrays[{i}].shape: must be a list of at most {MAX_NDIM} ints")
        if not all(type(s) is int and s >= 0 for s in shape):
            raise WireError(f"arrays[{i}].shape: {shape!r} must hold non-negative ints")
        expect = math.prod(shape) * dt.itemsize
        if type(nbytes) is not int or nbytes != expect:
            raise WireError(
                f"arrays[{i}].nbytes: {nbytes!r} does not match dtype {dts} x shape {shape} = {expect}"
            )
        if isinstance(where, bytes):
            buf = where
        elif type(where) is int:
            if not 1 <= where < len(frames):
                raise WireError(
                    f"arrays[{i}].frame: index {where} but the message has frames 1..{len(frames) - 1}"
                )
            if where in used:
                raise WireError(f"arrays[{i}].frame: frame {where} is referenced twice")
            used.add(where)
            buf = _buf(frames[where])
        else:
            raise WireError(f"arrays[{i}]: where must be a frame index or inline bytes")
        if len(buf) != nbytes:  # buffers here are 1-d bytes, so len() is the byte count
            raise WireError(
                f"arrays[{i}]: declared {nbytes} bytes but the frame carries {len(buf)}"
            )
        out.append(np.frombuffer(buf, dtype=dt).reshape(shape))
    if len(used) != len(frames) - 1:
        extra = sorted(set(range(1, len(frames))) - used)
        raise WireError(
            f"message: frames {extra[:8]} are not referenced by the arrays table (extra frames)"
        )
    return out


def _resolve(obj: Any, arrays: list, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise WireError(f"body: nesting deeper than {MAX_DEPTH} levels")
    if isinstance(obj, _ArrayRef):
        if obj.index >= len(arrays):
            raise WireError(
                f"body: array reference {obj.index} but the table has {len(arrays)} entries"
            )
        return arrays[obj.index]
    if isinstance(obj, dict):
        return {k: _resolve(v, arrays, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, arrays, depth + 1) for v in obj]
    return obj
