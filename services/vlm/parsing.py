"""Strict parsers for model answers: JSON (with the usual damage), booleans, prompt types, lists.

Usage:
    value = extract_json(text)             # first JSON value in ```json fences or in prose
    ans = parse_box_answer(text)           # BoxAnswer(bbox=[x0, y0, x1, y1], label, description)
    ok = parse_bool_answer(text)           # "... ANSWER: True" -> True
    kind = parse_type_answer(text)         # "ANSWER: Type II" -> "II"
    held = parse_held_answer(text)         # {"held": True, "label": ..., "description": ...}

Tolerated damage: prose around the JSON, ```json fences (also unclosed), trailing commas,
single-quoted strings, Python True/False/None, `#` and `//` comments (DexGraspVLA's own
template carries `# Keep this very brief`). Anything else raises AnswerParseError carrying
the raw text: never a guess.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import AnswerParseError

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n?(.*?)(?:```|\Z)", re.S)
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PY_WORDS = {"True": "true", "False": "false", "None": "null"}
_CLOSER = {"{": "}", "[": "]"}


class _Truncated(Exception):
    """Brackets opened but never closed (or closed by the wrong kind)."""


def _read_string(text: str, i: int, quote: str) -> tuple[int, str]:
    """Read a quoted string starting at text[i] == quote; return (index after it, JSON text)."""
    j = i + 1
    chars: list[str] = []
    while j < len(text):
        c = text[j]
        if c == "\\" and j + 1 < len(text):
            nxt = text[j + 1]
            # \' is not a JSON escape: keep the quote itself
            chars.append("'" if nxt == "'" else c + nxt)
            j += 2
            continue
        if c == quote:
            body = "".join(chars)
            if quote == "'":
                body = re.sub(r'(?<!\\)"', r"\"", body)
            return j + 1, '"' + body + '"'
        if c == "\n" and quote == "'":
            break  # a stray apostrophe, not a string
        chars.append(c)
        j += 1
    raise _Truncated("a string is not closed")


def _scan(text: str, start: int) -> tuple[int, str]:
    """Walk a JSON-ish value from text[start] (`{` or `[`) to its matching close.

    Returns (end index, normalised JSON text). Raises _Truncated when it never closes.
    """
    out: list[str] = []
    stack: list[str] = []
    i = start
    prev = "{"  # last significant character emitted, to tell a string from an apostrophe
    while i < len(text):
        c = text[i]
        if c == '"' or (c == "'" and prev in ("{", "[", ",", ":")):
            i, s = _read_string(text, i, c)
            out.append(s)
            prev = '"'
            continue
        if c == "#" or text.startswith("//", i):
            nl = text.find("\n", i)
            i = len(text) if nl < 0 else nl
            continue
        if c in _CLOSER:
            stack.append(_CLOSER[c])
            out.append(c)
            prev = c
            i += 1
            continue
        if c in "}]":
            if not stack or stack[-1] != c:
                raise _Truncated(f"unexpected {c!r}")
            stack.pop()
            while out and out[-1].isspace():
                out.pop()
            if out and out[-1] == ",":
                out.pop()  # trailing comma
            out.append(c)
            prev = c
            i += 1
            if not stack:
                return i, "".join(out)
            continue
        m = _WORD_RE.match(text, i)
        if m:
            w = m.group(0)
            out.append(_PY_WORDS.get(w, w))
            prev = "w"
            i = m.end()
            continue
        out.append(c)
        if not c.isspace():
            prev = c
        i += 1
    raise _Truncated("brackets are not closed")


def _regions(text: str) -> list[str]:
    """Where to look for JSON: ```json blocks first, then other fenced blocks, then the text."""
    fences = [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(text)]
    ordered = [body for lang, body in fences if lang == "json"]
    ordered += [body for lang, body in fences if lang != "json"]
    return ordered + [text]


def extract_json(text: str, what: str = "answer", *, truncated: bool = False) -> Any:
    """The first JSON object or array in `text`; AnswerParseError if there is none."""
    for region in _regions(text):
        pos = 0
        while True:
            starts = [k for k in (region.find("{", pos), region.find("[", pos)) if k >= 0]
            if not starts:
                break
            i = min(starts)
            try:
                end, norm = _scan(region, i)
            except _Truncated as e:
                raise AnswerParseError(
                    what, f"the JSON is incomplete ({e})", text, truncated=truncated
                ) from None
            for candidate in (region[i:end], norm):
                try:
                    return json.loads(candidate, strict=False)  # raw newlines in strings
                except ValueError:
                    pass
            pos = end  # a balanced span that is not JSON (prose in brackets): skip all of it
    raise AnswerParseError(what, "no JSON object or array found", text, truncated=truncated)


def _single_object(value: Any, what: str, raw: str, truncated: bool) -> dict:
    """A JSON object, or a list holding exactly one (Qwen often wraps a single answer)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise AnswerParseError(
                what,
                f"expected exactly one object, got a list of {len(value)}",
                raw,
                truncated=truncated,
            )
        value = value[0]
    if not isinstance(value, dict):
        raise AnswerParseError(
            what, f"expected a JSON object, got {type(value).__name__}", raw, truncated=truncated
        )
    return value


@dataclass(frozen=True)
class BoxAnswer:
    bbox: list[float]  # as the model gave it, in the model's coordinate convention
    label: str | None
    description: str | None


# Qwen2-VL's native grounding text once special tokens are stripped: (x0,y0),(x1,y1)
_PAIR_BOX_RE = re.compile(
    r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)\s*,?\s*"
    r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)"
)


def parse_box_answer(text: str, *, truncated: bool = False) -> BoxAnswer:
    """`{"bbox_2d": [x0, y0, x1, y1], "label": ..., "description": ...}` (or a 1-item list)."""
    what = "a bounding box"
    try:
        value = extract_json(text, what, truncated=truncated)
    except AnswerParseError:
        pairs = _PAIR_BOX_RE.findall(text)
        if len(pairs) != 1:
            raise
        return BoxAnswer([float(v) for v in pairs[0]], None, None)
    obj = _single_object(value, what, text, truncated)
    key = next((k for k in ("bbox_2d", "bbox") if k in obj), None)
    if key is None:
        raise AnswerParseError(
            what,
            f"the object has no bbox_2d field (fields: {sorted(obj)})",
            text,
            truncated=truncated,
        )
    box = obj[key]
    if not (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
        and all(math.isfinite(v) for v in box)
    ):
        raise AnswerParseError(
            what,
            f"{key} must be 4 numbers [x0, y0, x1, y1], got {box!r}",
            text,
            truncated=truncated,
        )
    label, desc = obj.get("label"), obj.get("description")
    for name, v in (("label", label), ("description", desc)):
        if v is not None and not isinstance(v, str):
            raise AnswerParseError(
                what, f"{name} must be a string, got {type(v).__name__}", text, truncated=truncated
            )
    return BoxAnswer([float(v) for v in box], label, desc)


# yes/no count only as a whole reply ("No." / "Yes, ..."), never as in "No objects are left"
_YES_NO = r"(?:true|false)\b|(?:yes|no)(?=\s*[,.!:;*]|\s*$)"
_MARKER_BOOL_RE = re.compile(rf"\banswer\b\W{{0,6}}({_YES_NO})", re.I | re.M)
_BOOL_WORD_RE = re.compile(r"\b(true|false)\b", re.I)
_LEAD_RE = re.compile(rf"^[\s*_#>`\"'-]*({_YES_NO})", re.I | re.M)
_YES = {"true": True, "yes": True, "false": False, "no": False}


