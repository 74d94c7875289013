"""Per-episode plans: which prompts go to SAM in which stage, validated before any work.

Usage:
    ds = DatasetInfo.from_open(reply, path="data/demo/demo.zarr", camera_key=None)
    episodes = parse_episode_spec("0-9,12", ds.n_episodes)
    plans = build_plans(cfg, ds, episodes, prompts)     # PlanError lists every problem found
    print(describe_plans(plans, done=[3]))

A plan is a list of stages; each stage adds its prompts, then propagates (cfg.direction).
rgbm: one stage with the target prompt (a VLM box, a prompts-file box or a SAM3 text).
arm_only (seed 000): A/bootstrap (arm text or arm prompts) -> A/refine (arm prompts after a
text bootstrap, and arm refinements) -> B/grippers (gripper prompts as new object ids on
keyframes, and gripper refinements).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.config import DEFAULT_OBJ_IDS, PipelineConfig
from protocol.prompts_file import EpisodePrompts, Prompt, PromptsFile, parse_prompts
from protocol.vocab import ARM_ROLES, GRIPPER_ROLES
from services.sam.api import CONTRACT as SAM

MAX_ERRORS_SHOWN = 20


class PlanError(ValueError):
    """Prompts or episodes that do not fit the buffer; the message lists every problem."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the reader's `open` told us about the input buffer."""

    path: str
    dataset: str  # the reader's dataset id
    episode_ends: tuple[int, ...]  # (E,) exclusive global end of each episode
    camera_key: str
    height: int
    width: int
    attrs: dict = field(default_factory=dict)

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    def bounds(self, episode: int) -> tuple[int, int]:
        """Global [start, stop) frame range of an episode."""
        start = self.episode_ends[episode - 1] if episode > 0 else 0
        return int(start), int(self.episode_ends[episode])

    @classmethod
    def from_open(cls, reply: dict, *, path: str, camera_key: str | None) -> DatasetInfo:
        keys = reply.get("keys") or {}
        images = [
            k for k, spec in keys.items()
            if len(spec.get("shape", ())) == 4 and spec["shape"][-1] == 3
            and str(spec.get("dtype", "")).endswith(("uint8", "u1"))
        ]  # fmt: skip
        if camera_key is None:
            if len(images) != 1:
                raise PlanError(
                    f"camera_key: {path} has {len(images)} (T, H, W, 3) uint8 keys {sorted(images)};"
                    " set camera_key in the pipeline config"
                )
            camera_key = images[0]
        if camera_key not in keys:
            raise PlanError(
                f"camera_key: {camera_key!r} is not in {path} (keys: {sorted(keys)}); "
                f"image keys: {sorted(images)}"
            )
        if camera_key not in images:
            spec = keys[camera_key]
            raise PlanError(
                f"camera_key: data/{camera_key} is {spec.get('dtype')} {spec.get('shape')}, "
                f"not (T, H, W, 3) uint8 RGB; image keys: {sorted(images)}"
            )
        shape = keys[camera_key]["shape"]
        ends = tuple(int(e) for e in reply["episode_ends"])
        return cls(path, str(reply["dataset"]), ends, camera_key, int(shape[1]), int(shape[2]),
                   dict(reply.get("attrs") or {}))  # fmt: skip


@dataclass(frozen=True)
class PromptOp:
    """One add_prompt call. `vlm` set: the box comes from the VLM's `bbox` at run time."""

    frame: int
    obj_id: int
    role: str
    points: tuple[tuple[float, float], ...] | None = None
    labels: tuple[int, ...] | None = None
    box: tuple[float, float, float, float] | None = None
    text: str | None = None
    rel: bool = False
    vlm: str | None = None  # the description the VLM boxes
    origin: str = field(default="", compare=False)  # where the prompt comes from (dry-run)
    held: bool = False  # vlm: first ask which object the gripper holds, then box that

    def body(self, session: str, box: list[float] | None = None) -> dict:
        """The add_prompt request body (`box` = the VLM's answer for a vlm prompt), built and
        checked by the sam contract (services/sam/api.py)."""
        b: dict[str, Any] = {"session": session, "frame": self.frame, "obj_id": self.obj_id}
        if self.points is not None:
            b["points"] = [list(p) for p in self.points]
            b["labels"] = list(self.labels or ())
        bx = box if box is not None else self.box
        if bx is not None:
            b["box"] = [float(v) for v in bx]
        if self.text is not None:
            b["text"] = self.text
        if self.rel and box is None:
            b["rel"] = True
        return SAM.request("add_prompt", **b)

    def describe(self, origin: bool = False) -> str:
        what = "held object" if self.held else "instruction"
        vlm = "held" if self.held else self.vlm
        kinds = [k for k, v in (("text", self.text), (f"vlm box of the {what}", vlm), ("box", self.box),
                                ("points", self.points)) if v is not None]  # fmt: skip
        out = f"{self.role}#{self.obj_id}@{self.frame}:{'+'.join(kinds)}"
        return f"{out} <- {self.origin}" if origin and self.origin else out

    def as_meta(self) -> dict:
        """Plain data for the export's metadata (deterministic: no times, no hosts)."""
        d: dict[str, Any] = {"role": self.role, "obj_id": self.obj_id, "frame": self.frame}
        if self.points is not None:
            d["points"] = [list(p) for p in self.points]
            d["labels"] = list(self.labels or ())
        if self.box is not None:
            d["box"] = list(self.box)
        if self.text is not None:
            d["text"] = self.text
        if self.vlm is not None:
            d["vlm"] = self.vlm
        if self.held:
            d["held"] = True
        if self.rel:
            d["rel"] = True
        return d


