"""The sam service's backend seam: one small abstract class every model family implements.

Usage:
    from services.sam.backends import create_backend
    from services.sam.backends.base import Prompt
    backend = create_backend("classical", {"device": "cpu"})
    backend.setup()                                  # load weights once, at service start
    state = backend.init_state(frames)               # frames: (T, H, W, 3) uint8, the session's store
    masks = backend.add_prompt(state, Prompt(0, 1, box=np.array([10, 10, 80, 60], np.float32)))
    for t, per_obj in backend.propagate(state, windows):   # windows: the session layer's plan
        ...                                          # per_obj: PassMasks {obj_id: (H, W) bool}

Contract (the session layer in services/sam/sessions.py guarantees the inputs):
- The session layer alone owns keyframes (which (object, frame) were prompted) and the
  propagation windows (which frames a propagate call covers, and per object which pass
  computes which frame: merge.plan_propagation). A backend keeps its model's own state
  (SAM2's memory bank, classical's prompt masks) but never recomputes windows or keyframes.
- All coordinates are ABSOLUTE pixels of the session's frames (x right, y down); relative
  [0, 1] prompts were converted once by the session layer. Points lie inside the image, labels
  are 0 (background) / 1 (foreground), len(points) == len(labels), boxes are x0 < x1, y0 < y1.
- A prompt kind is only passed when it is in `prompt_kinds`; others are refused with
  `unsupported` before the backend is called. One Prompt may carry several kinds at once
  (e.g. box + points), as SAM does.
- Optional abilities are declared in `capabilities` (CAPABILITIES): "segment_image" (single
  images), "text_prompts" (the "text" prompt kind), "bounded" (propagate over windows that
  start anywhere and cover only some objects' frames: bounded re-propagation). The session
  layer refuses an ability a backend does not declare with `unsupported`.
- `frames` given to init_state is the session's preallocated store, filled in place by
  put_frames as chunks arrive. Backends must not copy it wholesale and must not write to it;
  they read frames when they need them (all frames a prompt/propagation touches are present
  by then - the session layer checks).
- The session layer serialises calls on one state (no two calls on the same state at once).
- Masks returned are (H, W) bool arrays the backend no longer mutates (the session stores
  them bit-packed). Objects are integer ids chosen by the caller; new ids may appear after a
  prompt (SAM3 text instances) and in propagation.
- propagate tags every yielded dict with the pass it belongs to (`PassMasks(direction, masks)`),
  so the session layer applies the both-direction merge rule (`pass_distances`) the same way
  for every backend: where both passes of one call yield an (object, frame), the pass nearer
  to one of the object's keyframes wins, ties go to forward.
- Errors: raise ValueError for input the backend cannot handle (becomes bad_request); anything
  else becomes `internal`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from protocol.vocab import DIRECTIONS

PROMPT_KINDS = frozenset({"points", "box", "mask", "text"})
PASSES = ("forward", "backward")
# segment_image: single images; text_prompts: the "text" prompt kind; bounded: propagate over
# windows that start anywhere and recompute only the frames given per object
CAPABILITIES = frozenset({"segment_image", "text_prompts", "bounded"})


@dataclass(frozen=True, eq=False)
class Prompt:
    """One add_prompt call, validated by the session layer (absolute pixels, see the contract)."""

    frame: int
    obj_id: int
    points: np.ndarray | None = None  # (N, 2) float32 abs px (x, y)
    labels: np.ndarray | None = None  # (N,) int32, 1 = foreground, 0 = background
    box: np.ndarray | None = None  # (4,) float32 xyxy abs px
    mask: np.ndarray | None = None  # (H, W) bool
    text: str | None = None

    @property
    def kinds(self) -> list[str]:
        """The prompt kinds this call carries, e.g. ["points", "box"]."""
        pairs = (("points", self.points), ("box", self.box), ("mask", self.mask))
        return [k for k, v in pairs if v is not None] + (["text"] if self.text is not None else [])


@dataclass(frozen=True, eq=False)
class Window:
    """One pass of a propagate call over frames [lo, hi] (inclusive), as the session planned it.

    forward windows are processed lo -> hi, backward ones hi -> lo. `sources[obj_id]` is a
    (T,) int64 array: for each frame this window computes for that object, the distance to the
    object's source in this pass (its nearest keyframe on the pass's side; an earlier result
    just outside the window counts n_frames further), -1 where this window does not compute the
    object (the other pass owns the frame, nothing to start from, or a bounded call keeps the
    stored mask). Objects absent from `sources` are not computed by this window. `bounded`:
    the window recomputes only some objects' frames; objects not computed keep their stored
    masks there (a backend with non-overlap lets those compete). A backend that computes every
    object on every frame of a window (SAM2, SAM3) may ignore `sources`: the session layer
    keeps only what the plan asks for (merge.py).
    """

    direction: str  # "forward" | "backward"
    lo: int
    hi: int
    sources: Mapping[int, np.ndarray] = field(default_factory=dict)
    bounded: bool = False

    def __post_init__(self) -> None:
        if self.direction not in PASSES:
            raise ValueError(
                f"direction: a pass is 'forward' or 'backward', got {self.direction!r}"
            )
        if not 0 <= self.lo <= self.hi:
            raise ValueError(f"window: [{self.lo}, {self.hi}] is not a frame range")

    @property
    def frames(self) -> range:
        """The window's frames in processing order."""
        if self.direction == "forward":
            return range(self.lo, self.hi + 1)
        return range(self.hi, self.lo - 1, -1)

    def __len__(self) -> int:
        return self.hi - self.lo + 1


