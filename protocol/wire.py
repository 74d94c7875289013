"""The mesh wire format: one message = a ZeroMQ multipart of a header frame and array frames.

Usage:
    frames = encode({"op": "frames", "id": 7, "body": {"frames": arr}})   # list of buffers
    msg = decode(received_frames)           # -> dict; arrays are read-only views (no copy)

Frame 0 is a 12-byte prefix followed by a msgpack header (byte-level spec: protocol/README.md):

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

Buffer lifetime: decoded arrays are read-only np.frombuffer views of the received zmq frames
and stay valid as long as the array (which holds a reference to the frame) lives; copy one
(np.array(a)) to mutate it. On send, out-of-band frames are the arrays themselves (pyzmq
copy=False keeps a reference until libzmq is done), so do not mutate an array you passed to
send until the call returned. An array that is a whole, unchanged view of a received frame
(a handler returning its input) is sent as that zmq.Frame: libzmq shares the buffer by
reference count instead of registering a new zero-copy buffer.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import numpy as np
import zmq

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
MAX_DEPTH = 64  # nesting depth of a body that carries arrays
MAX_DIM = 1 << 48  # largest single dimension (only an empty array can declare one this big)

_ALLOWED = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
            np.uint64, np.float16, np.float32, np.float64]  # fmt: skip
ALLOWED_DTYPES: dict[str, np.dtype] = {}
for _t in _ALLOWED:
    _d = np.dtype(_t)
    ALLOWED_DTYPES[_d.str] = _d  # native little-endian ("<f4") or byte-order-free ("|u1")
    ALLOWED_DTYPES[_d.newbyteorder(">").str] = _d.newbyteorder(">")  # accepted on receive
_SENDABLE = frozenset(d.str for d in ALLOWED_DTYPES.values() if d.byteorder != ">")
_Frame = zmq.Frame
_EXT_REFS = [msgpack.ExtType(EXT_ARRAY, struct.pack(">I", i)) for i in range(256)]  # common refs


class WireError(Exception):
    """A message that cannot be decoded. `code` is bad_request or version_mismatch."""

    def __init__(self, message: str, code: str = BAD_REQUEST, msg_id: Any = None, op: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.msg_id = msg_id
        self.op = op


class _ArrayRef:
    """A decoded ext-1 value: an index into the arrays table (resolved before decode returns)."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


def _check_dtype(a: np.ndarray) -> np.ndarray:
    dt = a.dtype
    if dt.str in _SENDABLE:
        return a
    if dt.kind in "biuf" and dt.newbyteorder("<").str in ALLOWED_DTYPES:
        return a.astype(dt.newbyteorder("<"))  # big-endian -> little-endian, once
    raise TypeError(
        f"array dtype {dt} cannot travel on the wire: only bool, int8-64, uint8-64 and "
        f"float16/32/64 are supported (object, void, string and complex arrays are refused; "
        f"convert them first). Pickle is never used."
    )


def _received_frame(a: np.ndarray) -> zmq.Frame | None:
    """The zmq.Frame `a` views, if `a` (C-contiguous) covers all of it (then it is sent as is)."""
    base, first = a.base, a
    while type(base) is np.ndarray:
        base, first = base.base, base
    if type(base) is not memoryview or not isinstance(base.obj, _Frame):
        return None
    # The memoryview and `first` span the whole frame; a contiguous view of it with as many
    # bytes must start at its first byte and end at its last (views never reach outside).
    n = len(base.obj)
    return base.obj if base.nbytes == n and first.nbytes == n and a.nbytes == n else None


