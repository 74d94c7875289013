"""Random values for the fuzzer: strings, numbers, arrays and msgpack junk, right or wrong typed.

Usage:
    v = Values(random.Random(0), strings=["real-session"], ints=[0, 1])
    arrays = []
    v.valid(list[list[float]] | None, arrays)   # a value the annotation accepts (random content)
    v.wrong(int, arrays)                         # a value it refuses (str, bool, None, an array...)
    # array values are ref(i) placeholders for arrays[i] (the wire's extension type 1)
"""

from __future__ import annotations

import random
import struct
import types
from typing import Any, Literal, Union, get_args, get_origin

import msgpack
import numpy as np

EXT_ARRAY = 1
DTYPES = ["|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8",
          ">i4", ">f8", ">u2"]  # fmt: skip
BAD_DTYPES = ["|O", "|V8", "<c16", "<M8[s]", "<U4", "|S3", "f4", "", "<f3", "int64", "<i9"]
# No "/", "~" or leading dots: a random path string stays inside the service's working folder.
ALPHABET = "abcxyzABC019_-:.é中 \t\x00\x7f"


def ref(i: int) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_ARRAY, struct.pack(">I", i))


class Values:
    def __init__(self, rng: random.Random, *, strings: list[str] = (), ints: list[int] = ()):
        self.rng = rng
        self.strings = list(strings)
        self.ints = list(ints) or [0, 1, 2, 3]

    def rstr(self) -> str:
        r = self.rng
        if self.strings and r.random() < 0.4:
            return r.choice(self.strings)
        s = "".join(r.choice(ALPHABET) for _ in range(r.choice([0, 1, 3, 8, 40, 300])))
        return "x" + s if s.startswith(".") or set(s) <= {"."} else s

    def rint(self) -> int:
        r = self.rng
        return r.choice([r.choice(self.ints), r.randint(-3, 30), 0, -1, 2**31, 2**63 - 1,
                         -(2**63), 2**64 - 1, r.randint(-(2**40), 2**40)])  # fmt: skip

    def rfloat(self) -> float:
        r = self.rng
        return r.choice([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 0.5,
                         r.uniform(-1e4, 1e4), r.uniform(0, 1), 5e-324])  # fmt: skip

    def rarray(self, image_like: bool = False) -> np.ndarray:
        r = self.rng
        dt = np.dtype(r.choice(DTYPES))
        if image_like and r.random() < 0.5:
            shape = (r.randint(0, 40), r.randint(0, 40), r.choice([3, 3, 1, 4]))
            if r.random() < 0.3:
                shape = (r.randint(0, 3), *shape)
            dt = np.dtype("|u1") if r.random() < 0.6 else dt
        else:
            shape = tuple(r.randint(0, 6) for _ in range(r.randint(0, 5)))
        n = int(np.prod(shape)) * dt.itemsize
        return np.frombuffer(r.randbytes(n), dt).reshape(shape) if n else np.zeros(shape, dt)

    def junk(self, depth: int = 0) -> Any:
        """Any msgpack value (never an array ref)."""
        r = self.rng
        k = r.randint(0, 9 if depth < 3 else 6)
        if k == 7:
            return [self.junk(depth + 1) for _ in range(r.randint(0, 3))]
        if k == 8:
            return {self.rstr(): self.junk(depth + 1) for _ in range(r.randint(0, 3))}
        if k == 9:
            return {r.randint(0, 9): None}
        v = [
            None,
            True,
            self.rint,
            self.rfloat,
            self.rstr,
            lambda: r.randbytes(r.randint(0, 9)),
            -5,
        ][k]
        return v() if callable(v) else v

    def valid(self, tp: Any, arrays: list) -> Any:
        """A value of the annotated type (random content); arrays are appended to `arrays`."""
        r = self.rng
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            args = get_args(tp)
            if type(None) in args and r.random() < 0.3:
                return None
            return self.valid(r.choice([a for a in args if a is not type(None)]), arrays)
        if origin is Literal:
            return r.choice(get_args(tp))
        if origin is list:
            (item,) = get_args(tp) or (Any,)
            return [self.valid(item, arrays) for _ in range(r.choice([0, 1, 2, 4, 50]))]
        if origin is dict:
            kt, vt = get_args(tp) or (str, Any)
            return {self.valid(kt, arrays): self.valid(vt, arrays) for _ in range(r.randint(0, 4))}
        if tp is np.ndarray:
            arrays.append(self.rarray(image_like=True))
            return ref(len(arrays) - 1)
        return {int: self.rint, float: self.rfloat, str: self.rstr, bool: lambda: r.random() < 0.5,
                bytes: lambda: r.randbytes(r.randint(0, 20)),
                list: lambda: [self.junk() for _ in range(r.randint(0, 3))],
                dict: lambda: {self.rstr(): self.junk() for _ in range(r.randint(0, 3))}}.get(
            tp, self.junk)()  # fmt: skip

    def wrong(self, tp: Any, arrays: list) -> Any:
        """A value the annotation refuses (schema: bad_request naming the field)."""
        r = self.rng
        origin = get_origin(tp)
        args = get_args(tp)
        optional = origin in (Union, types.UnionType) and type(None) in args
        base = [a for a in args if a is not type(None)] if optional else [tp]
        kinds = {get_origin(a) or a for a in base}
        cands: list[Any] = []
        if not (kinds & {int, float}):
            cands += [7, -(2**63)]
        if float not in kinds:
            cands += [2.5, float("nan")]
        if int not in kinds and float not in kinds and bool not in kinds:
            cands += [True]
        if int in kinds or float in kinds:
            cands += [False, True]  # a bool is never an int
        if str not in kinds and not any(get_origin(a) is Literal for a in base):
            cands += ["seven", ""]
        if bytes not in kinds:
            cands += [b"\x00\x01"]
        if list not in kinds:
            cands += [[1, "a", None]]
        if dict not in kinds:
            cands += [{"k": 1}]
        if np.ndarray not in kinds:
            arrays.append(self.rarray())
            cands += [ref(len(arrays) - 1)]
        if not optional:
            cands += [None]
        if list in kinds:  # a list with an element of the wrong type
            item = get_args([a for a in base if get_origin(a) is list][0]) or (Any,)
            if item[0] is not Any:
                cands += [[self.wrong(item[0], arrays)]]
        return r.choice(cands)
