"""Request decode cost: today's protocol.schema.parse against msgspec, same run, same bodies.

Usage:
    python -m bench.bench_decode [--seconds 1]      (also run by `make bench-protocol`)

Three typical requests: sam `add_prompt` with points, reader `frames`, exporter `put_masks`
(the header of a masks chunk; the array travels out of band). For each, per call, median of
interleaved rounds (the machine is shared):
- dict:  schema.parse(Req, body) vs msgspec.convert(body, Struct) from the already-unpacked
  body (what the server holds after wire.decode);
- bytes: wire.decode(frames) + schema.parse vs msgspec.msgpack.decode(header, type=Envelope)
  (+ np.frombuffer of the out-of-band array, which wire.decode also does, with its checks).
The Structs mirror services/*/api.py with forbid_unknown_fields=True; msgspec is a bench-only
dependency (tests/requirements.txt). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from protocol.errors import BadRequest
from protocol.schema import parse
from protocol.wire import EXT_ARRAY, PREFIX_SIZE, decode, encode
from services.exporter.api import PutMasksReq
from services.reader.api import FramesReq
from services.sam.api import AddPromptReq


class MsAddPrompt(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    session: str
    frame: int
    obj_id: int
    points: list[list[float]] | None = None
    labels: list[int] | None = None
    rel: bool = False
    box: list[float] | None = None
    mask: Any = None  # an out-of-band array ref (checked after, as schema does for arrays)
    text: str | None = None


class MsFrames(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    dataset: str
    episode: int
    key: str
    start: int = 0
    stop: int | None = None
    stride: int = 1
    max_bytes: int | None = None


class MsPutMasks(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    export: str
    episode: int
    start: int
    obj_ids: list[int]
    masks: Any  # ext ref -> the array frame
    width: int


def _envelope(body: type) -> type:
    return msgspec.defstruct(
        f"Env{body.__name__}",
        [("op", str), ("id", int), ("body", body), ("deadline", float | None, None),
         ("arrays", list[list[Any]], [])],
        forbid_unknown_fields=True,
    )  # fmt: skip


def _ext_hook(code: int, data: memoryview) -> int:
    if code != EXT_ARRAY or len(data) != 4:
        raise ValueError(f"unknown msgpack extension type {code}")
    return int.from_bytes(data, "big")


MASKS = np.zeros((2, 30, 480, 80), np.uint8)  # 2 objects x 30 frames of 480x640, bit-packed
CASES = {
    "sam add_prompt (3 points)": (
        AddPromptReq, MsAddPrompt, "add_prompt",
        {"session": "orc-a1b2c3-e12-a1", "frame": 17, "obj_id": 2,
         "points": [[120.5, 88.0], [300.0, 201.25], [310.0, 215.5]], "labels": [1, 1, 0]},
    ),
    "reader frames": (
        FramesReq, MsFrames, "frames",
        {"dataset": "/data/umi/cup_in_the_wild.zarr.zip", "episode": 41, "key": "camera0_rgb",
         "start": 64, "stop": 128, "stride": 1},
    ),
    "exporter put_masks header": (
        PutMasksReq, MsPutMasks, "put_masks",
        {"export": "exp-9f3e1c", "episode": 41, "start": 60, "obj_ids": [1, 2], "masks": MASKS,
         "width": 640},
    ),
}  # fmt: skip


def _resolve(env: Any, frames: list) -> Any:
    """msgspec's side of wire.decode's array step: the ext ref -> np.frombuffer of its frame."""
    b = env.body
    if isinstance(getattr(b, "masks", None), int):
        dtype, shape, _nbytes, idx = env.arrays[b.masks][:4]
        arr = np.frombuffer(frames[idx], dtype=dtype).reshape(shape)
        return msgspec.structs.replace(b, masks=arr)
    return b


def _timed(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def bench_case(ours: type, theirs: type, op: str, body: dict, seconds: float) -> dict:
    frames = [bytes(f) if not isinstance(f, np.ndarray) else f
              for f in encode({"op": op, "id": 7, "deadline": 30.0, "body": body})]  # fmt: skip
    env_t = _envelope(theirs)
    dec = msgspec.msgpack.Decoder(env_t, ext_hook=_ext_hook)
    head = memoryview(frames[0])[PREFIX_SIZE:]
    payload = frames[1:]
    unpacked = decode(frames)["body"]
    # every path gives the same request, and each refuses the same typo
    a = parse(ours, unpacked)
    for b in (msgspec.convert(unpacked, theirs), _resolve(dec.decode(head), [None, *payload])):
        for k in ours.__dataclass_fields__:
            assert np.array_equal(getattr(a, k), getattr(b, k)), f"{op}.{k} differs"
    bad = {**unpacked, "strat": 1}
    for fn in (lambda: parse(ours, bad), lambda: msgspec.convert(bad, theirs)):
        try:
            fn()
        except (msgspec.ValidationError, BadRequest):
            continue
        raise AssertionError(f"{op}: an unknown field was accepted")
    contenders = {
        "schema_parse_dict": lambda: parse(ours, unpacked),
        "msgspec_convert_dict": lambda: msgspec.convert(unpacked, theirs),
        "wire_decode_parse_bytes": lambda: parse(ours, decode(frames)["body"]),
        "msgspec_decode_bytes": lambda: _resolve(dec.decode(head), [None, *payload]),
    }
    n = max(50, int(2000 / max(_timed(contenders["wire_decode_parse_bytes"], 200), 0.5)))
    samples: dict[str, list[float]] = {k: [] for k in contenders}
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(samples["schema_parse_dict"]) < 5:
        for k, fn in contenders.items():  # interleaved: load drift hits every contender
            samples[k].append(_timed(fn, n))
    us = {k: round(statistics.median(v), 2) for k, v in samples.items()}
    us["ratio_dict"] = round(us["schema_parse_dict"] / us["msgspec_convert_dict"], 1)
    us["ratio_bytes"] = round(us["wire_decode_parse_bytes"] / us["msgspec_decode_bytes"], 1)
    return us


def run(seconds: float = 1.0) -> dict:
    return {name: bench_case(*case, seconds) for name, case in CASES.items()}


def print_table(res: dict) -> None:
    print(f"{'request':28s} {'parse':>8s} {'convert':>8s} {'ratio':>6s} "
          f"{'wire+parse':>11s} {'ms.decode':>10s} {'ratio':>6s}   (us per call, medians)")  # fmt: skip
    for name, r in res.items():
        print(f"{name:28s} {r['schema_parse_dict']:8.2f} {r['msgspec_convert_dict']:8.2f} "
              f"{r['ratio_dict']:5.1f}x {r['wire_decode_parse_bytes']:11.2f} "
              f"{r['msgspec_decode_bytes']:10.2f} {r['ratio_bytes']:5.1f}x")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per request kind")
    args = ap.parse_args()
    res = run(args.seconds)
    print_table(res)
    print(json.dumps({"decode_us": res, "msgspec": msgspec.__version__}))


if __name__ == "__main__":
    main()
