"""Where the rgbm target prompt goes in each episode: a fixed frame, the last one, or the grasp.

`prompt.frame` (or a prompts file's per-episode `frame`, which wins) is an episode-relative
index (negative counts from the end: -1 = the last frame), `last`, or `grasp`: the frame where
the gripper has closed, found from a low-dim key the reader's `arrays` op returns
(`prompt.grasp`: key, dim, threshold, closing smaller|larger). When the signal never closes,
the prompt falls back to the last frame, with a note in the report and in --dry-run.

Usage:
    g = find_grasp(state[:, 7], closing="smaller")       # GraspResult(frame=27, crossing=24, ...)
    choices = resolve_frames(cfg, ds, episodes, prompts, keys, reader)   # {episode: FrameChoice}
    choices[0].frame, choices[0].why        # 27, "grasp at t=27 from right_state[7] (...)"

The finder: levels are the extremes of a 3-frame running median; the threshold is the
midpoint unless given; a closing is a crossing into the closed side with hysteresis that stays
closed for `hold` frames; the last such closing wins (a failed first grasp, then a regrasp);
its frame is the first one where the signal has settled at its held level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.calls import RetryPolicy, call
from orchestrator.config import GraspConfig, PipelineConfig
from protocol.client import Client
from protocol.errors import RemoteError, ServiceUnavailable
from services.reader.api import CONTRACT as READER

# Defaults per low-dim key: DexGraspVLA's 13-d right_state (7 arm joints, then the hand's 6
# joint values; the demo's dim 7 is the gripper opening in metres) and UMI's gripper width.
KEY_DEFAULTS: dict[str, dict[str, Any]] = {
    "right_state": {"dim": 7, "closing": "smaller"},
    "robot0_gripper_width": {"dim": 0, "closing": "smaller"},
}
NOISE_FACTOR = 8.0  # the open-closed range must exceed this many noise sigmas (auto threshold)
SETTLE = 0.1  # settled: within this fraction of the open-held range of the held level


class FrameError(ValueError):
    """A frame spec or grasp setting that cannot be resolved; the message names the field."""


@dataclass(frozen=True)
class GraspResult:
    frame: int | None  # the grasp frame; None: no closing found
    reason: str  # why (or why not), for the report and --dry-run
    crossing: int | None = None  # first frame past the threshold of the chosen closing
    threshold: float | None = None
    reopened: int | None = None  # the gripper opened again at this frame (after the grasp)
    closings: int = 0  # closings found (the last one is used)


def _noise_sigma(s: np.ndarray) -> float:
    """Noise std from the median absolute first difference (robust to the closing itself)."""
    if len(s) < 3:
        return 0.0
    return float(1.4826 * np.median(np.abs(np.diff(s))) / np.sqrt(2.0))


def _median3(s: np.ndarray) -> np.ndarray:
    if len(s) < 3:
        return s
    p = np.concatenate([s[:1], s, s[-1:]])
    return np.median(np.stack([p[:-2], p[1:-1], p[2:]]), axis=0)


def find_grasp(signal: np.ndarray, closing: str = "smaller", threshold: float | None = None,
               hold: int = 3, min_range: float = 0.0) -> GraspResult:  # fmt: skip
    """The frame where a gripper signal (T,) closes; see the module docstring."""
    s = np.asarray(signal, np.float64).reshape(-1)
    n = len(s)
    if closing not in ("smaller", "larger"):
        raise FrameError(f"closing: {closing!r} is not 'smaller' or 'larger'")
    if n == 0:
        return GraspResult(None, "the signal is empty")
    if not np.isfinite(s).all():
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        return GraspResult(None, f"the signal is not finite at t={bad}")
    sign = 1.0 if closing == "smaller" else -1.0
    s = s * sign  # from here on, closed = small
    thr = None if threshold is None else float(threshold) * sign
    med = _median3(s)  # levels from a 3-frame running median: single-frame spikes ignored
    hi, lo = float(med.max()), float(med.min())
    sigma = _noise_sigma(s)
    span = hi - lo
    if thr is None:
        if span <= max(min_range, NOISE_FACTOR * sigma) or span <= 1e-12:
            return GraspResult(None, f"the signal barely moves (range {span:.4g}, noise "
                                     f"{sigma:.2g}): no closing")  # fmt: skip
        thr = (hi + lo) / 2.0
        band = max(0.1 * span, 2.0 * sigma)
    else:
        band = 2.0 * sigma
    closed = s <= thr - band
    opened = s >= thr + band
    events: list[tuple[int, int, int]] = []  # (crossing, first closed, end of the closed run)
    state_open = not bool(s[0] <= thr)
    t = 0
    while t < n:
        if state_open and closed[t]:
            cross = t
            while cross > 0 and s[cross - 1] <= thr:
                cross -= 1
            end = t
            while end < n and not opened[end]:
                end += 1
            events.append((cross, t, end))
            state_open, t = True, end
            continue
        if not state_open and opened[t]:
            state_open = True
        t += 1
    held = [e for e in events if e[2] - e[1] >= hold]
    show = lambda v: f"{v * sign:.4g}"  # noqa: E731 - in the key's own units
    if not held:
        if events:
            why = f"closed for fewer than {hold} frames (t={events[-1][1]})"
        elif s[0] <= thr:
            why = f"closed from t=0 and never opens past {show(thr)}"
        else:
            why = f"never crosses {show(thr)}"
        return GraspResult(None, why, threshold=thr * sign, closings=0)
    cross, first, end = held[-1]
    level = float(np.median(s[first:end]))
    tol = max(SETTLE * max(hi - level, 0.0), 3.0 * sigma) * (1 + 1e-9) + 1e-12
    settled = next((i for i in range(cross, end) if abs(s[i] - level) <= tol), first)
    reopened = end if end < n else None
    why = f"crosses {show(thr)} at t={cross}, held at {show(level)} from t={settled}"
    if reopened is not None:
        why += f", re-opens at t={reopened}"
    if len(held) > 1:
        why += f" (last of {len(held)} closings)"
    return GraspResult(settled, why, cross, thr * sign, reopened, len(held))


@dataclass(frozen=True)
class FrameChoice:
    """The target prompt's frame in one episode, and why (shown by --dry-run, in the report)."""

    frame: int
    why: str  # "frame 0" | "last" | "grasp at t=.. from key[dim] (...)" | "override ..."
    spec: int | str  # what was asked: an index, "last" or "grasp"
    note: str | None = None  # a fallback happened (grasp never found)
    held: bool = False  # ask the VLM which object the gripper holds, then box that

    def as_dict(self) -> dict:
        d = {"frame": self.frame, "why": self.why, "spec": self.spec}
        if self.note:
            d["note"] = self.note
        return d