class _Encoder:
    """msgpack `default` hook for one message: collects the arrays table and frames."""

    __slots__ = ("table", "frames", "inline_max")

    def __init__(self, inline_max: int):
        self.table: list = []
        self.frames: list = [b""]
        self.inline_max = inline_max

    def __call__(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            a = _check_dtype(obj)
            if not a.flags.c_contiguous:
                a = np.ascontiguousarray(a)  # Fortran order / strided views: one copy, here
            idx = len(self.table)
            if a.nbytes < self.inline_max:
                self.table.append([a.dtype.str, list(a.shape), a.nbytes, a.tobytes()])
            else:
                self.frames.append(_received_frame(a) or a)
                self.table.append([a.dtype.str, list(a.shape), a.nbytes, len(self.frames) - 1])
            return (
                _EXT_REFS[idx] if idx < 256 else msgpack.ExtType(EXT_ARRAY, struct.pack(">I", idx))
            )
        if isinstance(obj, np.bool_ | np.integer | np.floating):  # numpy scalars -> Python numbers
            return obj.item()
        if isinstance(obj, tuple | set | frozenset):
            return list(obj)
        raise TypeError(
            f"cannot encode {type(obj).__name__!r} on the wire: use msgpack types "
            f"(None, bool, int, float, str, bytes, list, dict) or numpy arrays; pickle is never used"
        )


def encode(header: dict, *, inline_max: int = INLINE_MAX_BYTES) -> list:
    """Encode a header dict (with numpy arrays anywhere in `body`) into frames.

    Returns [frame0 bytes, buffer1, buffer2, ...]; buffers are contiguous numpy arrays (or
    received zmq.Frames) that zmq sends with copy=False. Non-contiguous / Fortran arrays are
    made C-contiguous once. Raises TypeError for values msgpack cannot carry.
    """
    enc = _Encoder(inline_max)
    p = msgpack.Packer(default=enc, use_bin_type=True, autoreset=False)
    # The arrays table is only complete once the body is packed, so the map is written pair by
    # pair: the other entries, then the body, then the table (map order carries no meaning).
    keys = [k for k in header if k != "body" and k != "arrays"]
    p.pack_map_header(len(keys) + 2)
    for k in keys:
        p.pack(k)
        p.pack(header[k])
    p.pack("body")
    p.pack(header.get("body"))
    p.pack("arrays")
    p.pack(enc.table)
    head = p.bytes()
    enc.frames[0] = PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, len(head)) + head
    return enc.frames


_DEADLINE_ENTRY = b"\xa8deadline\xcb"  # msgpack: the key "deadline", then a float64


def restamp_deadline(frame0: bytes, seconds: float) -> bytes:
    """Frame 0 of an encoded request with its header's `deadline` set to `seconds` (the time
    the caller still waits, for a re-send); only the 8 bytes of the float change. A header
    whose deadline is not a float64 near the front is returned unchanged."""
    i = frame0.find(_DEADLINE_ENTRY, PREFIX_SIZE, PREFIX_SIZE + 320)
    if i < 0:
        return frame0
    j = i + len(_DEADLINE_ENTRY)
    return b"".join((frame0[:j], struct.pack(">d", seconds), frame0[j + 8 :]))


class _ExtHook:
    """msgpack ext_hook for one message: array references; remembers whether it saw any."""

    __slots__ = ("seen",)

    def __init__(self):
        self.seen = False

    def __call__(self, code: int, data: bytes) -> Any:
        if code != EXT_ARRAY or len(data) != 4:
            raise WireError(
                f"header: unknown msgpack extension type {code} (only {EXT_ARRAY} = array ref)"
            )
        self.seen = True
        return _ArrayRef(int.from_bytes(data, "big"))


def _buf(frame: Any) -> memoryview:
    if isinstance(frame, _Frame):
        return frame.buffer  # received with copy=False: a view of libzmq's message
    if isinstance(frame, bytes | bytearray | memoryview):
        return memoryview(frame).cast("B")
    if isinstance(frame, np.ndarray):  # an encoded but never sent frame (in-process use, tests)
        return memoryview(frame.reshape(-1).view(np.uint8))
    raise WireError(f"message: frame of type {type(frame).__name__} is not a buffer")


