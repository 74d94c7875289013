"""Prompts file (configs/prompts/*.yaml or .json): the one owner of its schema; load and validate.

Read by the orchestrator and the vlm prompts backend, written by the studio: all import this
module (numpy-free, yaml only), none keeps its own copy of the schema.

Usage:
    pf = load_prompts_file("configs/prompts/demo.yaml")
    ep = pf.episode(0)                                  # PromptsFileError if absent
    box = pf.box_pixels(ep.target.box, height=480, width=640)   # rel -> pixels

Schema (version 1; the user documentation with a copyable example is docs/prompts-file.md):
    version: 1
    coords: abs | rel            # abs: pixels of the original image; rel: fractions in [0, 1]
    buffer:                      # the replay buffer these prompts were written for
      fingerprint: 3f2a...       # buffer_fingerprint(): episode_ends + camera key + frame size
      camera_key: head_cam_img   # data/<key> the coordinates refer to
      path: data/demo/demo.zarr  # optional, informational (where the buffer was)
      episodes: 3                # optional, informational
      size: [640, 480]           # optional, informational: [width, height]
    episodes:
      <episode int>:
        target: {frame: 0, box: [x0, y0, x1, y1], description: "the red mug"}
        objects:                 # roles: target, arm_left, arm_right, gripper_left, gripper_right
          arm_left: {obj_id: 1, prompts: [{frame: 0, points: [[x, y]], labels: [1]}, {frame: 9, box: [...]}]}
        refinements: [{obj_id: 1, frame: 30, points: [[x, y]], labels: [1]}]
        plan: {classify_user_prompt: "I", check_grasp_success: true, ...}   # vlm prompts backend
              # identify_held_object: "the red mug" | {held, label, description} | false
        frame: grasp             # rgbm (vlm/text sources): this episode's prompt frame, wins
                                 # over prompt.frame: an index (-1 = last), last or grasp
Every error names the file, the episode and the field. Unknown keys are errors.
The orchestrator refuses a prompts file without `buffer`, or whose fingerprint is not the
input's (`python -m orchestrator fingerprint --input BUFFER` prints the entry to add).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from protocol.errors import BadRequest
from protocol.schema import check_value
from protocol.vocab import COORDS, ROLES

PLAN_TASKS = (
    "classify_user_prompt",
    "decompose_user_prompt",
    "generate_instruction",
    "mark_bounding_box",
    "check_grasp_success",
    "check_instruction_complete",
    "check_user_prompt_complete",
    "identify_held_object",
)
_EPISODE_KEYS = ("target", "objects", "refinements", "plan", "round", "approved", "annotator",
                 "frame")  # fmt: skip
_CONTENT_KEYS = ("target", "objects", "refinements", "plan", "frame")  # an entry has one of
_BUFFER_KEYS = ("fingerprint", "camera_key", "path", "episodes", "size")
# per-episode keys that record who/when, not what is prompted: left out of episode_fingerprint
BOOKKEEPING_KEYS = frozenset({"round", "approved", "annotator", "note", "status"})


def buffer_fingerprint(
    episode_ends: Sequence[int], camera_key: str, height: int, width: int
) -> str:
    """sha256 (hex) of what a prompts file's coordinates depend on: the episode boundaries,
    the camera key and its frame size. Computed the same way by the orchestrator (from the
    reader's `open` reply), the studio and tools/demo_data.py."""
    doc = {"episode_ends": [int(e) for e in episode_ends], "camera_key": str(camera_key),
           "height": int(height), "width": int(width)}  # fmt: skip
    return hashlib.sha256(_canonical(doc).encode()).hexdigest()


def episode_fingerprint(entry: Any, coords: str) -> str:
    """sha256 (hex) of one episode's prompts: the canonical JSON (sorted keys, no spaces) of
    {"coords": coords, "entry": entry} with the bookkeeping keys (round, approved, annotator,
    note, status) left out. The orchestrator stores it in the exporter's done record and
    re-runs an episode whose fingerprint changed."""
    if isinstance(entry, dict):
        entry = {k: v for k, v in entry.items() if k not in BOOKKEEPING_KEYS}
    return hashlib.sha256(_canonical({"coords": coords, "entry": entry}).encode()).hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _plain(obj: Any) -> Any:
    """YAML/JSON data with int keys as strings and tuples as lists (JSON and YAML agree)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)  # 120.0 and 120 are the same coordinate
    return obj


class PromptsFileError(ValueError):
    """The prompts file is missing, unreadable or breaks the schema; the message says where."""


@dataclass(frozen=True)
class Target:
    frame: int
    box: tuple[float, float, float, float]
    description: str | None = None


@dataclass(frozen=True)
class Prompt:
    """One prompt at one frame: points (with labels) and/or a box, in the file's coords."""

    frame: int
    points: tuple[tuple[float, float], ...] | None = None
    labels: tuple[int, ...] | None = None
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class ObjectPrompts:
    role: str
    obj_id: int
    prompts: tuple[Prompt, ...]


@dataclass(frozen=True)
class Refinement:
    obj_id: int
    prompt: Prompt


@dataclass(frozen=True)
class EpisodePrompts:
    episode: int
    target: Target | None = None
    objects: dict[str, ObjectPrompts] = field(default_factory=dict)
    refinements: tuple[Refinement, ...] = ()
    plan: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None  # episode_fingerprint() of the entry (None: not from a file)
    round: int | None = None  # the studio's annotation round (0, 1, ...) these prompts come from
    approved: bool = False  # a reviewer approved this round's masks in the studio
    annotator: str | None = None  # who saved the round in the studio
    frame: int | str | None = None  # rgbm prompt frame override: index (-1 = last), last, grasp


@dataclass(frozen=True)
class BufferTie:
    """The `buffer` entry: which replay buffer (and camera) the prompts were written for."""

    fingerprint: str
    camera_key: str
    path: str | None = None
    episodes: int | None = None
    size: tuple[int, int] | None = None  # (width, height)

    def describe(self) -> str:
        parts = [f"camera data/{self.camera_key}"]
        if self.size:
            parts.append(f"{self.size[0]}x{self.size[1]}")
        if self.episodes is not None:
            parts.append(f"{self.episodes} episodes")
        if self.path:
            parts.append(f"at {self.path}")
        return f"fingerprint {self.fingerprint[:12]} ({', '.join(parts)})"


@dataclass(frozen=True)
class PromptsFile:
    version: int
    coords: str
    episodes: dict[int, EpisodePrompts]
    source: str = "<memory>"
    buffer: BufferTie | None = None  # None: the file does not say which buffer it is for

    def episode(self, episode: int) -> EpisodePrompts:
        """The episode's entry; PromptsFileError naming the episodes the file has."""
        ep = self.episodes.get(episode)
        if ep is None:
            have = sorted(self.episodes)
            shown = have if len(have) <= 20 else [*have[:20], "..."]
            raise PromptsFileError(
                f"{self.source}: episodes.{episode}: no entry for episode {episode}; "
                f"the file has episodes {shown}; add one"
            )
        return ep

    def box_pixels(self, box: tuple[float, ...], height: int, width: int) -> list[float]:
        """A box of this file in pixels of a height x width image (rel scaled, abs as is)."""
        if self.coords == "rel":
            return [box[0] * width, box[1] * height, box[2] * width, box[3] * height]
        return [float(v) for v in box]

    def points_pixels(
        self, points: tuple[tuple[float, float], ...], height: int, width: int
    ) -> list:
        """Points of this file in pixels of a height x width image."""
        if self.coords == "rel":
            return [[x * width, y * height] for x, y in points]
        return [[float(x), float(y)] for x, y in points]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise PromptsFileError(
                f"line {key_node.start_mark.line + 1}: duplicate key {key!r}; keep one entry"
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_prompts_file(path: str | Path) -> PromptsFile:
    """Read and validate a YAML or JSON prompts file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise PromptsFileError(f"{p}: cannot read the prompts file ({e.strerror or e})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # JSON is YAML too
    except PromptsFileError as e:
        raise PromptsFileError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        raise PromptsFileError(f"{p}: not valid YAML/JSON: {e}") from None
    return parse_prompts(data, source=str(p))


class _Ctx:
    """Builds error messages: `<source>: <path>: <problem>`."""

    def __init__(self, source: str, coords: str = "abs"):
        self.source = source
        self.coords = coords

    def fail(self, path: str, problem: str) -> PromptsFileError:
        return PromptsFileError(f"{self.source}: {path}: {problem}")

    def typed(self, tp: Any, v: Any, path: str) -> Any:
        """`v` by annotation `tp`, by the one rule of protocol/schema.py (booleans, numbers)."""
        try:
            return check_value(tp, v, path)
        except BadRequest as e:
            raise PromptsFileError(f"{self.source}: {e}") from None

    def mapping(
        self, v: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict:
        if not isinstance(v, dict):
            raise self.fail(path, f"expected a mapping with keys {list(allowed)}, got {_tn(v)}")
        for k in v:
            if k not in allowed:
                raise self.fail(f"{path}.{k}", f"unknown field; valid fields are {sorted(allowed)}")
        for k in required:
            if k not in v:
                raise self.fail(f"{path}.{k}", "required key is missing")
        return v

    def nonneg_int(self, v: Any, path: str) -> int:
        if self.typed(int, v, path) < 0:
            raise self.fail(path, f"must be a non-negative integer, got {v!r}")
        return v

    def number(self, v: Any, path: str) -> float:
        v = self.typed(float, v, path)
        if not math.isfinite(v):
            raise self.fail(path, f"must be a finite number, got {v!r}")
        if v < 0 or (self.coords == "rel" and v > 1):
            rng = "[0, 1] (coords: rel)" if self.coords == "rel" else ">= 0 pixels (coords: abs)"
            raise self.fail(path, f"{v:g} is outside {rng}")
        return v

    def box(self, v: Any, path: str) -> tuple[float, float, float, float]:
        if not isinstance(v, list | tuple) or len(v) != 4:
            raise self.fail(path, f"must be [x0, y0, x1, y1], got {v!r}")
        x0, y0, x1, y1 = (self.number(c, f"{path}[{i}]") for i, c in enumerate(v))
        if not (x0 < x1 and y0 < y1):
            raise self.fail(path, f"{list(v)} needs x0 < x1 and y0 < y1 (order [x0, y0, x1, y1])")
        if self.coords == "abs" and x1 <= 1 and y1 <= 1:
            raise self.fail(
                path,
                f"{list(v)} looks like relative coordinates (every value is in [0, 1]) but the "
                "file says coords: abs (pixels); write `coords: rel` at the top of the file, or "
                "give the box in pixels",
            )
        return x0, y0, x1, y1

    def prompt(self, v: Any, path: str, allowed: tuple[str, ...]) -> Prompt:
        d = self.mapping(v, path, allowed, required=("frame",))
        frame = self.nonneg_int(d["frame"], f"{path}.frame")
        points = labels = box = None
        if d.get("points") is not None:
            pts = d["points"]
            if not isinstance(pts, list) or not pts:
                raise self.fail(
                    f"{path}.points", f"must be a non-empty list of [x, y], got {pts!r}"
                )
            parsed = []
            for i, pt in enumerate(pts):
                if not isinstance(pt, list | tuple) or len(pt) != 2:
                    raise self.fail(f"{path}.points[{i}]", f"must be [x, y], got {pt!r}")
                parsed.append(
                    (
                        self.number(pt[0], f"{path}.points[{i}][0]"),
                        self.number(pt[1], f"{path}.points[{i}][1]"),
                    )
                )
            points = tuple(parsed)
            if (
                self.coords == "abs"
                and all(c <= 1 for pt in points for c in pt)
                and any(not float(c).is_integer() for pt in points for c in pt)
            ):
                raise self.fail(
                    f"{path}.points",
                    f"{[list(pt) for pt in points]} look like relative coordinates (fractions "
                    "in [0, 1]) but the file says coords: abs (pixels); write `coords: rel` at "
                    "the top of the file, or give the points in pixels",
                )
            lab = d.get("labels")
            if lab is None:
                raise self.fail(f"{path}.labels", "points need labels (1 foreground, 0 background)")
            if not isinstance(lab, list) or len(lab) != len(points):
                n = len(lab) if isinstance(lab, list) else _tn(lab)
                raise self.fail(
                    f"{path}.labels", f"needs one label per point: {len(points)} points, got {n}"
                )
            for i, x in enumerate(lab):
                if self.typed(int, x, f"{path}.labels[{i}]") not in (0, 1):
                    raise self.fail(f"{path}.labels[{i}]", f"must be 0 or 1, got {x!r}")
            labels = tuple(int(x) for x in lab)
        elif d.get("labels") is not None:
            raise self.fail(
                f"{path}.labels", "labels given without points; add points or drop labels"
            )
        if d.get("box") is not None:
            box = self.box(d["box"], f"{path}.box")
        if points is None and box is None:
            raise self.fail(path, "a prompt needs points (with labels) or a box")
        return Prompt(frame=frame, points=points, labels=labels, box=box)


def _tn(v: Any) -> str:
    return "nothing" if v is None else type(v).__name__


def parse_prompts(data: Any, source: str = "<memory>") -> PromptsFile:
    """Validate an already-loaded prompts mapping (see the module docstring for the schema)."""
    ctx = _Ctx(source)
    top = ctx.mapping(
        data, "file", ("version", "coords", "buffer", "episodes"), ("version", "coords", "episodes")
    )
    if top["version"] != 1 or isinstance(top["version"], bool):
        raise ctx.fail("version", f"only version 1 is supported, got {top['version']!r}")
    if top["coords"] not in COORDS:
        raise ctx.fail("coords", f"{top['coords']!r} is not one of {list(COORDS)}")
    ctx.coords = top["coords"]
    eps = top["episodes"]
    if not isinstance(eps, dict) or not eps:
        raise ctx.fail("episodes", f"must be a non-empty mapping episode -> entry, got {eps!r}")
    episodes: dict[int, EpisodePrompts] = {}
    for key, entry in eps.items():
        ep = _episode_key(ctx, key)
        if ep in episodes:
            raise ctx.fail(f"episodes.{key}", f"episode {ep} appears twice; keep one entry")
        episodes[ep] = _episode(ctx, ep, entry)
    tie = _buffer(ctx, top["buffer"]) if top.get("buffer") is not None else None
    return PromptsFile(version=1, coords=ctx.coords, episodes=episodes, source=source, buffer=tie)


def _buffer(ctx: _Ctx, v: Any) -> BufferTie:
    d = ctx.mapping(v, "buffer", _BUFFER_KEYS, ("fingerprint", "camera_key"))
    fp = d["fingerprint"]
    if not isinstance(fp, str) or len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
        raise ctx.fail(
            "buffer.fingerprint",
            f"must be 64 lowercase hex digits (sha256), got {fp!r}; "
            "`python -m orchestrator fingerprint --input BUFFER` prints it",
        )
    key = d["camera_key"]
    if not isinstance(key, str) or not key or "/" in key:
        raise ctx.fail("buffer.camera_key", f"must be the name under data/, got {key!r}")
    path = ctx.typed(str | None, d.get("path"), "buffer.path")
    episodes = ctx.nonneg_int(d["episodes"], "buffer.episodes") if "episodes" in d else None
    size = d.get("size")
    if size is not None:
        size = ctx.typed(list[int] | tuple[int, ...], size, "buffer.size")
        if len(size) != 2 or min(size) <= 0:
            raise ctx.fail("buffer.size", f"must be [width, height] in pixels, got {size!r}")
        size = (int(size[0]), int(size[1]))
    return BufferTie(fp, key, path, episodes, size)


def _episode_key(ctx: _Ctx, key: Any) -> int:
    if isinstance(key, str) and key.strip().isdigit():  # JSON object keys are strings
        key = int(key)
    if not isinstance(key, int) or isinstance(key, bool) or key < 0:
        raise ctx.fail(f"episodes.{key}", "episode keys must be non-negative integers")
    return key


def _episode(ctx: _Ctx, ep: int, entry: Any) -> EpisodePrompts:
    where = f"episodes.{ep}"
    d = ctx.mapping(entry, where, _EPISODE_KEYS)
    if not any(d.get(k) is not None for k in _CONTENT_KEYS):
        raise ctx.fail(where, f"empty entry; give at least one of {list(_CONTENT_KEYS)}")
    rnd = ctx.nonneg_int(d["round"], f"{where}.round") if d.get("round") is not None else None
    approved = ctx.typed(bool, d.get("approved", False), f"{where}.approved")
    annotator = ctx.typed(str | None, d.get("annotator"), f"{where}.annotator")
    target = None
    if d.get("target") is not None:
        t = ctx.mapping(d["target"], f"{where}.target", ("frame", "box", "description"), ("box",))
        desc = ctx.typed(str | None, t.get("description"), f"{where}.target.description")
        target = Target(
            frame=ctx.nonneg_int(t.get("frame", 0), f"{where}.target.frame"),
            box=ctx.box(t["box"], f"{where}.target.box"),
            description=desc,
        )
    objects: dict[str, ObjectPrompts] = {}
    owner: dict[int, str] = {}
    if d.get("objects") is not None:
        objs = ctx.mapping(d["objects"], f"{where}.objects", ROLES)
        for role, o in objs.items():
            op = f"{where}.objects.{role}"
            od = ctx.mapping(o, op, ("obj_id", "prompts"), ("obj_id", "prompts"))
            oid = ctx.nonneg_int(od["obj_id"], f"{op}.obj_id")
            if oid in owner:
                raise ctx.fail(
                    f"{op}.obj_id",
                    f"obj_id {oid} is already used by {owner[oid]}; ids must be unique",
                )
            owner[oid] = role
            plist = od["prompts"]
            if not isinstance(plist, list) or not plist:
                raise ctx.fail(
                    f"{op}.prompts", "must be a non-empty list of {frame, points/labels | box}"
                )
            prompts = tuple(
                ctx.prompt(p, f"{op}.prompts[{i}]", ("frame", "points", "labels", "box"))
                for i, p in enumerate(plist)
            )
            objects[role] = ObjectPrompts(role=role, obj_id=oid, prompts=prompts)
    refinements: list[Refinement] = []
    if d.get("refinements") is not None:
        refs = d["refinements"]
        if not isinstance(refs, list):
            raise ctx.fail(f"{where}.refinements", f"must be a list, got {_tn(refs)}")
        for i, r in enumerate(refs):
            rp = f"{where}.refinements[{i}]"
            rd = ctx.mapping(r, rp, ("obj_id", "frame", "points", "labels", "box"), ("obj_id",))
            oid = ctx.nonneg_int(rd["obj_id"], f"{rp}.obj_id")
            if oid not in owner:
                raise ctx.fail(
                    f"{rp}.obj_id",
                    f"obj_id {oid} is not an object of this episode (ids: {sorted(owner)}); "
                    f"declare it under objects",
                )
            rest = {k: v for k, v in rd.items() if k != "obj_id"}
            refinements.append(
                Refinement(oid, ctx.prompt(rest, rp, ("frame", "points", "labels", "box")))
            )
    plan: dict[str, Any] = {}
    if d.get("plan") is not None:
        pd = ctx.mapping(d["plan"], f"{where}.plan", PLAN_TASKS)
        plan = {task: _plan_answer(ctx, f"{where}.plan.{task}", task, v) for task, v in pd.items()}
    frame = None
    if d.get("frame") is not None:
        frame = d["frame"]
        if isinstance(frame, str):
            frame = frame.strip().lower()
        if not (
            frame in ("last", "grasp") or (isinstance(frame, int) and not isinstance(frame, bool))
        ):
            raise ctx.fail(
                f"{where}.frame", f"must be an index (-1 = last), last or grasp, got {d['frame']!r}"
            )
        if target is not None:
            raise ctx.fail(f"{where}.frame", "the target's own target.frame says where its box "
                           "goes; remove one of them")  # fmt: skip
    fp = episode_fingerprint(entry, ctx.coords)
    return EpisodePrompts(ep, target, objects, tuple(refinements), plan, fingerprint=fp,
                          round=rnd, approved=approved, annotator=annotator,
                          frame=frame)  # fmt: skip


def _plan_answer(ctx: _Ctx, path: str, task: str, v: Any) -> Any:
    """A stored planner answer, checked like a model answer would be."""
    if task == "classify_user_prompt":
        if v not in ("I", "II"):
            raise ctx.fail(path, f'must be "I" or "II", got {v!r}')
        return v
    if task == "decompose_user_prompt":
        if not isinstance(v, list) or not all(isinstance(s, str) and s.strip() for s in v):
            raise ctx.fail(path, f"must be a list of non-empty strings, got {v!r}")
        return list(v)
    if task == "generate_instruction":
        if isinstance(v, str):
            v = {"target": v}
        if (
            not isinstance(v, dict)
            or not isinstance(v.get("target"), str)
            or not v["target"].strip()
        ):
            raise ctx.fail(
                path, f"must be a target string or a mapping with a target string, got {v!r}"
            )
        return dict(v)
    if task == "mark_bounding_box":
        m = ctx.mapping(v, path, ("bbox_2d", "label", "description"), ("bbox_2d",))
        for k in ("label", "description"):
            ctx.typed(str | None, m.get(k), f"{path}.{k}")
        return {
            "bbox_2d": ctx.box(m["bbox_2d"], f"{path}.bbox_2d"),
            "label": m.get("label") or "",
            "description": m.get("description") or "",
        }
    if task == "identify_held_object":
        if v is False or v is None:
            return {"held": False, "label": None, "description": None}
        if isinstance(v, str) and v.strip():
            return {"held": True, "label": v.strip(), "description": v.strip()}
        m = ctx.mapping(v, path, ("held", "label", "description"), ("held",))
        ctx.typed(bool, m["held"], f"{path}.held")
        for k in ("label", "description"):
            ctx.typed(str | None, m.get(k), f"{path}.{k}")
        desc = (m.get("description") or m.get("label") or "").strip() or None
        if m["held"] and desc is None:
            raise ctx.fail(path, "held: true needs a label or description of the object")
        if not m["held"] and desc is not None:
            raise ctx.fail(path, "held: false names no object; drop label/description")
        return {"held": m["held"], "label": (m.get("label") or desc) if m["held"] else None,
                "description": desc}  # fmt: skip
    return ctx.typed(bool, v, path)  # the check_* tasks