def parse_frame_spec(v: Any, where: str) -> int | str:
    """An int (negative = from the end), 'last' or 'grasp'; FrameError naming `where`."""
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise FrameError(f"{where}: expected an index, 'last' or 'grasp', got {v!r}")
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("last", "grasp"):
            return s
        try:
            return int(s)
        except ValueError:
            raise FrameError(
                f"{where}: {v!r} is not an index, 'last' or 'grasp' (e.g. 0, -1, last, grasp)"
            ) from None
    return v


def index_frame(spec: int, n: int, where: str) -> int:
    """Episode-relative index of an int spec; FrameError when outside the episode."""
    f = spec + n if spec < 0 else spec
    if not 0 <= f < n:
        raise FrameError(f"{where}: frame {spec} is outside the episode's frames 0-{n - 1}"
                         f"{' (negative counts from the end: -1 is the last)' if spec < 0 else ''}")  # fmt: skip
    return f


def grasp_key(g: GraspConfig, keys: dict[str, dict]) -> tuple[str, int, str]:
    """(key, dim, closing) of the gripper signal, defaults filled in; FrameError when unknown."""
    lowdim = sorted(k for k, s in keys.items() if len(s.get("shape", ())) in (1, 2))
    key = g.key
    if key is None:
        key = next((k for k in KEY_DEFAULTS if k in keys), None)
        if key is None:
            raise FrameError(
                f"prompt.grasp.key: the buffer has none of {list(KEY_DEFAULTS)}; name the "
                f"gripper key (its low-dim keys: {lowdim})"
            )
    if key not in keys:
        raise FrameError(f"prompt.grasp.key: {key!r} is not in the buffer (low-dim keys: {lowdim})")
    shape = list(keys[key].get("shape", ()))
    d = KEY_DEFAULTS.get(key, {})
    dim = (
        g.dim
        if g.dim is not None
        else d.get("dim", 0 if len(shape) == 1 or shape[1] == 1 else None)
    )
    if dim is None:
        raise FrameError(f"prompt.grasp.dim: data/{key} is {shape}; say which dimension is the "
                         "gripper opening")  # fmt: skip
    width = 1 if len(shape) == 1 else shape[1]
    if len(shape) not in (1, 2) or not 0 <= dim < width:
        raise FrameError(f"prompt.grasp.dim: {dim} is not a dimension of data/{key} {shape}")
    return key, dim, g.closing or d.get("closing", "smaller")