def decode(frames: list) -> dict:
    """Decode received frames (zmq.Frame or bytes) into a header dict; raises WireError."""
    if not frames:
        raise WireError("message: no frames")
    if len(frames) > MAX_FRAMES + 1:
        raise WireError(f"message: {len(frames)} frames exceeds the limit of {MAX_FRAMES + 1}")
    f0 = _buf(frames[0])
    n0 = len(f0)
    if n0 < PREFIX_SIZE:
        raise WireError(f"prefix: frame 0 has {n0} bytes, the fixed prefix needs {PREFIX_SIZE}")
    magic, version, _flags, hlen = PREFIX.unpack_from(f0)
    if magic != MAGIC:
        raise WireError(
            f"prefix: wrong magic {bytes(magic)!r}, expected {MAGIC!r} (not a mesh message)"
        )
    if version != PROTOCOL_VERSION:
        err = WireError(
            f"prefix: protocol version {version}, this peer speaks {PROTOCOL_VERSION}; "
            f"upgrade the older side",
            code=VERSION_MISMATCH,
        )
        err.msg_id, err.op = _peek_id(f0, hlen, n0)  # the reply keeps the request's id
        raise err
    if hlen != n0 - PREFIX_SIZE:
        raise WireError(
            f"prefix: declared header length {hlen} but frame 0 carries {n0 - PREFIX_SIZE} bytes"
        )
    if hlen > MAX_HEADER_BYTES:
        raise WireError(f"prefix: header of {hlen} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    lim = min(hlen, 1 << 20)  # no container can hold more items than the header has bytes
    hook = _ExtHook()
    try:
        head = msgpack.unpackb(
            f0[PREFIX_SIZE:], raw=False, ext_hook=hook, strict_map_key=False,
            max_str_len=hlen, max_bin_len=hlen, max_array_len=lim, max_map_len=lim, max_ext_len=16,
        )  # fmt: skip
    except WireError:
        raise
    except Exception as e:  # msgpack raises several types for garbage and deep nesting
        raise WireError(f"header: not valid msgpack ({type(e).__name__}: {e})") from None
    if type(head) is not dict:
        raise WireError(f"header: must be a msgpack map, got {type(head).__name__}")
    table = head.get("arrays")
    if not table and len(frames) == 1 and not hook.seen:
        return head  # no arrays: the common small message
    try:
        arrays = _decode_arrays(table if table is not None else [], frames)
        if hook.seen:
            head["body"] = _resolve(head.get("body"), arrays, 0)
    except WireError as e:
        e.msg_id, e.op = head.get("id"), head.get("op")
        raise
    return head


def _peek_id(f0: memoryview, hlen: int, n0: int) -> tuple[Any, Any]:
    """(id, op) of a header in another protocol version, when it is a readable msgpack map."""
    if hlen != n0 - PREFIX_SIZE or hlen > MAX_HEADER_BYTES:
        return None, None
    lim = min(hlen, 1 << 20)
    try:
        head = msgpack.unpackb(f0[PREFIX_SIZE:], raw=False, strict_map_key=False,
                               ext_hook=lambda code, data: None, max_str_len=hlen,
                               max_bin_len=hlen, max_array_len=lim, max_map_len=lim)  # fmt: skip
    except Exception:  # noqa: BLE001 - best effort: the version error is what matters
        return None, None
    if type(head) is not dict:
        return None, None
    msg_id, op = head.get("id"), head.get("op")
    return (msg_id if type(msg_id) is int else None), (op if isinstance(op, str) else None)


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
        for s in shape:
            if type(s) is not int or not 0 <= s <= MAX_DIM:
                raise WireError(f"arrays[{i}].shape: {shape!r} must hold ints in 0..{MAX_DIM}")
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
            f = frames[where]
            buf = f.buffer if type(f) is _Frame else _buf(f)
        else:
            raise WireError(f"arrays[{i}]: where must be a frame index or inline bytes")
        if len(buf) != nbytes:  # buffers here are 1-d bytes, so len() is the byte count
            raise WireError(
                f"arrays[{i}]: declared {nbytes} bytes but the frame carries {len(buf)}"
            )
        a = np.frombuffer(buf, dtype=dt).reshape(shape)  # a view of the frame: no copy
        a.flags.writeable = False  # the frame may be shared (e.g. sent on as a reply)
        out.append(a)
    if len(used) != len(frames) - 1:
        extra = sorted(set(range(1, len(frames))) - used)
        raise WireError(
            f"message: frames {extra[:8]} are not referenced by the arrays table (extra frames)"
        )
    return out


def _resolve(obj: Any, arrays: list, depth: int) -> Any:
    """Replace array references inside the decoded body with the arrays, in place."""
    if depth > MAX_DEPTH:
        raise WireError(f"body: nesting deeper than {MAX_DEPTH} levels")
    t = type(obj)
    if t is _ArrayRef:
        return _array_at(obj, arrays)
    if t is dict:
        for k, v in obj.items():  # assigning existing keys while iterating is allowed
            tv = type(v)
            if tv is _ArrayRef:
                obj[k] = _array_at(v, arrays)
            elif tv is dict or tv is list:
                _resolve(v, arrays, depth + 1)
    elif t is list:
        for i, v in enumerate(obj):
            tv = type(v)
            if tv is _ArrayRef:
                obj[i] = _array_at(v, arrays)
            elif tv is dict or tv is list:
                _resolve(v, arrays, depth + 1)
    return obj


def _array_at(ref: _ArrayRef, arrays: list) -> np.ndarray:
    if ref.index >= len(arrays):
        raise WireError(
            f"body: array reference {ref.index} but the table has {len(arrays)} entries"
        )
    return arrays[ref.index]
