"""Pipeline configs (configs/pipelines/*.yaml) as frozen dataclasses; unknown keys are errors.

Usage:
    cfg = load_pipeline("configs/pipelines/rgbm.yaml")        # PipelineConfig
    cfg = parse_pipeline({"pipeline": "arm_only", ...})         # from a dict
    cfg.to_dict()                                               # resolved, for logs and reports

Every option, its default and its meaning is documented in configs/pipelines/*.yaml and
orchestrator/README.md. Keys and types are checked by protocol/schema.py (the one validator of
the mesh: unknown keys refused, one rule for booleans and numbers); the pipeline's own rules
(ranges, cross-field checks) follow here. Errors name the key, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from protocol.config import read_yaml
from protocol.errors import BadRequest
from protocol.schema import parse
from protocol.vocab import ARM_ROLES, OUTPUTS

PIPELINES = ("rgbm", "arm_only")
DEFAULT_OBJ_IDS = {"arm_left": 1, "arm_right": 2, "gripper_left": 3, "gripper_right": 4}


class PipelineConfigError(ValueError):
    """A pipeline config that does not validate; the message names the key and the fix."""


@dataclass(frozen=True)
class GraspConfig:
    """rgbm `prompt.frame: grasp`: the low-dim signal whose closing marks the grasp frame
    (orchestrator/prompt_frame.py). None = the key's default (right_state: dim 7, smaller;
    robot0_gripper_width: dim 0, smaller)."""

    key: str | None = None  # data/<key>; None = right_state, else robot0_gripper_width
    dim: int | None = None  # which dimension holds the gripper opening
    threshold: float | None = None  # None = midway between the episode's open/closed levels
    closing: Literal["smaller", "larger"] | None = None  # closing makes the value ...
    hold: int = 3  # frames the signal must stay closed to count as a grasp


@dataclass(frozen=True)
class PromptConfig:
    """rgbm: where each episode's target prompt comes from."""

    source: Literal["vlm", "file", "text"] = "vlm"  # VLM bbox | prompts file target | SAM3 text
    frame: int | str = 0  # episode frame of the VLM box / text prompt: index (-1 = last),
    # "last" or "grasp" (vlm, text); a prompts file's per-episode `frame` wins
    describe: Literal["auto", "held", "instruction"] = "auto"  # what the VLM boxes: held = the
    # object the gripper holds (planner task identify_held_object), instruction = the
    # episode's instruction; auto = held on last/negative/grasp frames, else instruction
    grasp: GraspConfig = field(default_factory=GraspConfig)
    instruction: str | None = None  # what the VLM boxes; None = the episode's instruction attr
    instruction_attr: str = "instruction"  # key in the buffer attrs `episodes[i]` (vlm)
    text: str | None = None  # SAM3 text prompt (source: text)
    obj_id: int = 1  # SAM object id of the target


@dataclass(frozen=True)
class ArmOnlyConfig:
    """arm_only: the two-stage arm/gripper flow (seed 000)."""

    objects: dict | None = None  # inline prompts (prompts-file `objects` schema) for every episode
    refinements: list | None = None  # inline arm refinements (prompts-file schema)
    coords: Literal["abs", "rel"] = "abs"  # coordinates of the inline objects/refinements
    bootstrap_text: dict[str, str] = field(default_factory=dict)  # role -> SAM3 text, stage A
    bootstrap_frame: int = 0  # frame of the stage A text prompts
    obj_ids: dict[str, int] = field(
        default_factory=lambda: dict(DEFAULT_OBJ_IDS)
    )  # text-only roles
    dilation_radius: int = 15  # arm-only mask dilation (px), passed to the exporter


