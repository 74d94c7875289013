"""The prompts-file fields the studio writes (round, approved, annotator): parsed, checked, and
left out of the episode fingerprint.

Usage: .venvs/test/bin/python -m pytest -q tests/unit/test_studio_prompts.py
"""

from __future__ import annotations

import pytest

from protocol.prompts_file import PromptsFileError, episode_fingerprint, parse_prompts
from services.studio.review import _schema_has, fingerprint

ENTRY = {"objects": {"target": {"obj_id": 1, "prompts": [
    {"frame": 0, "points": [[420, 211]], "labels": [1], "box": [375, 172, 465, 251]}]}}}  # fmt: skip


def doc(**extra):
    return {"version": 1, "coords": "abs", "episodes": {0: {**ENTRY, **extra}}}


def test_round_fields_are_parsed():
    ep = parse_prompts(doc(round=2, approved=True, annotator="alice")).episode(0)
    assert (ep.round, ep.approved, ep.annotator) == (2, True, "alice")
    plain = parse_prompts(doc()).episode(0)
    assert (plain.round, plain.approved, plain.annotator) == (None, False, None)
    assert all(_schema_has(k) for k in ("round", "approved", "annotator"))


@pytest.mark.parametrize(
    "extra, words",
    [({"round": -1}, "episodes.0.round"), ({"approved": "yes"}, "episodes.0.approved"),
     ({"annotator": 7}, "episodes.0.annotator")],
)  # fmt: skip
def test_bad_round_fields_are_named(extra, words):
    with pytest.raises(PromptsFileError, match=words):
        parse_prompts(doc(**extra))


def test_bookkeeping_only_entry_is_empty():
    with pytest.raises(PromptsFileError, match="empty entry"):
        parse_prompts({"version": 1, "coords": "abs", "episodes": {0: {"round": 1}}})


def test_fingerprint_ignores_who_and_when():
    a = parse_prompts(doc(round=0, annotator="alice")).episode(0).fingerprint
    b = parse_prompts(doc(round=3, approved=True, annotator="bob")).episode(0).fingerprint
    assert a == b == fingerprint({**ENTRY, "round": 5}) == episode_fingerprint(ENTRY, "abs")
    moved = {"objects": {"target": {"obj_id": 1, "prompts": [{"frame": 0, "box": [1, 2, 30, 40]}]}}}
    assert fingerprint(moved) != a
