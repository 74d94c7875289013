"""Typed request bodies: parse() validates once and names the field and the fix.

Usage: python3 -m pytest tests/unit/test_schema.py -q
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import pytest

from protocol.errors import BadRequest
from protocol.schema import describe, message, parse


@message
class Point:
    x: float
    y: float


@message
class Req:
    dataset: str
    episode: int
    start: int = 0
    stop: int | None = None
    scale: float = 1.0
    flag: bool = False
    direction: Literal["forward", "backward", "both"] = "both"
    keys: list[str] | None = None
    boxes: list[list[float]] | None = None
    roles: dict[str, int] | None = None
    frames: np.ndarray | None = None
    raw: bytes | None = None
    anchor: Point | None = None
    points: list[Point] | None = None
    meta: dict | None = None


def test_valid_body_builds_a_frozen_instance_with_defaults():
    arr = np.zeros((2, 4, 4, 3), np.uint8)
    r = parse(Req, {"dataset": "d", "episode": 3, "scale": 2, "frames": arr, "keys": ["a"],
                    "boxes": [[0, 1.5, 2, 3]], "roles": {"target": 1}, "raw": b"\x00",
                    "anchor": {"x": 1, "y": 2.5}, "points": [{"x": 0, "y": 0}],
                    "meta": {"any": [1, "x"]}})  # fmt: skip
    assert (r.dataset, r.episode, r.start, r.stop, r.direction) == ("d", 3, 0, None, "both")
    assert r.scale == 2.0 and type(r.scale) is float  # int accepted for float
    assert r.boxes == [[0.0, 1.5, 2.0, 3.0]] and all(type(v) is float for v in r.boxes[0])
    assert r.frames is arr
    assert r.anchor == Point(1.0, 2.5) and r.points == [Point(0.0, 0.0)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.episode = 4


def test_none_body_means_empty():
    @message
    class Empty:
        n: int = 1

    assert parse(Empty, None) == Empty()


@pytest.mark.parametrize(
    "body, fragments",
    [
        ({"episode": 1}, ["dataset: required field is missing"]),
        (
            {"dataset": "d", "episode": 1, "strat": 0},
            ["strat: unknown field", "valid fields", "start"],
        ),
        ({"dataset": 5, "episode": 1}, ["dataset: expected str, got int"]),
        ({"dataset": "d", "episode": 1.0}, ["episode: expected int, got float"]),
        ({"dataset": "d", "episode": True}, ["episode: expected int, got bool"]),
        ({"dataset": "d", "episode": 1, "flag": 1}, ["flag: expected bool, got int"]),
        ({"dataset": "d", "episode": 1, "scale": "2"}, ["scale: expected float, got str"]),
        ({"dataset": "d", "episode": 1, "stop": "x"}, ["stop: expected int, got str"]),
        (
            {"dataset": "d", "episode": 1, "direction": "up"},
            ["direction: 'up' is not one of", "forward"],
        ),
        ({"dataset": "d", "episode": 1, "keys": "a"}, ["keys: expected a list, got str"]),
        ({"dataset": "d", "episode": 1, "keys": ["a", 2]}, ["keys[1]: expected str, got int"]),
        ({"dataset": "d", "episode": 1, "boxes": [[0, 1, "2"]]}, ["boxes[0][2]: expected float"]),
        ({"dataset": "d", "episode": 1, "roles": {"t": "x"}}, ["roles['t']: expected int"]),
        ({"dataset": "d", "episode": 1, "frames": [1, 2]}, ["frames: expected array, got list"]),
        (
            {"dataset": "d", "episode": 1, "anchor": {"x": 1}},
            ["anchor.y: required field is missing"],
        ),
        (
            {"dataset": "d", "episode": 1, "anchor": {"x": 1, "y": 2, "z": 3}},
            ["anchor.z: unknown field"],
        ),
        (
            {"dataset": "d", "episode": 1, "points": [{"x": 1, "y": "a"}]},
            ["points[0].y: expected float"],
        ),
        ({"dataset": "d", "episode": 1, "raw": "text"}, ["raw: expected bytes"]),
        ({"dataset": "d", "episode": 1, "meta": [1]}, ["meta: expected dict"]),
        ([1, 2], ["body: must be a map of fields, got list"]),
    ],
    ids=[
        "missing",
        "unknown",
        "str",
        "int-float",
        "int-bool",
        "bool-int",
        "float-str",
        "optional",
        "literal",
        "list",
        "list-item",
        "nested-list",
        "dict-value",
        "array",
        "nested-missing",
        "nested-unknown",
        "list-of-messages",
        "bytes",
        "dict",
        "not-a-map",
    ],  # fmt: skip
)
def test_errors_name_the_field(body, fragments):
    with pytest.raises(BadRequest) as e:
        parse(Req, body)
    assert e.value.code == "bad_request"
    for f in fragments:
        assert f in e.value.message, e.value.message


def test_literal_refuses_bools_that_equal_choices():
    @message
    class L:
        n: Literal[1, 2] = 1

    with pytest.raises(BadRequest):
        parse(L, {"n": True})
    assert parse(L, {"n": 2}).n == 2


def test_unsupported_annotation_is_a_programming_error():
    @message
    class Bad:
        s: set

    with pytest.raises(TypeError, match="not supported by protocol.schema"):
        parse(Bad, {"s": [1]})


def test_describe_lists_fields_for_info():
    d = describe(Req)
    assert d["dataset"] == "str" and d["episode"] == "int" and d["frames"] == "array | None"
    assert d["direction"] == "one of ['forward', 'backward', 'both']"
    assert d["points"] == "list[Point] | None" and d["roles"] == "dict[str, int] | None"


@pytest.mark.parametrize("bad", [np.zeros(0, np.uint8), np.zeros(3), ["forward"], {"a": 1}])
def test_literal_refuses_arrays_and_containers_as_bad_request(bad):
    # found by the fuzzer: `array in choices` raised ValueError, answered as `internal`
    with pytest.raises(BadRequest, match="direction: .* is not one of"):
        parse(Req, {"dataset": "d", "episode": 0, "direction": bad})
