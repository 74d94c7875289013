"""Seeded generator of malformed and hostile mesh messages, built byte by byte (not via encode).

Usage:
    ops = op_specs("sam", info["ops"])          # op -> @message class (from the service's info)
    gen = Generator(random.Random(0), ops, strings=["real-session-id"], ints=[0, 1, 5])
    for case in gen.cases(10_000):
        case.frames      # list[bytes]: the message, without the DEALER's empty delimiter
        case.rid         # the id the header carries (None: the reply carries no id)
        case.expect      # reply codes allowed when the reply carries rid ("ok" = success)

Categories (KINDS) cover the wire format (random bytes, truncated/lying prefixes, bad msgpack,
deep nesting, lying array tables: dtypes, shapes, lengths, frame indices, huge declared
arrays, extra frames, unknown extension types) and the op layer (unknown ops, bad ids and
deadlines, wrong field types, missing and unknown fields, non-map bodies, arrays of the wrong
dtype/shape, valid types with nonsense values, random byte flips of valid messages).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import random
import struct
from dataclasses import dataclass
from typing import Any, get_args, get_type_hints

import msgpack
import numpy as np

from protocol.schema import describe
from tests.reliability.fuzzvalues import BAD_DTYPES, Values, ref

MAGIC = b"MMSH"
VERSION = 1
PREFIX = struct.Struct(">4sHHI")
DEADLINE_S = 30.0  # every well-formed fuzz request may wait this long in the queue

ANY_ERROR = frozenset({"bad_request", "not_found", "unsupported", "overloaded", "timeout",
                       "internal", "version_mismatch", "unavailable"})  # fmt: skip
BAD = frozenset({"bad_request"})
# A request with the right types but nonsense values: any answer but a crash (`internal`).
HANDLED = frozenset({"ok", "bad_request", "not_found", "unsupported", "overloaded"})


@dataclass
class Case:
    kind: str
    frames: list[bytes]
    rid: int | None
    expect: frozenset[str]  # codes allowed in a reply that carries rid
    delimiter: bool = True  # False: no empty envelope frame (a raw DEALER peer)
    op: str | None = None  # the op the header names, when the generator knows it

    @property
    def pipelined(self) -> bool:
        """Op-layer cases carry an id the reply must echo, so they can be sent pipelined;
        wire-level ones may be answered with id None and go one at a time (exact attribution)."""
        return self.kind in OP_LAYER


def op_specs(service: str, info_ops: dict) -> dict[str, type | None]:
    """Match the ops a service announces in `info` to the @message classes of its module."""
    mod = importlib.import_module(f"services.{service}.service")
    classes = [c for _, c in inspect.getmembers(mod, inspect.isclass)
               if getattr(c, "__mesh_message__", False)]  # fmt: skip
    out: dict[str, type | None] = {}
    for op, spec in info_ops.items():
        body = spec.get("body")
        match = [c for c in classes if body is not None and describe(c) == body]
        out[op] = match[0] if match else None
    return out


def fields_of(cls: type) -> list[tuple[str, Any, bool]]:
    """(name, annotation, required) of a @message class."""
    hints = get_type_hints(cls, globalns=vars(importlib.import_module(cls.__module__)))
    return [(f.name, hints[f.name], f.default is dataclasses.MISSING
             and f.default_factory is dataclasses.MISSING) for f in dataclasses.fields(cls)]  # fmt: skip


def pack_header(header: Any) -> bytes:
    return msgpack.packb(header, use_bin_type=True, strict_types=False)


def frame0(head: bytes, *, magic: bytes = MAGIC, version: int = VERSION, hlen: int | None = None,
           flags: int = 0) -> bytes:  # fmt: skip
    return PREFIX.pack(magic, version, flags, len(head) if hlen is None else hlen) + head


class Generator(Values):
    """Hostile messages for one service; `ops` maps op names to @message classes (or None)."""

    def __init__(self, rng: random.Random, ops: dict[str, type | None], *,
                 strings: list[str] = (), ints: list[int] = ()) -> None:  # fmt: skip
        super().__init__(rng, strings=strings, ints=ints)
        self.ops = ops
        self.typed = sorted(op for op, c in ops.items() if c is not None)
        if not self.typed:
            raise ValueError("fuzz: the service announces no typed ops; nothing to aim at")
        self.next_id = 1
        self.kinds = [(name, getattr(self, f"_k_{name}")) for name in KINDS]

    # -- values ---------------------------------------------------------------------------
    def rid(self) -> int:
        self.next_id += 1
        return self.next_id

    def array_field(self, op: str) -> str:
        """The op's array field if it has one (so a lying table aims at a real array)."""
        fields = fields_of(self.ops[op])
        arr = [n for n, tp, _ in fields if tp is np.ndarray or np.ndarray in get_args(tp)]
        return arr[0] if arr else fields[0][0]

    # -- message builders -------------------------------------------------------------------
    def request(self, op: str | None = None, body_fn: str = "valid") -> tuple[dict, list, str]:
        """A well-formed header dict (+ arrays) for a random typed op."""
        op = op or self.rng.choice(self.typed)
        arrays: list = []
        body = {}
        for name, tp, required in fields_of(self.ops[op]):
            if required or self.rng.random() < 0.5:
                body[name] = getattr(self, body_fn)(tp, arrays)
        return {"op": op, "id": self.rid(), "deadline": DEADLINE_S, "body": body}, arrays, op

    def build(self, header: Any, arrays: list, *, inline: bool | None = None) -> list[bytes]:
        """Frames for a header whose body holds ref(i) for arrays[i] (honest table)."""
        table, frames = [], []
        for a in arrays:
            a = np.ascontiguousarray(a)
            where: Any
            if inline if inline is not None else self.rng.random() < 0.5:
                where = a.tobytes()
            else:
                frames.append(a.tobytes())
                where = len(frames)
            table.append([a.dtype.str, list(a.shape), a.nbytes, where])
        if isinstance(header, dict):
            header = {**header, "arrays": table}
        return [frame0(pack_header(header)), *frames]

    def case(self, kind: str, header: Any, arrays: list, expect: frozenset[str], **kw) -> Case:
        rid = header.get("id") if isinstance(header, dict) else None
        op = header.get("op") if isinstance(header, dict) else None
        return Case(kind, self.build(header, arrays, **kw), rid if type(rid) is int else None,
                    expect, op=op if isinstance(op, str) else None)  # fmt: skip

    # -- categories: wire format --------------------------------------------------------------
    def _k_random_bytes(self) -> Case:
        r = self.rng
        frames = [
            r.randbytes(r.choice([1, 2, 11, 12, 13, 64, 700])) for _ in range(r.randint(1, 3))
        ]
        return Case("random_bytes", frames, None, BAD)

    def _k_magic_then_garbage(self) -> Case:
        r = self.rng
        body = r.randbytes(r.randint(0, 200))
        return Case("magic_then_garbage", [frame0(body)], None, BAD)

    def _k_truncated_prefix(self) -> Case:
        h, arrays, _ = self.request()
        f = self.build(h, arrays)
        return Case("truncated_prefix", [f[0][: self.rng.randint(0, 11)], *f[1:]], None, BAD)

    def _k_truncated_header(self) -> Case:
        h, arrays, _ = self.request()
        f = self.build(h, arrays)
        cut = self.rng.randint(12, max(12, len(f[0]) - 1))
        return Case("truncated_header", [f[0][:cut], *f[1:]], None, BAD)

    def _k_lying_header_length(self) -> Case:
        h, arrays, _ = self.request()
        head = pack_header({**h, "arrays": []})
        lie = self.rng.choice([0, 1, len(head) - 1, len(head) + 1, 2**31, 2**32 - 1])
        return Case("lying_header_length", [frame0(head, hlen=lie)], None, BAD)

    def _k_wrong_version(self) -> Case:
        h, _, _ = self.request()
        v = self.rng.choice([0, 2, 7, 65535])
        # the header itself is readable, so the version_mismatch reply keeps the request's id
        return Case("wrong_version", [frame0(pack_header(h), version=v)], h["id"],
                    frozenset({"version_mismatch"}))  # fmt: skip

    def _k_garbage_msgpack(self) -> Case:
        r = self.rng
        head = r.choice([b"\xc1", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                         b"\xc6\xff\xff\xff\xf0abc", b"\x92\x01", r.randbytes(r.randint(1, 80))])  # fmt: skip
        return Case("garbage_msgpack", [frame0(head)], None, BAD)

    def _k_header_not_map(self) -> Case:
        v = self.rng.choice([[1, 2], "ping", 5, None, b"\x00", [{"op": "ping"}]])
        return Case("header_not_map", [frame0(pack_header(v))], None, BAD)

    def _k_deep_nesting(self) -> Case:
        r = self.rng
        depth = r.choice([70, 200, 1000, 5000, 100_000])
        if r.random() < 0.5:  # nesting in the header itself (the msgpack decoder's stack)
            raw = b"\x91" * depth + b"\xc0"
            return Case("deep_nesting", [frame0(raw)], None, BAD)
        h, arrays, op = self.request()
        name = fields_of(self.ops[op])[0][0]
        inner: Any = ref(0) if r.random() < 0.5 else 1
        arrays = [np.zeros(3, np.uint8)] if isinstance(inner, msgpack.ExtType) else []
        raw = b"\x91" * depth + pack_header(inner)  # a fixarray of 1, `depth` times
        body = b"\x81" + pack_header(name) + raw
        table = [["|u1", [3], 3, b"\x00\x00\x00"]] if arrays else []
        head = (b"\x84" + pack_header("op") + pack_header(op) + pack_header("id")
                + pack_header(h["id"]) + pack_header("body") + body + pack_header("arrays")
                + pack_header(table))  # fmt: skip
        return Case("deep_nesting", [frame0(head)], h["id"], BAD)

    def _k_huge_declared_array(self) -> Case:
        r = self.rng
        h, _, op = self.request()
        shape = r.choice([[2**31, 2**31], [2**62], [10**6, 10**6, 3], [65536] * 4, [2**63 - 1, 0]])
        nbytes = r.choice(
            [0, 16, 2**63 - 1, 2**64 - 1, min(int(np.prod(shape, dtype=object)), 2**64 - 1)]
        )
        where = r.choice([1, b"\x00" * 16])
        frames = [b"\x00" * 16] if where == 1 else []
        head = {
            **h,
            "body": {self.array_field(op): ref(0)},
            "arrays": [["<f8", shape, nbytes, where]],
        }
        return Case("huge_declared_array", [frame0(pack_header(head)), *frames], h["id"], BAD)

    def _k_lying_array_table(self) -> Case:
        r = self.rng
        h, _, op = self.request()
        a = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
        good = ["<i4", [2, 3, 4], 96, 1]
        lie = r.choice([
            ["<f8", [2, 3, 4], 96, 1], ["<i4", [2, 3, 5], 96, 1], ["<i4", [2, 3, 4], 95, 1],
            ["<i4", [2, 3, 4], 97, 1], [r.choice(BAD_DTYPES), [2, 3, 4], 96, 1],
            ["<i4", [-2, -3, 4], 96, 1], ["<i4", [2.0, 3, 4], 96, 1], ["<i4", [True, 3, 4], 96, 1],
            ["<i4", [1] * 33, 4, 1], ["<i4", "234", 96, 1], ["<i4", [2, 3, 4], "96", 1],
            ["<i4", [2, 3, 4], 96, 0], ["<i4", [2, 3, 4], 96, 2], ["<i4", [2, 3, 4], 96, -1],
            ["<i4", [2, 3, 4], 96, 1.0], ["<i4", [2, 3, 4], 96, None], ["<i4", [2, 3, 4], 96],
            ["<i4", [2, 3, 4], 96, 1, 0], "not-a-table-entry", None,
            ["<i4", [2, 3, 4], 96, b"\x00" * 95], [5, [2, 3, 4], 96, 1],
        ])  # fmt: skip
        table = r.choice([[lie], [good, lie], [lie, good], {"0": good}, "arrays"])
        frames = [a.tobytes()] + (
            [a.tobytes()] if isinstance(table, list) and len(table) == 2 else []
        )
        if isinstance(table, list) and len(table) == 2:
            table = [[*e[:3], i + 1] if isinstance(e, list) and len(e) == 4 and e[3] == 1 else e
                     for i, e in enumerate(table)]  # fmt: skip
        body = {self.array_field(op): ref(0 if r.random() < 0.7 else r.choice([5, 2**32 - 1]))}
        head = {**h, "body": body, "arrays": table}
        return Case("lying_array_table", [frame0(pack_header(head)), *frames], h["id"], BAD)

    def _k_frame_mismatch(self) -> Case:
        r = self.rng
        h, _, op = self.request()
        a = np.arange(12, dtype=np.uint8)
        table = [["|u1", [12], 12, 1]]
        frames = [a.tobytes()]
        choice = r.randint(0, 3)
        if choice == 0:  # an extra, unreferenced frame
            frames.append(r.randbytes(r.randint(0, 64)))
        elif choice == 1:  # the referenced frame missing
            frames = []
        elif choice == 2:  # too many frames (the limit is 4096 arrays)
            frames += [b""] * r.choice([4096, 4100])
        else:  # the referenced frame shorter or longer than declared
            frames = [a.tobytes()[: r.randint(0, 11)] + b"\x00" * r.choice([0, 13])]
        head = {**h, "body": {self.array_field(op): ref(0)}, "arrays": table}
        return Case("frame_mismatch", [frame0(pack_header(head)), *frames], h["id"], BAD)

    def _k_unknown_ext(self) -> Case:
        h, _, _ = self.request()
        code = self.rng.choice([0, 2, 5, 127, -1])
        data = self.rng.randbytes(self.rng.choice([0, 4, 17]))
        val = msgpack.Timestamp(2**33, 5) if code == -1 else msgpack.ExtType(code, data)
        head = {**h, "body": {self.array_field(h["op"]): val}, "arrays": []}
        return Case("unknown_ext", [frame0(pack_header(head))], h["id"], BAD)

    def _k_oversized_string(self) -> Case:
        h, arrays, op = self.request()
        name = fields_of(self.ops[op])[0][0]
        big = "A" * self.rng.choice([100_000, 600_000])
        return self.case("oversized_string", {**h, "body": {**h["body"], name: big}}, arrays,
                         BAD | HANDLED)  # fmt: skip

    # -- categories: op layer ---------------------------------------------------------------------
    def _k_unknown_op(self) -> Case:
        r = self.rng
        op = r.choice([self.rstr(), "", "PING", "ping ", "__init__", "ops", "../" * 3,
                       "start_session\x00", "x" * 5000])  # fmt: skip
        if op in self.ops or op in ("ping", "info"):
            op = op + "?"
        h = {"op": op, "id": self.rid(), "deadline": DEADLINE_S, "body": self.junk()}
        return self.case("unknown_op", h, [], frozenset({"unsupported"}))

    def _k_op_not_string(self) -> Case:
        h = {"op": self.rng.choice([None, 5, ["ping"], {"op": "ping"}, b"ping", True]),
             "id": self.rid(), "body": {}}  # fmt: skip
        if self.rng.random() < 0.2:
            del h["op"]
        return self.case("op_not_string", h, [], BAD)

    def _k_bad_id(self) -> Case:
        h, arrays, _ = self.request()
        h["id"] = self.rng.choice([1.5, "7", True, [1], {"id": 1}, b"\x01", float("nan")])
        return Case("bad_id", self.build(h, arrays), None, BAD)

    def _k_bad_deadline(self) -> Case:
        h, arrays, _ = self.request()
        d = self.rng.choice(["soon", [1], True, float("nan"), 0, -1, -1e300, {}])
        h["deadline"] = d
        exp = frozenset({"timeout"}) if isinstance(d, int | float) and not isinstance(d, bool) \
            and d == d else BAD  # fmt: skip
        return self.case("bad_deadline", h, arrays, exp)

    def _k_wrong_field_type(self) -> Case:
        h, arrays, op = self.request()
        name, tp, _ = self.rng.choice(fields_of(self.ops[op]))
        h["body"][name] = self.wrong(tp, arrays)
        return self.case("wrong_field_type", h, arrays, BAD)

    def _k_missing_field(self) -> Case:
        ops = [o for o in self.typed if any(req for _, _, req in fields_of(self.ops[o]))]
        h, arrays, op = self.request(self.rng.choice(ops))
        name = self.rng.choice([n for n, _, req in fields_of(self.ops[op]) if req])
        del h["body"][name]
        return self.case("missing_field", h, arrays, BAD)

    def _k_unknown_field(self) -> Case:
        h, arrays, _ = self.request()
        h["body"][self.rng.choice(["extra", "Session", "", "ops", "body", "__class__"])] = 1
        return self.case("unknown_field", h, arrays, BAD)

    def _k_body_not_map(self) -> Case:
        h, _, _ = self.request()
        h["body"] = self.rng.choice([[1, 2], "body", 3, 2.5, b"\x00", [{"a": 1}], True])
        return self.case("body_not_map", h, [], BAD)

    def _k_nonsense_values(self) -> Case:
        h, arrays, _ = self.request()
        return self.case("nonsense_values", h, arrays, HANDLED)

    def _k_builtin_junk(self) -> Case:
        op = self.rng.choice(["ping", "info"])
        h = {"op": op, "id": self.rid(), "body": self.junk(), "deadline": DEADLINE_S}
        return self.case("builtin_junk", h, [], frozenset({"ok"}))

    def _k_no_delimiter(self) -> Case:
        c = self._k_wrong_field_type()
        c.kind, c.delimiter = "no_delimiter", False
        return c

    def _k_byte_flips(self) -> Case:
        r = self.rng
        h, arrays, _ = self.request()
        h.pop("id")  # a flip must not be able to fake another request's id
        f = self.build(h, arrays)
        b = bytearray(f[0])
        for _ in range(r.randint(1, 6)):
            i = r.randrange(len(b))
            b[i] = r.randrange(256)
        return Case("byte_flips", [bytes(b), *f[1:]], None, ANY_ERROR | {"ok"})

    def cases(self, n: int) -> list[Case]:
        """n cases, categories in turn (so every category gets ~n/len(KINDS))."""
        out = []
        for i in range(n):
            name, fn = self.kinds[i % len(self.kinds)]
            out.append(fn())
        self.rng.shuffle(out)
        return out


# Op-layer categories: the header decodes, so the reply must carry the request's id.
OP_LAYER = frozenset({"oversized_string", "unknown_op", "op_not_string", "bad_deadline",
                      "wrong_field_type", "missing_field", "unknown_field", "body_not_map",
                      "nonsense_values", "builtin_junk", "no_delimiter"})  # fmt: skip

KINDS = ["random_bytes", "magic_then_garbage", "truncated_prefix", "truncated_header",
         "lying_header_length", "wrong_version", "garbage_msgpack", "header_not_map",
         "deep_nesting", "huge_declared_array", "lying_array_table", "frame_mismatch",
         "unknown_ext", "oversized_string", "unknown_op", "op_not_string", "bad_id",
         "bad_deadline", "wrong_field_type", "missing_field", "unknown_field", "body_not_map",
         "nonsense_values", "builtin_junk", "no_delimiter", "byte_flips"]  # fmt: skip