@dataclass(frozen=True)
class Stage:
    name: str
    prompts: tuple[PromptOp, ...]


@dataclass(frozen=True)
class EpisodePlan:
    episode: int
    start: int  # global index of the episode's first frame
    n_frames: int
    height: int
    width: int
    stages: tuple[Stage, ...]
    roles: dict[str, int]  # role -> obj_id, sent to finish_episode
    require_any: tuple[int, ...] = ()  # at least one of these objects must have a mask
    prompts_fingerprint: str | None = None  # the prompts-file entry's episode_fingerprint()
    prompts_round: int | None = None  # the entry's `round` (written by the studio), if any
    direction: str = "both"  # propagate direction of this episode (config `auto` resolved)
    prompt_info: dict = field(default_factory=dict)  # rgbm: frame, why (prompt_frame.py)

    @property
    def obj_ids(self) -> list[int]:
        return sorted(set(self.roles.values()))

    @property
    def vlm_prompts(self) -> list[PromptOp]:
        return [p for s in self.stages for p in s.prompts if p.vlm is not None]


def parse_episode_spec(spec: str | list[int] | None, n_episodes: int) -> list[int]:
    """'0-9,12' -> [0, ..., 9, 12] (sorted, unique); None -> every episode."""
    if spec is None:
        return list(range(n_episodes))
    out: set[int] = set()
    parts = spec if isinstance(spec, list) else [p.strip() for p in str(spec).split(",")]
    for part in parts:
        try:
            if isinstance(part, int):
                lo = hi = part
            elif "-" in part.strip("-") or part.count("-") > 1:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
            else:
                lo = hi = int(part)
        except ValueError:
            raise PlanError(
                f"--episodes: {part!r} is not a number or a range; write e.g. 0-9,12"
            ) from None
        if lo > hi:
            raise PlanError(f"--episodes: range {part!r} is reversed; write {hi}-{lo}")
        if lo < 0 or hi >= n_episodes:
            raise PlanError(
                f"--episodes: {part!r} is outside the buffer's episodes 0-{n_episodes - 1}"
            )
        out.update(range(lo, hi + 1))
    if not out:
        raise PlanError("--episodes: selects no episode; write e.g. 0-9,12")
    return sorted(out)


class _Checker:
    """Collects range errors of one episode's prompts against its frames and image size."""

    def __init__(self, where: str, n_frames: int, height: int, width: int, rel: bool):
        self.where, self.n, self.h, self.w, self.rel = where, n_frames, height, width, rel
        self.errors: list[str] = []

    def frame(self, path: str, f: int) -> None:
        if not 0 <= f < self.n:
            self.errors.append(
                f"{self.where}.{path}.frame: {f} is outside the episode's frames 0-{self.n - 1}"
            )

    def prompt(self, path: str, p: Prompt) -> None:
        self.frame(path, p.frame)
        lim = (1.0, 1.0) if self.rel else (float(self.w), float(self.h))
        unit = "[0, 1] (coords: rel)" if self.rel else f"the {self.w}x{self.h} image (pixels)"
        for i, (x, y) in enumerate(p.points or ()):
            inside = (
                (0 <= x <= 1 and 0 <= y <= 1) if self.rel else (0 <= x < lim[0] and 0 <= y < lim[1])
            )
            if not inside:
                self.errors.append(
                    f"{self.where}.{path}.points[{i}]: [{x:g}, {y:g}] is outside {unit}"
                )
        for i, lab in enumerate(p.labels or ()):
            if lab not in (0, 1):
                self.errors.append(f"{self.where}.{path}.labels[{i}]: must be 0 or 1, got {lab!r}")
        if p.box is not None:
            x0, y0, x1, y1 = p.box
            if not (0 <= x0 < x1 <= lim[0] and 0 <= y0 < y1 <= lim[1]):
                self.errors.append(f"{self.where}.{path}.box: {list(p.box)} is not inside {unit}")


