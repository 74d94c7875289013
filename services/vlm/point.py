"""The `point` task: one point on the object a description names, or NOT_VISIBLE.

Same conventions as `bbox`: our prompt ends in a fixed form (a ```json block with
`point_2d: [x, y]`, or the word NOT_VISIBLE), the answer is parsed strictly (an answer with
both a point and NOT_VISIBLE, none of them, or a malformed point is an error carrying the raw
text, never a guess), and the point is mapped from the model's coordinate convention
(backend option coords) to the original image's pixels like a box, with the same 10%
overshoot tolerance, then clamped to [0, W] x [0, H].

Usage:
    prompt = point_prompt("the green cup", point_hint(conv, h, w))
    ans = parse_point_answer(model_text)               # PointAnswer(point | None, label)
    xy = point_to_original(conv, ans.point, h, w, raw=model_text)   # [x, y] original pixels
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .coords import CONVENTIONS, OVERSHOOT_TOLERANCE, BoxConvention
from .errors import AnswerParseError, VlmError, excerpt
from .parsing import _single_object, extract_json

NOT_VISIBLE = "NOT_VISIBLE"
WHAT = "a point or NOT_VISIBLE"
# Qwen-style bare pair "(x, y)" once special tokens are stripped (accepted only when alone)
_PAIR_RE = re.compile(r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)")


class InvalidPointError(VlmError):
    """The model's point lies outside the coordinate range. Carries the raw answer."""

    def __init__(self, reason: str, raw: str = ""):
        tail = f" raw answer: {excerpt(raw)!r}" if raw else ""
        super().__init__(f"invalid point: {reason}.{tail}")
        self.reason = reason
        self.raw = raw


@dataclass(frozen=True)
class PointAnswer:
    point: list[float] | None  # as the model gave it (its convention); None = NOT_VISIBLE
    label: str | None


def point_hint(conv: BoxConvention, height: int, width: int) -> str:
    """The coordinate sentence of the bbox prompt, for point_2d (one source for both)."""
    return conv.hint(height, width).replace("bbox_2d", "point_2d")


def point_prompt(description: str, hint: str) -> str:
    """Ask for one point on the object best matching `description`, or NOT_VISIBLE."""
    return f"""Is there an object in the image that matches this description: "{description}"?

If there is, reply with a single JSON object in a ```json code block, like this:
```json
{{"point_2d": [x, y], "label": "green cup"}}
```
{hint} The point must lie on the object, near the middle of its visible part.
If no such object is visible in the image, reply with exactly the word NOT_VISIBLE and nothing else."""


def _point_of(obj: dict, raw: str, truncated: bool) -> list[float]:
    key = next((k for k in ("point_2d", "point") if k in obj), None)
    if key is None:
        raise AnswerParseError(WHAT, f"the object has no point_2d field (fields: {sorted(obj)})",
                               raw, truncated=truncated)  # fmt: skip
    p = obj[key]
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], list):
        p = p[0]  # [[x, y]]
    if not (isinstance(p, list) and len(p) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in p)
            and all(math.isfinite(v) for v in p)):  # fmt: skip
        raise AnswerParseError(WHAT, f"{key} must be 2 numbers [x, y], got {p!r}", raw,
                               truncated=truncated)  # fmt: skip
    return [float(v) for v in p]


def parse_point_answer(text: str, *, truncated: bool = False) -> PointAnswer:
    """`{"point_2d": [x, y], "label": ...}` (or a 1-item list), or NOT_VISIBLE."""
    says_not = NOT_VISIBLE in text  # the exact token, as the seed's evaluator reads it
    try:
        value = extract_json(text, WHAT, truncated=truncated)
    except AnswerParseError:
        if says_not:
            return PointAnswer(None, None)
        pairs = _PAIR_RE.findall(text)
        if len(pairs) != 1:
            raise AnswerParseError(WHAT, "neither NOT_VISIBLE nor a point_2d JSON object (nor "
                                   "one bare (x, y) pair)", text, truncated=truncated) from None  # fmt: skip
        return PointAnswer([float(v) for v in pairs[0]], None)
    obj = _single_object(value, WHAT, text, truncated)
    point = _point_of(obj, text, truncated)
    if says_not:
        raise AnswerParseError(WHAT, "the answer gives both a point and NOT_VISIBLE (ambiguous)",
                               text, truncated=truncated)  # fmt: skip
    label = obj.get("label")
    if label is not None and not isinstance(label, str):
        raise AnswerParseError(WHAT, f"label must be a string, got {type(label).__name__}", text,
                               truncated=truncated)  # fmt: skip
    return PointAnswer(point, label)


def point_to_original(conv: BoxConvention, point: list[float], height: int, width: int,
                      raw: str = "") -> list[float]:  # fmt: skip
    """Map a model point [x, y] to the original image's pixels (clamped to [0, W] x [0, H])."""
    x, y = point
    xmax, ymax = conv.range(height, width)
    tol_x, tol_y = xmax * OVERSHOOT_TOLERANCE, ymax * OVERSHOOT_TOLERANCE
    if not (-tol_x <= x <= xmax + tol_x and -tol_y <= y <= ymax + tol_y):
        raise InvalidPointError(
            f"{point!r} lies outside the coordinate range of coords={conv.coords} (x in "
            f"[0, {xmax:g}], y in [0, {ymax:g}]); if the model answers in another convention "
            f"set the backend option coords to one of {list(CONVENTIONS)}",
            raw,
        )
    sx, sy = width / xmax, height / ymax
    return [round(min(max(x * sx, 0.0), float(width)), 2),
            round(min(max(y * sy, 0.0), float(height)), 2)]  # fmt: skip