def parse_bool_answer(text: str, what: str = "a True/False answer") -> bool:
    """A boolean from `ANSWER: True`, a leading `True: ...`, a last line `False`, or a lone word.

    When none of those decides and both True and False occur, the answer is ambiguous: error.
    """
    marks = _MARKER_BOOL_RE.findall(text)
    if marks:
        return _YES[marks[-1].strip().lower()]
    m = _LEAD_RE.match(text)
    if m:
        return _YES[m.group(1).strip().lower()]
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if lines:
        last = re.sub(r"[^A-Za-z]", "", lines[-1]).lower()
        if last in _YES:
            return _YES[last]
    words = {w.lower() for w in _BOOL_WORD_RE.findall(text)}
    if len(words) == 1:
        return _YES[words.pop()]
    reason = "both True and False occur with no final ANSWER line" if words else "no True/False"
    raise AnswerParseError(what, reason, text)


_TYPE_RE = re.compile(r"\btype[\s_-]*(ii|i|2|1)\b", re.I)
_MARKER_TYPE_RE = re.compile(r"\banswer\b\W{0,6}type[\s_-]*(ii|i|2|1)\b", re.I)
_TYPE_NAME = {"i": "I", "1": "I", "ii": "II", "2": "II"}


def parse_type_answer(text: str) -> str:
    """The prompt type: "I" (names specific objects) or "II" (abstract, e.g. clear the table).

    Reads `ANSWER: Type X`, else a single kind of `Type X` mention, else DexGraspVLA's
    own True/False form (True = Type I).
    """
    what = "a prompt type (Type I / Type II)"
    marks = _MARKER_TYPE_RE.findall(text)
    if marks:
        return _TYPE_NAME[marks[-1].lower()]
    kinds = {_TYPE_NAME[k.lower()] for k in _TYPE_RE.findall(text)}
    if len(kinds) == 1:
        return kinds.pop()
    if kinds:
        raise AnswerParseError(what, "both Type I and Type II occur with no ANSWER line", text)
    try:
        return "I" if parse_bool_answer(text, what) else "II"
    except AnswerParseError:
        raise AnswerParseError(what, "no Type I / Type II (or True/False) found", text) from None