def _op(p: Prompt, oid: int, role: str, rel: bool, origin: str = "") -> PromptOp:
    return PromptOp(p.frame, oid, role, p.points, p.labels, p.box, rel=rel, origin=origin)


def _instruction(cfg: PipelineConfig, ds: DatasetInfo, ep: int) -> str | None:
    if cfg.prompt.instruction is not None:
        return cfg.prompt.instruction
    eps = ds.attrs.get("episodes")
    entry = None
    if isinstance(eps, list) and ep < len(eps):
        entry = eps[ep]
    elif isinstance(eps, dict):
        entry = eps.get(str(ep), eps.get(ep))
    if isinstance(entry, dict) and isinstance(entry.get(cfg.prompt.instruction_attr), str):
        return entry[cfg.prompt.instruction_attr]
    return None


def _direction(cfg: PipelineConfig, frame: int | None, n: int) -> str:
    """`auto`: backward from a prompt on the last frame, both otherwise."""
    if cfg.direction != "auto":
        return cfg.direction
    return "backward" if frame is not None and n > 1 and frame == n - 1 else "both"


def _simple_choice(cfg: PipelineConfig, ep: int, n: int) -> tuple[Any, str | None]:
    """prompt.frame without a reader: an index or `last` (grasp needs resolve_frames)."""
    from orchestrator.prompt_frame import FrameChoice, FrameError, index_frame

    spec = cfg.prompt.frame
    held = cfg.prompt.describe == "held"
    if spec == "grasp":
        return (
            None,
            f"episode {ep}: prompt.frame grasp needs the gripper signal: plan with "
            "orchestrator.prompt_frame.resolve_frames (run/dry-run do)",
        )
    if spec == "last":
        return FrameChoice(
            n - 1, f"last (t={n - 1})", spec, held=held or cfg.prompt.describe == "auto"
        ), None
    try:
        f = index_frame(int(spec), n, f"episode {ep}: prompt.frame")
    except FrameError as e:
        return None, str(e)
    auto = cfg.prompt.describe == "auto" and int(spec) < 0
    return FrameChoice(f, f"frame {spec}", spec, held=held or auto), None


def plan_rgbm(cfg: PipelineConfig, ds: DatasetInfo, ep: int, pf: PromptsFile | None,
              choice: Any = None) -> tuple[EpisodePlan | None, list[str]]:  # fmt: skip
    """One rgbm episode; `choice` (prompt_frame.FrameChoice) overrides prompt.frame."""
    start, stop = ds.bounds(ep)
    n = stop - start
    pc = cfg.prompt
    chk = _Checker(f"episode {ep}", n, ds.height, ds.width, rel=False)
    if choice is None and pc.source != "file":
        choice, err = _simple_choice(cfg, ep, n)
        if err:
            return None, [err]
    frame = choice.frame if choice is not None else 0
    info = choice.as_dict() if choice is not None else {}
    if pc.source == "file":
        entry = pf.episodes.get(ep) if pf else None
        if entry is None or entry.target is None:
            src = pf.source if pf else "prompts_file"
            return None, [
                f"{src}: episodes.{ep}.target: missing; add {{frame, box}} for episode {ep}"
            ]
        t = entry.target
        chk.rel = pf.coords == "rel"
        chk.where = f"{pf.source}: episodes.{ep}"
        chk.prompt("target", Prompt(frame=t.frame, box=t.box))
        op = PromptOp(t.frame, pc.obj_id, "target", box=t.box, rel=chk.rel,
                      origin=f"file {pf.source} episodes.{ep}.target")  # fmt: skip
        info = {"frame": t.frame, "why": f"{pf.source}: episodes.{ep}.target.frame"}
    elif pc.source == "text":
        chk.frame("prompt", frame)
        op = PromptOp(frame, pc.obj_id, "target", text=pc.text,
                      origin=f"config {cfg.origin} prompt.text")  # fmt: skip
    else:
        chk.frame("prompt", frame)
        held = bool(choice is not None and choice.held) or (
            choice is None and pc.describe == "held"
        )
        desc = _instruction(cfg, ds, ep)
        if not desc and not held:
            chk.errors.append(
                f"episode {ep}: no instruction for the VLM: the buffer attrs have no "
                f"episodes[{ep}].{pc.instruction_attr}; set prompt.instruction in the config"
            )
        op = PromptOp(frame, pc.obj_id, "target", vlm=desc or "", held=held,
                      origin="vlm identify_held_object + bbox" if held else "vlm bbox")  # fmt: skip
    fp, rnd = _entry_ids(pf.episodes.get(ep) if pc.source == "file" and pf else None)
    plan = EpisodePlan(ep, start, n, ds.height, ds.width, (Stage("target", (op,)),),
                       {"target": pc.obj_id}, prompts_fingerprint=fp, prompts_round=rnd,
                       direction=_direction(cfg, op.frame, n), prompt_info=info)  # fmt: skip
    return plan, chk.errors