class SamBackend(abc.ABC):
    """A promptable video (and image) segmenter behind the sam service."""

    name: str = "base"
    # Which prompt kinds add_prompt accepts: a subset of PROMPT_KINDS.
    prompt_kinds: frozenset[str] = frozenset()
    # Optional abilities, a subset of CAPABILITIES
    capabilities: frozenset[str] = frozenset()
    # Where it computes: "cpu", "cuda", "cuda:1", ...
    device: str = "cpu"

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load model/weights. Called once at service start, before any other method."""

    @abc.abstractmethod
    def init_state(self, frames: np.ndarray) -> object:
        """Start per-session state over `frames` (T, H, W, 3) uint8 RGB, filled lazily."""

    @abc.abstractmethod
    def add_prompt(self, state: object, prompt: Prompt) -> dict[int, np.ndarray]:
        """Add/refine a prompt for prompt.obj_id on prompt.frame. Returns {obj_id: (H, W) bool}
        on that frame: at least prompt.obj_id; other objects whose mask the prompt changed
        there (non-overlap), and new objects it created (text prompts may find several).
        The session records the frame as a keyframe of prompt.obj_id and of the new objects."""

    def restarts(self, prompt: Prompt) -> bool:
        """Whether this prompt restarts the model's whole session (SAM3's text/box concept):
        the session layer then forgets every earlier keyframe before recording this one."""
        return False

    @abc.abstractmethod
    def propagate(
        self, state: object, windows: Sequence[Window]
    ) -> Iterator[tuple[int, PassMasks]]:
        """Segment the frames of `windows`, in order (each in its processing order), yielding
        (frame, PassMasks(window.direction, {obj_id: (H, W) bool})). Updates are per object:
        an object missing from a yielded dict keeps its earlier result on that frame. When one
        call yields an (object, frame) from both passes, the session layer keeps the one the
        merge rule picks (`pass_distances`); from the same pass twice, the last. Prompted
        frames may be yielded too (their prompt mask)."""

    @abc.abstractmethod
    def remove_object(self, state: object, obj_id: int) -> None:
        """Forget obj_id and its prompts in this state."""

    @abc.abstractmethod
    def reset(self, state: object) -> None:
        """Forget all prompts and results; keep the frames."""

    def close(self, state: object) -> None:  # noqa: B027 - optional hook
        """Free per-session resources (GPU memory, caches). Called once per session."""

    def segment_image(
        self,
        image: np.ndarray,  # (H, W, 3) uint8 RGB
        boxes: np.ndarray | None,  # (n, 4) float32 xyxy absolute pixels
        points: np.ndarray | None,  # (N, 2) float32 absolute pixels
        labels: np.ndarray | None,  # (N,) int32
    ) -> np.ndarray:
        """Single-image segmentation (capability "segment_image"): one mask per box (points
        shared by every box), or one mask from the points when no box is given. Returns
        (n, H, W) bool."""
        raise NotImplementedError(f"{self.name}: segment_image is not a declared capability")

    def info(self) -> dict:
        """Extra fields for the service's `info` reply (model, checkpoint, ...)."""
        return {}