def grasp_choice(signal: np.ndarray, g: GraspConfig, key: str, dim: int, closing: str,
                 n: int) -> FrameChoice:  # fmt: skip
    """The grasp frame of one episode from its (T,) signal, or the last frame with a note."""
    res = find_grasp(signal, closing, g.threshold, g.hold)
    src = f"{key}[{dim}]"
    if res.frame is None:
        note = f"no grasp in {src}: {res.reason}; prompting the last frame"
        return FrameChoice(n - 1, f"last (fallback: {res.reason})", "grasp", note, True)
    return FrameChoice(res.frame, f"grasp at t={res.frame} from {src} ({res.reason})", "grasp",
                       held=True)  # fmt: skip


def episode_spec(cfg: PipelineConfig, ep: int, prompts: Any) -> tuple[int | str, str]:
    """The frame spec of an episode: the prompts file's `frame` (override) or prompt.frame."""
    entry = prompts.episodes.get(ep) if prompts is not None else None
    over = getattr(entry, "frame", None) if entry is not None else None
    if over is not None:
        return parse_frame_spec(over, f"{prompts.source}: episodes.{ep}.frame"), "override"
    return parse_frame_spec(cfg.prompt.frame, "prompt.frame"), "config"


def needs_resolution(cfg: PipelineConfig, prompts: Any, episodes: list[int]) -> bool:
    """True unless every episode's frame is a plain non-negative index (the old behaviour)."""
    if cfg.pipeline != "rgbm" or cfg.prompt.source == "file":
        return False
    return any(
        not (isinstance(s, int) and s >= 0) or src == "override"
        for s, src in (episode_spec(cfg, ep, prompts) for ep in episodes)
    )


def resolve_frames(cfg: PipelineConfig, ds: Any, episodes: list[int], prompts: Any,
                   keys: dict[str, dict], reader: Client | None,
                   policy: RetryPolicy | None = None) -> tuple[dict[int, FrameChoice], list[str]]:  # fmt: skip
    """Each episode's prompt frame (reads the gripper key with `arrays` for `grasp`).
    Returns ({episode: FrameChoice}, errors)."""
    out: dict[int, FrameChoice] = {}
    errors: list[str] = []
    held_default = cfg.prompt.describe
    gkey = None
    for ep in episodes:
        start, stop = ds.bounds(ep)
        n = stop - start
        try:
            spec, src = episode_spec(cfg, ep, prompts)
            by = "" if src == "config" else f" (override: {prompts.source}: episodes.{ep}.frame)"
            if spec == "grasp":
                if gkey is None:
                    gkey = grasp_key(cfg.prompt.grasp, keys)
                key, dim, closing = gkey
                if reader is None:
                    raise FrameError("prompt.frame: grasp needs the reader service")
                body = READER.request("arrays", dataset=ds.dataset, episode=ep, keys=[key])
                try:
                    reply = call(reader, "arrays", body)
                except (RemoteError, ServiceUnavailable) as e:
                    raise FrameError(f"episode {ep}: reader arrays data/{key}: {e}") from None
                arr = reply["arrays"][key]
                sig = np.asarray(arr).reshape(n, -1)[:, dim]
                c = grasp_choice(sig, cfg.prompt.grasp, key, dim, closing, n)
                out[ep] = FrameChoice(
                    c.frame, c.why + by, c.spec, c.note, _held(held_default, True)
                )
            elif spec == "last":
                out[ep] = FrameChoice(n - 1, f"last (t={n - 1}){by}", spec,
                                      held=_held(held_default, True))  # fmt: skip
            else:
                f = index_frame(int(spec), n, f"episode {ep}: frame")
                why = f"frame {spec}" + (f" (t={f})" if spec < 0 else "") + by
                out[ep] = FrameChoice(f, why, spec, held=_held(held_default, int(spec) < 0))
        except FrameError as e:
            errors.append(str(e))
    return out, errors


def _held(describe: str, end_frame: bool) -> bool:
    """Whether to ask the VLM for the held object: describe held | instruction | auto."""
    if describe == "auto":
        return end_frame
    return describe == "held"