def _entry_ids(entry: EpisodePrompts | None) -> tuple[str | None, int | None]:
    """(fingerprint, round) of a prompts-file entry; (None, None) when not from a file."""
    if entry is None:
        return None, None
    rnd = getattr(entry, "round", None)  # the studio's per-episode round, once the schema has it
    return entry.fingerprint, rnd if isinstance(rnd, int) else None


def inline_prompts(cfg: PipelineConfig) -> EpisodePrompts | None:
    """arm_only.objects / refinements parsed with the prompts-file schema (one entry, all episodes)."""
    a = cfg.arm_only
    if a.objects is None and a.refinements is None:
        return None
    entry: dict[str, Any] = {}
    if a.objects is not None:
        entry["objects"] = a.objects
    if a.refinements is not None:
        entry["refinements"] = a.refinements
    pf = parse_prompts(
        {"version": 1, "coords": a.coords, "episodes": {0: entry}}, source=f"{cfg.origin}: arm_only"
    )
    return pf.episodes[0]


def plan_arm_only(cfg: PipelineConfig, ds: DatasetInfo, ep: int, pf: PromptsFile | None,
                  inline: EpisodePrompts | None) -> tuple[EpisodePlan | None, list[str]]:  # fmt: skip
    start, stop = ds.bounds(ep)
    n = stop - start
    a = cfg.arm_only
    if pf is not None:
        entry = pf.episodes.get(ep)
        if entry is None:
            return None, [f"{pf.source}: episodes.{ep}: no entry for episode {ep}; add its objects"]
        rel, where = pf.coords == "rel", f"{pf.source}: episodes.{ep}"
        src = f"file {pf.source} episodes.{ep}"
    else:
        entry = inline or EpisodePrompts(ep)
        rel, where = a.coords == "rel", f"{cfg.origin}: arm_only (episode {ep})"
        src = f"config {cfg.origin} arm_only"
    chk = _Checker(where, n, ds.height, ds.width, rel)
    ids: dict[str, int] = {r: o.obj_id for r, o in entry.objects.items()}
    for role in a.bootstrap_text:  # text-bootstrapped arms without file prompts: config ids
        ids.setdefault(role, {**DEFAULT_OBJ_IDS, **a.obj_ids}[role])
    if "target" in ids:
        chk.errors.append(f"{where}.objects.target: not used by arm_only; remove it")
        ids.pop("target")
    seen: dict[int, str] = {}
    for role, oid in ids.items():
        if oid in seen:
            chk.errors.append(
                f"{where}: obj_id {oid} is used by both {seen[oid]} and {role}; "
                "object ids must be unique across arms and grippers"
            )
        seen[oid] = role
    arms = [r for r in ARM_ROLES if r in ids]
    grippers = [r for r in GRIPPER_ROLES if r in entry.objects]
    if not arms:
        chk.errors.append(
            f"{where}: no arm prompt: give objects.arm_left/arm_right or arm_only.bootstrap_text"
        )
    if not grippers:
        chk.errors.append(
            f"{where}: no gripper prompt given: arm-only export is refused without one; "
            "add objects.gripper_left/gripper_right prompts on keyframes"
        )
    by_id = {oid: role for role, oid in ids.items()}
    boot: list[PromptOp] = []
    refine: list[PromptOp] = []
    for role in arms:
        obj = entry.objects.get(role)
        prompts = [] if obj is None else list(obj.prompts)
        for i, p in enumerate(prompts):
            chk.prompt(f"objects.{role}.prompts[{i}]", p)
        if role in a.bootstrap_text:
            chk.frame("arm_only.bootstrap", a.bootstrap_frame)
            boot.append(PromptOp(a.bootstrap_frame, ids[role], role, text=a.bootstrap_text[role],
                                 origin=f"config {cfg.origin} arm_only.bootstrap_text.{role}"))  # fmt: skip
            refine += [_op(p, ids[role], role, rel, f"{src}.objects.{role}.prompts[{i}]")
                       for i, p in enumerate(prompts)]  # fmt: skip
        else:
            boot += [_op(p, ids[role], role, rel, f"{src}.objects.{role}.prompts[{i}]")
                     for i, p in enumerate(prompts)]  # fmt: skip
    grip: list[PromptOp] = []
    for role in grippers:
        for i, p in enumerate(entry.objects[role].prompts):
            chk.prompt(f"objects.{role}.prompts[{i}]", p)
            grip.append(_op(p, ids[role], role, rel, f"{src}.objects.{role}.prompts[{i}]"))
    for i, r in enumerate(entry.refinements):
        chk.prompt(f"refinements[{i}]", r.prompt)
        role = by_id.get(r.obj_id)
        if role is None:
            chk.errors.append(
                f"{where}.refinements[{i}].obj_id: {r.obj_id} is not an object ({sorted(by_id)})"
            )
            continue
        (refine if role in ARM_ROLES else grip).append(
            _op(r.prompt, r.obj_id, role, rel, f"{src}.refinements[{i}]")
        )
    order = lambda op: (op.frame, op.obj_id)  # noqa: E731 - seed 000 sorts by (frame, obj_id)
    stages = [Stage("A/bootstrap", tuple(boot))]
    if refine:
        stages.append(Stage("A/refine", tuple(sorted(refine, key=order))))
    stages.append(Stage("B/grippers", tuple(sorted(grip, key=order))))
    roles = {r: ids[r] for r in (*arms, *grippers)}
    fp, rnd = _entry_ids(entry if pf is not None else None)
    plan = EpisodePlan(ep, start, n, ds.height, ds.width, tuple(stages), roles,
                       require_any=tuple(ids[r] for r in grippers), prompts_fingerprint=fp,
                       prompts_round=rnd, direction=_direction(cfg, None, n))  # fmt: skip
    return plan, chk.errors


