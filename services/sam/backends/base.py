"""The sam service's backend seam: one small abstract class every model family implements.

Usage:
    from services.sam.backends import create_backend
    backend = create_backend("classical", {"device": "cpu"})
    backend.setup()                                  # load weights once, at service start
    state = backend.init_state(frames)               # frames: (T, H, W, 3) uint8, the session's store
    masks = backend.add_prompt(state, frame=0, obj_id=1, points=None, labels=None,
                               box=np.array([10, 10, 80, 60], np.float32), mask=None, text=None)
    for t, per_obj in backend.propagate(state, "both", start=None, max_frames=None):
        ...                                          # per_obj: {obj_id: (H, W) bool}

Contract (the session layer in services/sam/sessions.py guarantees the inputs):
- All coordinates are ABSOLUTE pixels of the session's frames (x right, y down); relative
  [0, 1] prompts were converted once by the session layer. Points lie inside the image, labels
  are 0 (background) / 1 (foreground), len(points) == len(labels), boxes are x0 < x1, y0 < y1.
- A prompt kind is only passed when it is in `prompt_kinds`; others are refused with
  `unsupported` before the backend is called. One add_prompt call may carry several kinds
  at once (e.g. box + points), as SAM does.
- `frames` given to init_state is the session's preallocated store, filled in place by
  put_frames as chunks arrive. Backends must not copy it wholesale and must not write to it;
  they read frames when they need them (all frames a prompt/propagation touches are present
  by then - the session layer checks).
- The session layer serialises calls on one state (no two calls on the same state at once).
- Masks returned are (H, W) bool arrays the backend no longer mutates (the session stores
  them bit-packed). Objects are integer ids chosen by the caller; new ids may appear after a
  propagation (SAM2-style re-prompting), and propagate yields every object with a prompt.
- Errors: raise ValueError for input the backend cannot handle (becomes bad_request); anything
  else becomes `internal`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator

import numpy as np

PROMPT_KINDS = frozenset({"points", "box", "mask", "text"})
DIRECTIONS = ("forward", "backward", "both")


class SamBackend(abc.ABC):
    """A promptable video (and image) segmenter behind the sam service."""

    name: str = "base"
    # Which prompt kinds add_prompt accepts: a subset of PROMPT_KINDS.
    prompt_kinds: frozenset[str] = frozenset()
    # Where it computes: "cpu", "cuda", "cuda:1", ...
    device: str = "cpu"

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load model/weights. Called once at service start, before any other method."""

    @abc.abstractmethod
    def init_state(self, frames: np.ndarray) -> object:
        """Start per-session state over `frames` (T, H, W, 3) uint8 RGB, filled lazily."""

    @abc.abstractmethod
    def add_prompt(
        self,
        state: object,
        frame: int,
        obj_id: int,
        points: np.ndarray | None,  # (N, 2) float32, absolute pixels (x, y)
        labels: np.ndarray | None,  # (N,) int32, 1 = foreground, 0 = background
        box: np.ndarray | None,  # (4,) float32 xyxy, absolute pixels
        mask: np.ndarray | None,  # (H, W) bool
        text: str | None,
    ) -> dict[int, np.ndarray]:
        """Add/refine a prompt for obj_id on `frame`. Returns {obj_id: (H, W) bool} on that frame
        (at least obj_id; text prompts may yield several objects)."""

    @abc.abstractmethod
    def propagate(
        self,
        state: object,
        direction: str,  # "forward" | "backward" | "both"
        start: int | None,  # first frame; None = from the prompted keyframes
        max_frames: int | None,  # at most this many frames per direction; None = to the end
    ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Yield (frame, {obj_id: (H, W) bool}) for the frames it segments, covering the ranges
        `propagation_windows` gives. Updates are per object: an object missing from a yielded
        dict keeps its earlier result on that frame; when (frame, obj) is yielded twice the last
        yield wins. Prompted frames may be yielded too (their prompt mask)."""

    @abc.abstractmethod
    def remove_object(self, state: object, obj_id: int) -> None:
        """Forget obj_id and its prompts in this state."""

    @abc.abstractmethod
    def reset(self, state: object) -> None:
        """Forget all prompts and results; keep the frames."""

    def close(self, state: object) -> None:  # noqa: B027 - optional hook
        """Free per-session resources (GPU memory, caches). Called once per session."""

    @abc.abstractmethod
    def segment_image(
        self,
        image: np.ndarray,  # (H, W, 3) uint8 RGB
        boxes: np.ndarray | None,  # (n, 4) float32 xyxy absolute pixels
        points: np.ndarray | None,  # (N, 2) float32 absolute pixels
        labels: np.ndarray | None,  # (N,) int32
    ) -> np.ndarray:
        """Single-image segmentation: one mask per box (points shared by every box), or one
        mask from the points when no box is given. Returns (n, H, W) bool."""

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