@dataclass(frozen=True)
class RunConfig:
    """Scheduling, retries, progress."""

    prefetch_episodes: int = 2  # episodes read ahead of the SAM workers (bounds memory)
    reader_threads: int = 1  # threads reading episodes from the reader service
    max_inflight_puts: int = 4  # put_frames requests in flight per SAM session
    episode_retries: int = 2  # a failed episode is retried this many times, then recorded failed
    backoff_s: float = 0.5  # first pause before a retry; doubles each time
    backoff_max_s: float = 10.0  # longest pause between retries
    propagate_timeout_s: float | None = (
        None  # client timeout of one propagate; None = sam timeout_s
    )
    replica_down_s: float = 60.0  # a SAM replica silent this long is dropped from the run
    stop_grace_s: float = 20.0  # Ctrl-C: how long workers may take to close their sessions
    fail_fast: bool = False  # stop the run at the first episode that fails for good
    progress: bool = True  # tqdm progress bars on stderr


@dataclass(frozen=True)
class PipelineConfig:
    pipeline: Literal["rgbm", "arm_only"]
    version: int = 1
    camera_key: str | None = None  # data/<key> (T, H, W, 3) uint8 RGB; None = the only such key
    direction: Literal["forward", "backward", "both", "auto"] = "auto"  # every propagate call
    # (protocol.vocab.DIRECTIONS, or auto: backward when an episode's target prompt is on its
    # last frame, else both)
    outputs: tuple[str, ...] = ()  # exporter outputs; () = (pipeline,)
    export_options: dict = field(default_factory=dict)  # exporter open_export options
    prompts_file: str | None = None  # per-episode prompts (configs/prompts/*.yaml)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    arm_only: ArmOnlyConfig = field(default_factory=ArmOnlyConfig)
    run: RunConfig = field(default_factory=RunConfig)
    origin: str = field(default="<memory>", metadata={"parse": False})  # where the config
    # came from (not a YAML key: refused like an unknown one)

    @property
    def effective_outputs(self) -> tuple[str, ...]:
        return self.outputs or (self.pipeline,)

    def effective_export_options(self) -> dict:
        """Exporter options: the config's, plus the arm-only dilation."""
        opts = dict(self.export_options)
        if self.pipeline == "arm_only":
            opts.setdefault("dilation_radius", self.arm_only.dilation_radius)
        return opts

    def result_dict(self) -> dict:
        """The settings that shape the results (no scheduling options): recorded by the
        exporter in the output and compared when an output is resumed."""
        d = self.to_dict()
        d.pop("run")
        return d

    def to_dict(self) -> dict:
        """The resolved config as plain data (parse_pipeline(cfg.to_dict()) gives it back)."""
        d = dataclasses.asdict(self)
        d.pop("origin")
        d.pop("prompt" if self.pipeline == "arm_only" else "arm_only")
        d["outputs"] = list(self.outputs)
        return d


def _fail(where: str, msg: str) -> PipelineConfigError:
    return PipelineConfigError(f"{where}: {msg}")


_REMOVED = {  # keys of earlier releases, refused with what replaced them
    "request_retries": "removed: a request is re-sent inside the protocol client within its "
    "call's deadline (services.yaml `retries`, `timeout_s`); a failed episode is retried by "
    "run.episode_retries. Delete the key",
}


def _refuse_removed(raw: dict) -> None:
    sections = {"": raw, **{k: v for k, v in raw.items() if isinstance(v, dict)}}
    for section, body in sections.items():
        for k in body:
            if k in _REMOVED:
                raise _fail(f"{section}.{k}" if section else str(k), _REMOVED[k])


def _check_run(r: RunConfig) -> None:
    for name in ("prefetch_episodes", "reader_threads", "max_inflight_puts"):
        if getattr(r, name) < 1:
            raise _fail(f"run.{name}", f"must be >= 1, got {getattr(r, name)}")
    for name in ("episode_retries",):
        if getattr(r, name) < 0:
            raise _fail(f"run.{name}", f"must be >= 0, got {getattr(r, name)}")
    for name in ("propagate_timeout_s", "replica_down_s"):
        if getattr(r, name) is not None and getattr(r, name) <= 0:
            raise _fail(f"run.{name}", f"must be > 0 seconds, got {getattr(r, name)}")
    for name in ("backoff_s", "backoff_max_s", "stop_grace_s"):
        if getattr(r, name) < 0:
            raise _fail(f"run.{name}", f"must be >= 0 seconds, got {getattr(r, name)}")