def build_plans(
    cfg: PipelineConfig,
    ds: DatasetInfo,
    episodes: list[int],
    prompts: PromptsFile | None,
    frames: dict | None = None,
    errors: list[str] | None = None,
) -> list[EpisodePlan]:
    """Plans for the selected episodes; PlanError listing every problem when any is invalid.
    `frames`: {episode: prompt_frame.FrameChoice} (rgbm), `errors`: problems found before."""
    errors = list(errors or [])
    plans: list[EpisodePlan] = []
    inline = inline_prompts(cfg) if cfg.pipeline == "arm_only" else None
    for ep in episodes:
        if cfg.pipeline == "rgbm":
            plan, errs = plan_rgbm(cfg, ds, ep, prompts, (frames or {}).get(ep))
        else:
            plan, errs = plan_arm_only(cfg, ds, ep, prompts, inline)
        errors += errs
        if plan is not None:
            plans.append(plan)
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        more = len(errors) - len(shown)
        tail = f"\n  ... and {more} more" if more else ""
        raise PlanError(
            f"{len(errors)} problem(s) in the prompts; nothing was run:\n  "
            + "\n  ".join(shown)
            + tail
        )
    return plans


def describe_plans(
    plans: list[EpisodePlan], done: set[int] | list[int] = (), direction: str = "both"
) -> str:
    """The plan as text (dry-run): one line per episode."""
    done = set(done)
    lines = []
    for p in plans:
        what = " | ".join(
            f"{s.name}: {', '.join(op.describe(origin=True) for op in s.prompts) or '-'} "
            f"-> propagate {p.direction or direction}"
            for s in p.stages
        )
        state = "skip (done)" if p.episode in done else "run"
        lines.append(f"  episode {p.episode:>4}  {p.n_frames:>5} frames  {state:<11} {what}")
        if p.prompt_info.get("why"):
            why = f"    prompt frame {p.prompt_info['frame']}: {p.prompt_info['why']}"
            if p.prompt_info.get("note"):
                why += f"; NOTE {p.prompt_info['note']}"
            lines.append(why)
    return "\n".join(lines)