def parse_list_answer(text: str, *, truncated: bool = False) -> list[str]:
    """A JSON list of non-empty strings (may be empty: nothing matches)."""
    what = "a list of objects"
    value = extract_json(text, what, truncated=truncated)
    if not isinstance(value, list):
        raise AnswerParseError(
            what, f"expected a JSON list, got {type(value).__name__}", text, truncated=truncated
        )
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            raise AnswerParseError(
                what, f"item {i} must be a non-empty string, got {v!r}", text, truncated=truncated
            )
    return [v.strip() for v in value]


def parse_instruction_answer(text: str, *, truncated: bool = False) -> dict:
    """`{"analysis": {...}, "target": "the blue cube on the far right"}`; target required."""
    what = "an instruction with a target"
    obj = _single_object(extract_json(text, what, truncated=truncated), what, text, truncated)
    target = obj.get("target")
    if not isinstance(target, str) or not target.strip():
        raise AnswerParseError(
            what, f"target must be a non-empty string, got {target!r}", text, truncated=truncated
        )
    out = dict(obj)
    out["target"] = target.strip()
    return out


# A reply without JSON counts only when it opens by saying nothing is held ("No object.",
# "Nothing is held", "The gripper is empty", "None"); any other prose is an error.
_NOTHING_RE = re.compile(
    r"^[\s*_#>`\"'-]*(?:no\s+object|nothing\b|none\b|no\b(?=\s*[,.!:;]|\s*$)|"
    r"(?:the\s+)?(?:gripper|hand|robot)\s+(?:is\s+empty|holds\s+nothing|is\s+not\s+holding|"
    r"isn't\s+holding|does\s+not\s+hold|doesn't\s+hold))",
    re.I,
)


def parse_held_answer(text: str, *, truncated: bool = False) -> dict:
    """`{"held": true, "label": ..., "description": ...}` or `{"held": false}` -> the same dict
    (description falls back to the label). A reply with no JSON that opens by saying nothing
    is held is `{"held": False, ...}`; anything else that does not say clearly is an error."""
    what = "the held object (held, label, description)"
    try:
        value = extract_json(text, what, truncated=truncated)
    except AnswerParseError:
        if _NOTHING_RE.match(text.strip()):
            return {"held": False, "label": None, "description": None}
        raise
    obj = _single_object(value, what, text, truncated)
    held = obj.get("held")
    if not isinstance(held, bool):
        raise AnswerParseError(
            what, f"held must be true or false, got {held!r}", text, truncated=truncated
        )
    label, desc = obj.get("label"), obj.get("description")
    for name, v in (("label", label), ("description", desc)):
        if v is not None and not isinstance(v, str):
            raise AnswerParseError(
                what, f"{name} must be a string, got {type(v).__name__}", text, truncated=truncated
            )
    label = (label or "").strip() or None
    desc = (desc or "").strip() or None
    if held and not (label or desc):
        raise AnswerParseError(
            what, "held is true but no label or description names the object", text,
            truncated=truncated,
        )  # fmt: skip
    if not held and (label or desc):
        raise AnswerParseError(
            what, f"held is false but the answer names an object ({label or desc!r})", text,
            truncated=truncated,
        )  # fmt: skip
    return {"held": held, "label": label, "description": desc or label}