def _check_obj_id(where: str, v: int) -> int:
    if not 0 <= v < 2**31:
        raise _fail(where, f"must be an integer in [0, 2**31), got {v!r}")
    return v


def _check_rgbm(cfg: PipelineConfig) -> None:
    p = cfg.prompt
    if isinstance(p.frame, str) and p.frame not in ("last", "grasp"):
        raise _fail("prompt.frame", f"{p.frame!r}: use an index (-1 = last), last or grasp")
    if p.source == "file" and p.frame != 0:
        raise _fail("prompt.frame", "not used with prompt.source: file (the file's "
                    "episodes.<i>.target.frame says where the box goes); remove it")  # fmt: skip
    g = p.grasp
    if g.hold < 1:
        raise _fail("prompt.grasp.hold", f"must be >= 1 frame, got {g.hold}")
    if g.dim is not None and g.dim < 0:
        raise _fail("prompt.grasp.dim", f"must be >= 0, got {g.dim}")
    if g.key is not None and (not g.key or "/" in g.key):
        raise _fail("prompt.grasp.key", f"{g.key!r}: give the name under data/, e.g. right_state")
    _check_obj_id("prompt.obj_id", p.obj_id)
    if p.source == "file" and not cfg.prompts_file:
        raise _fail(
            "prompts_file", "prompt.source is 'file': set prompts_file (or pass --prompts FILE)"
        )
    # With prompt.source vlm/text a prompts file may only carry per-episode `frame:`
    # overrides; one with target boxes is refused when it is read (run.check_prompts_use).
    if p.source == "text" and not (p.text and p.text.strip()):
        raise _fail("prompt.text", "prompt.source is 'text': give the SAM3 text, e.g. 'red mug'")
    if p.source != "text" and p.text is not None:
        raise _fail("prompt.text", f"only used with prompt.source: text (source is {p.source!r})")
    if p.instruction is not None and not p.instruction.strip():
        raise _fail("prompt.instruction", "empty; describe the target or use null")


def _check_arm_only(cfg: PipelineConfig) -> None:
    a = cfg.arm_only
    if cfg.prompts_file and (a.objects is not None or a.refinements is not None):
        raise _fail(
            "arm_only.objects",
            "give the prompts either in prompts_file (per episode) or inline in "
            "arm_only.objects/refinements (same for every episode), not both",
        )
    for role, text in a.bootstrap_text.items():
        if role not in ARM_ROLES:
            raise _fail(f"arm_only.bootstrap_text.{role}", f"unknown role; use {list(ARM_ROLES)}")
        if not text.strip():
            raise _fail(f"arm_only.bootstrap_text.{role}", f"must be a text, got {text!r}")
    if a.bootstrap_frame < 0:
        raise _fail("arm_only.bootstrap_frame", f"must be >= 0, got {a.bootstrap_frame}")
    ids = {**DEFAULT_OBJ_IDS, **a.obj_ids}
    for role, oid in a.obj_ids.items():
        if role not in DEFAULT_OBJ_IDS:
            raise _fail(f"arm_only.obj_ids.{role}", f"unknown role; use {list(DEFAULT_OBJ_IDS)}")
        _check_obj_id(f"arm_only.obj_ids.{role}", oid)
    if len(set(ids.values())) != len(ids):
        raise _fail("arm_only.obj_ids", f"ids must be unique across the four roles, got {ids}")
    if a.dilation_radius < 0:
        raise _fail("arm_only.dilation_radius", f"must be >= 0 px, got {a.dilation_radius}")
    if "dilation_radius" in cfg.export_options:
        raise _fail(
            "export_options.dilation_radius", "set arm_only.dilation_radius instead (one place)"
        )
    if not cfg.prompts_file and a.objects is None and not a.bootstrap_text:
        raise _fail(
            "prompts_file",
            "arm_only needs prompts: set prompts_file, arm_only.objects, or "
            "arm_only.bootstrap_text (SAM3) plus gripper objects",
        )


