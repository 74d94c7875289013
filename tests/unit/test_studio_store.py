"""Studio state in real SQLite: holds and their expiry, tokens, prompts undo/clear, rounds, stats.

Usage: .venvs/test/bin/python -m pytest -q tests/unit/test_studio_store.py
"""

from __future__ import annotations

import sqlite3

import pytest

from services.studio.options import StudioOptions
from services.studio.store import AuthError, HoldError, Store


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def st(tmp_path):
    clock = Clock()
    s = Store(tmp_path / "s.sqlite", clock=clock)
    s.clock_obj = clock
    yield s
    s.close()


def test_wal_mode_and_tokens_stored_hashed(st, tmp_path):
    name, token = st.register("alice")
    assert st.who(token) == "alice" and st.check_login("alice", token)
    assert not st.check_login("alice", token + "x") and st.who("nope") is None
    with pytest.raises(AuthError, match="taken"):
        st.register("alice")
    raw = sqlite3.connect(tmp_path / "s.sqlite")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    dump = "\n".join(raw.iterdump())
    assert token not in dump  # only the sha256 is kept


def test_hold_is_exclusive_until_it_expires(st):
    st.take_hold(0, "alice", hold_s=60)
    with pytest.raises(HoldError, match="held by alice"):
        st.take_hold(0, "bob", hold_s=60)
    st.take_hold(1, "bob", hold_s=60)  # other episodes are free
    st.take_hold(0, "alice", hold_s=60)  # renewal by the holder
    st.clock_obj.t += 61
    assert st.holder(0) is None
    st.take_hold(0, "bob", hold_s=60)  # expired: bob may take it
    assert st.holder(0) == "bob"
    assert not st.release(0, "alice") and st.release(0, "bob")


def test_undo_and_clear_are_per_object_and_frame(st):
    for x in (1, 2, 3):
        st.add_prompt(0, 1, 5, "point", {"x": x, "y": 1, "label": 1}, "alice")
    st.add_prompt(0, 2, 5, "point", {"x": 9, "y": 9, "label": 0}, "alice")
    assert st.undo(0, 1, 5) == 1
    assert [p["data"]["x"] for p in st.prompts(0, 1)] == [1, 2]
    assert st.clear(0, 1, 5) == 2 and st.prompts(0, 1) == []
    assert len(st.prompts(0, 2)) == 1  # the other object kept its prompt
    assert st.undo(0, 1, 5) == 0
    assert st.episode(0)["status"] == "prompted"


def test_rounds_are_never_overwritten(st):
    r0 = st.save_round(0, {"a": 1}, "f0", "needs_round", "mask leaks", "alice")
    r1 = st.save_round(0, {"a": 2}, "f1", "approved", "ok", "bob")
    assert (r0, r1) == (0, 1)
    rounds = st.rounds(0)
    assert [r["entry"] for r in rounds] == [{"a": 1}, {"a": 2}]
    assert [r["verdict"] for r in rounds] == ["needs_round", "approved"]
    assert st.episode(0)["status"] == "approved" and st.episode(0)["note"] == "ok"
    assert st.latest_rounds()[0]["round"] == 1
    with pytest.raises(sqlite3.IntegrityError):  # the primary key forbids a second round 0
        st._db.execute("INSERT INTO rounds VALUES (0, 0, '{}', '', 'saved', '', 'x', 0)")


def test_stats_count_per_annotator_and_round(st):
    st.register("alice")
    st.register("bob")
    st.add_prompt(0, 1, 0, "point", {"x": 1, "y": 1, "label": 1}, "alice")
    st.save_round(0, {}, "f", "needs_round", "", "alice")
    st.save_round(0, {}, "f", "approved", "", "bob")
    st.save_round(1, {}, "f", "hard", "", "bob")
    st.event("alice", 0, "propagate", {})
    s = st.stats()
    assert s["per_annotator"]["alice"]["prompts"] == 1
    assert s["per_annotator"]["alice"]["propagations"] == 1
    assert s["per_annotator"]["bob"]["approved"] == 1 and s["per_annotator"]["bob"]["hard"] == 1
    assert s["per_round"][0] == {"needs_round": 1, "hard": 1} and s["per_round"][1] == {
        "approved": 1
    }
    assert s["status"] == {"approved": 1, "hard": 1}


def test_objects_get_unique_ids(st):
    st.ensure_objects(0, [{"obj_id": 1, "name": "target", "role": "target", "colour": "#fff"}])
    a = st.add_object(0, "cup_lid", "#000")
    b = st.add_object(0, "spoon", "#000")
    assert (a["obj_id"], b["obj_id"]) == (2, 3)
    with pytest.raises(ValueError, match="already has an object named"):
        st.add_object(0, "spoon", "#000")


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"buffer": "b", "pipeline": "p"}, "'output': required"),
        ({"buffer": "b", "pipeline": "p", "output": "o", "colour": 1}, "unknown"),
        ({"buffer": "b", "pipeline": "p", "output": "o", "http": "8555"}, "HOST:PORT"),
        ({"buffer": "b", "pipeline": "p", "output": "o", "hold_s": 0}, "hold_s"),
        ({"buffer": "b", "pipeline": "p", "output": "o", "max_body_bytes": "1"}, "max_body_bytes"),
    ],
)
def test_bad_options_are_named(opts, match):
    with pytest.raises(ValueError, match=match):
        StudioOptions.from_options(opts)


def test_loopback_detection():
    base = {"buffer": "b", "pipeline": "p", "output": "/x/out"}
    assert StudioOptions.from_options({**base, "http": "127.0.0.1:0"}).loopback()
    assert StudioOptions.from_options({**base, "http": "localhost:80"}).loopback()
    assert not StudioOptions.from_options({**base, "http": "0.0.0.0:8555"}).loopback()
    assert str(StudioOptions.from_options(base).state_dir) == "/x/out.studio"