def propagation_windows(
    keyframes: set[int] | list[int],
    n_frames: int,
    direction: str,
    start: int | None,
    max_frames: int | None,
) -> list[tuple[str, int, int]]:
    """The inclusive frame ranges one propagate call covers, in processing order.

    forward:  from `start` (default: the earliest prompted frame) up to the last frame;
    backward: from `start` (default: the latest prompted frame) down to frame 0;
    both:     forward, then backward. `max_frames` caps each range's length.
    Returns [(direction, first, last), ...] with first <= last; a backward range is processed
    from last down to first. Raises ValueError on bad arguments (the session layer has
    already validated them, so this is a programming error there).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: {direction!r} is not one of {DIRECTIONS}")
    if start is None and not keyframes:
        raise ValueError("propagate: no prompts yet; call add_prompt first")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames: must be >= 1, got {max_frames}")
    span = n_frames if max_frames is None else max_frames
    out: list[tuple[str, int, int]] = []
    if direction in ("forward", "both"):
        s = min(keyframes) if start is None else start
        out.append(("forward", s, min(n_frames - 1, s + span - 1)))
    if direction in ("backward", "both"):
        s = max(keyframes) if start is None else start
        out.append(("backward", max(0, s - span + 1), s))
    return out


class PassMasks(dict):
    """One propagate step's {obj_id: (H, W) bool}, tagged with the pass that produced it.

    A plain dict for every reader; `direction` ("forward" | "backward") tells the session
    layer which of the call's windows the masks belong to. Wrappers that re-yield the same
    object keep the tag.
    """

    __slots__ = ("direction",)

    def __init__(self, direction: str, masks: Mapping[int, np.ndarray] | None = None) -> None:
        if direction not in ("forward", "backward"):
            raise ValueError(f"direction: a pass is 'forward' or 'backward', got {direction!r}")
        super().__init__(masks or {})
        self.direction = direction


def pass_distances(
    keyframes: Iterable[int],
    n_frames: int,
    direction: str,  # "forward" | "backward": one pass
    lo: int,
    hi: int,  # the pass's window [lo, hi], as propagation_windows gives it
    continues: bool = False,
) -> np.ndarray:
    """(T,) int64: for one object, how far each frame of a pass's window is from that pass's
    source, -1 where the pass has none (and outside the window).

    The source is the object's nearest keyframe inside the window on the pass's side (at or
    before the frame in processing order). Without one, and when `continues` (the object has
    a result just before the window's first frame), it is that earlier result, placed n_frames
    further so any keyframe beats it. The merge rule for direction "both": an (object, frame)
    belongs to the pass with the smaller distance, ties and a missing backward source to the
    forward pass (`forward_owns`).
    """
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction: a pass is 'forward' or 'backward', got {direction!r}")
    if not 0 <= lo <= hi < n_frames:
        raise ValueError(f"window: [{lo}, {hi}] is not inside [0, {n_frames})")
    keys = np.array(sorted(k for k in keyframes if lo <= k <= hi), np.int64)
    padded = np.append(keys, 0)  # index 0 stays valid when there is no keyframe
    t = np.arange(lo, hi + 1)  # (n,) frames of the window
    if direction == "forward":
        i = np.searchsorted(keys, t, side="right") - 1  # latest keyframe <= t
        have = i >= 0
        dist = t - padded[np.maximum(i, 0)]
        cont = t - (lo - 1) + n_frames  # from the result on frame lo - 1
    else:
        i = np.searchsorted(keys, t, side="left")  # earliest keyframe >= t
        have = i < len(keys)
        dist = padded[i] - t
        cont = (hi + 1) - t + n_frames  # from the result on frame hi + 1
    out = np.full(n_frames, -1, np.int64)
    out[lo : hi + 1] = np.where(have, dist, cont if continues else -1)
    return out


def forward_owns(fwd: np.ndarray, bwd: np.ndarray) -> np.ndarray:
    """(T,) bool: where the forward pass owns an object's frames, from both passes'
    pass_distances (the backward pass owns `(bwd >= 0) & ~forward_owns(fwd, bwd)`)."""
    return (fwd >= 0) & ((bwd < 0) | (fwd <= bwd))