def parse_pipeline(raw: Any, *, source: str = "<memory>") -> PipelineConfig:
    """Validate a loaded YAML mapping and build the PipelineConfig."""
    if not isinstance(raw, dict):
        raise PipelineConfigError(f"{source}: expected a map with `pipeline: rgbm | arm_only`")
    if "pipeline" not in raw:
        raise _fail("pipeline", f"required; one of {list(PIPELINES)}")
    if raw["pipeline"] not in PIPELINES:
        raise _fail("pipeline", f"{raw['pipeline']!r} is not one of {list(PIPELINES)}")
    if raw.get("version", 1) != 1:
        raise _fail("version", f"this release reads version 1, got {raw.get('version')!r}")
    try:
        _refuse_removed(raw)
        cfg = parse(PipelineConfig, raw)  # keys and types: protocol.schema, the one validator
    except (BadRequest, PipelineConfigError) as e:
        raise PipelineConfigError(f"{source}: {e}") from None
    cfg = dataclasses.replace(cfg, origin=source)
    try:
        for o in cfg.outputs:
            if o not in OUTPUTS:
                raise _fail("outputs", f"unknown output {o!r}; valid outputs are {list(OUTPUTS)}")
        if cfg.camera_key is not None and (not cfg.camera_key or "/" in cfg.camera_key):
            raise _fail("camera_key", f"{cfg.camera_key!r}: give the name under data/, e.g. img")
        if cfg.pipeline == "rgbm":
            if "arm_only" in raw:
                raise _fail("arm_only", "only used by pipeline: arm_only; remove it")
            _check_rgbm(cfg)
        else:
            if "prompt" in raw:
                raise _fail("prompt", "only used by pipeline: rgbm; remove it")
            _check_arm_only(cfg)
        _check_run(cfg.run)
    except PipelineConfigError as e:
        raise PipelineConfigError(f"{source}: {e}") from None
    return cfg


def raw_pipeline(obj: PipelineConfig | dict | str | os.PathLike) -> dict:
    """The config as plain data before validation (what overrides are decided from), with
    `origin` set to where it came from."""
    if isinstance(obj, PipelineConfig):
        return {**obj.to_dict(), "origin": obj.origin}
    if isinstance(obj, dict):
        return {**obj, "origin": "<memory>"}
    raw = read_yaml(obj, "pipeline config", "configs/pipelines/", PipelineConfigError)
    return {**(raw if isinstance(raw, dict) else {}), "origin": str(obj)}


def _merge(raw: Any, overrides: dict | None) -> Any:
    if not overrides or not isinstance(raw, dict):
        return raw
    out = dict(raw)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def load_pipeline(path: str | os.PathLike, overrides: dict | None = None) -> PipelineConfig:
    """Read and validate a pipeline YAML file; `overrides` (e.g. {"run": {"fail_fast": True}})
    are merged into the YAML before validation."""
    raw = read_yaml(path, "pipeline config", "configs/pipelines/", PipelineConfigError)
    return parse_pipeline(_merge(raw, overrides), source=str(path))


def as_pipeline(
    obj: PipelineConfig | dict | str | os.PathLike, overrides: dict | None = None
) -> PipelineConfig:
    """A PipelineConfig from a config, a dict or a path, with optional overrides."""
    if isinstance(obj, PipelineConfig):
        if not overrides:
            return obj
        return parse_pipeline(_merge(obj.to_dict(), overrides), source=obj.origin)
    if isinstance(obj, dict):
        return parse_pipeline(_merge(obj, overrides))
    return load_pipeline(obj, overrides)
