"""SAM3 backend: Meta's SAM3 video model with text, box and point prompts. CUDA only.

Usage (configs/services.yaml, sam section; run in a CUDA machine's sam3 environment):
    backend: sam3
    options: {checkpoint: /models/sam3.pt, bpe_path: /models/bpe_simple_vocab_16e6.txt.gz}
Flow (seed 000, arm-only): add_prompt(text="robot arm", obj_id=1) -> propagate("both") ->
add_prompt(points, obj_id=1) refines an arm -> add_prompt(points, obj_id=3) adds a gripper as
a NEW object -> propagate("both") again.

SAM3 semantics the backend maps onto the session contract (conversions in sam3_convert.py):
- A text and/or box prompt is a "concept": SAM3 restarts the session and detects every
  matching instance on every frame. It is accepted only while no other object exists
  (reset_session first to change it). Its instances become the caller's obj_id (option
  text_instances: union) or obj_id, next free id, ... (separate). Boxes go in as normalised
  [x, y, w, h] exemplars: SAM3 finds all objects like the box, not just the one inside it.
- Points need SAM3 outputs cached on that frame: prompt a concept and propagate first (the
  seed's bootstrap); otherwise add_prompt answers bad_request saying so. Points on an obj_id
  with instances refine the instance under the first foreground point; on a new obj_id they
  start a new tracked object.
- Masks come back at the session's full resolution as bool; objects absent on a frame are
  yielded all-False. segment_image and mask prompts are not offered (use sam2).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from services.sam.backends.base import PassMasks, Prompt, SamBackend, Window
from services.sam.backends.sam3_convert import (
    TEXT_INSTANCES,
    Sam3IdMap,
    outputs_to_masks,
    pick_instance,
    plan_calls,
    points_abs_to_rel,
    resize_mask,
    xyxy_to_xywh_norm,
)

log = logging.getLogger(__name__)


@dataclass
class Sam3State:
    frames: np.ndarray  # (T, H, W, 3) uint8, the session's store (not owned)
    inference: dict | None  # SAM3's inference_state
    ids: Sam3IdMap
    # caller ids SAM3 tracks (prompted): outputs_to_masks yields them all-False where absent.
    # Not keyframes (the session layer owns those): just which ids exist.
    prompted: set[int] = field(default_factory=set)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])  # (H, W)


class Sam3Backend(SamBackend):
    """SAM3 open-vocabulary video segmentation (Sam3VideoInferenceWithInstanceInteractivity)."""

    name = "sam3"
    prompt_kinds = frozenset({"text", "box", "points"})
    capabilities = frozenset({"text_prompts"})  # no segment_image, no bounded windows

    def __init__(
        self,
        checkpoint: str | None = None,  # sam3.pt; None = download facebook/sam3 (gated, HF login)
        bpe_path: str | None = None,  # tokenizer vocab; None = look inside the sam3 install
        device: str = "cuda",  # "cuda" or "cuda:N"; CPU is not supported by SAM3
        text_instances: str = "union",  # "union" or "separate", see the module docstring
        apply_temporal_disambiguation: bool = True,  # SAM3's hot-start/suppression heuristics
        compile: bool = False,  # torch.compile SAM3 (slow first propagation)
        offload_video_to_cpu: bool = False,  # resize frames on the CPU instead of the GPU
    ) -> None:
        if not isinstance(device, str) or not (device == "cuda" or device.startswith("cuda:")):
            raise ValueError(f"device: {device!r}; SAM3 runs on CUDA only: use cuda or cuda:N")
        if text_instances not in TEXT_INSTANCES:
            raise ValueError(
                f"text_instances: {text_instances!r} is not one of {list(TEXT_INSTANCES)}"
            )
        self.checkpoint = checkpoint
        self.bpe_path = bpe_path
        self.device = device
        self.text_instances = text_instances
        self.apply_temporal_disambiguation = bool(apply_temporal_disambiguation)
        self.compile = bool(compile)
        self.offload_video_to_cpu = bool(offload_video_to_cpu)
        self.model = None

    # ---- lifecycle -------------------------------------------------------------------
    def setup(self) -> None:
        from services.sam.backends.sam3_state import (
            check_state_keys,
            require_cuda,
            resolve_bpe_path,
        )

        require_cuda(self.device)  # first: a clear message before any heavy import
        import os

        import torch

        try:
            import sam3
            from sam3.model_builder import build_sam3_video_model
        except ImportError as e:
            raise RuntimeError(
                f"sam3 backend: {e}; install services/sam/requirements-sam3.txt in this venv"
            ) from e
        bpe = resolve_bpe_path(self.bpe_path, os.path.dirname(sam3.__file__))
        torch.cuda.set_device(torch.device(self.device))
        self.model = build_sam3_video_model(
            checkpoint_path=self.checkpoint,
            load_from_HF=self.checkpoint is None,
            bpe_path=bpe,
            apply_temporal_disambiguation=self.apply_temporal_disambiguation,
            device="cuda",
            compile=self.compile,
        ).eval()
        check_state_keys(type(self.model))
        log.info("sam3 ready on %s (checkpoint %s)", self.device, self.checkpoint or "HF")

    def info(self) -> dict:
        return {
            "model": "sam3",
            "checkpoint": self.checkpoint or "facebook/sam3 (Hugging Face)",
            "device": self.device,
            "text_instances": self.text_instances,
        }

    def _ready(self):
        if self.model is None:
            raise RuntimeError("sam3 backend: setup() has not run")
        return self.model

    # ---- sessions --------------------------------------------------------------------
    def init_state(self, frames: np.ndarray) -> Sam3State:
        from services.sam.backends.sam3_state import memory_inference_state

        inf = memory_inference_state(self._ready(), frames, self.offload_video_to_cpu)
        return Sam3State(frames=frames, inference=inf, ids=Sam3IdMap(self.text_instances))

    def add_prompt(self, state: Sam3State, prompt: Prompt) -> dict[int, np.ndarray]:
        import torch

        frame, obj_id, points, labels = prompt.frame, prompt.obj_id, prompt.points, prompt.labels
        box, mask, text = prompt.box, prompt.mask, prompt.text
        if mask is not None:
            raise ValueError("mask: SAM3's video API takes no mask prompts; use sam2")
        h, w = state.size
        if text is not None or box is not None:
            if points is not None:
                raise ValueError(
                    "points: SAM3 takes points apart from text/box; send the text/box prompt, "
                    "propagate, then send the points in another add_prompt"
                )
            self._check_concept(state, obj_id)
            state.ids.start_concept(obj_id)
            state.prompted = {obj_id}
            with torch.inference_mode():
                _, outputs = self._ready().add_prompt(
                    state.inference,
                    frame,
                    text_str=text,
                    boxes_xywh=None if box is None else xyxy_to_xywh_norm(box, w, h),
                    box_labels=None if box is None else [1],
                )
            return outputs_to_masks(outputs, state.ids, h, w, all_ids=[obj_id])
        if points is None:
            raise ValueError("add_prompt: give text, a box or points (+labels)")
        known = set(state.ids.to_ext)
        sid = self._point_target(state, frame, obj_id, points, labels)
        try:
            with torch.inference_mode():
                res = self._ready().add_prompt(
                    state.inference,
                    frame,
                    points=points_abs_to_rel(points, w, h),
                    point_labels=[int(v) for v in labels],
                    obj_id=sid,
                )
        except Exception:
            if sid not in known:
                state.ids.to_ext.pop(sid, None)  # the new object never made it into SAM3
            raise
        if len(res) != 2:  # SAM3 returns 4 values when it refuses a new object
            state.ids.to_ext.pop(sid, None)
            raise ValueError(
                f"obj_id: SAM3 refused a new object (already tracking its max_num_objects="
                f"{getattr(self.model, 'max_num_objects', '?')}); remove an object first"
            )
        state.prompted.add(obj_id)
        masks = outputs_to_masks(res[1], state.ids, h, w, all_ids=[obj_id])
        return {obj_id: masks[obj_id]}

    def restarts(self, prompt: Prompt) -> bool:
        return prompt.text is not None or prompt.box is not None  # a concept: a new session

    @staticmethod
    def _check_concept(state: Sam3State, obj_id: int) -> None:
        others = sorted((set(state.ids.external_ids()) | state.prompted) - {obj_id})
        if others:
            raise ValueError(
                f"text: a text/box prompt restarts SAM3's whole session and would drop objects "
                f"{others}; give one text/box prompt per session (reset_session to change it) "
                "and add or refine single objects with points"
            )

    def _point_target(
        self, state: Sam3State, frame: int, obj_id: int, points: np.ndarray, labels: np.ndarray
    ) -> int:
        """The SAM3 object id a point prompt on `obj_id` goes to (a new one if needed)."""
        inf = state.inference
        cached = inf["cached_frame_outputs"].get(frame)
        if cached is None:
            raise ValueError(
                f"points: SAM3 has no outputs on frame {frame} yet; points need them (SAM3 "
                "asserts on cached outputs): add a text or box prompt and propagate first, "
                "then refine or add objects with points"
            )
        sids = state.ids.sam3_ids(obj_id)
        if not sids:
            return state.ids.new_point_object(obj_id, inf["tracker_metadata"].get("max_obj_id", -1))
        if len(sids) == 1:
            return sids[0]
        h, w = state.size
        cands = {s: resize_mask(to_numpy(cached[s]), h, w) for s in sids if s in cached}
        sid = pick_instance(cands, points, labels)
        if sid is None:
            raise ValueError(
                f"points: obj_id {obj_id} holds {len(sids)} SAM3 instances and none contains the "
                f"first foreground point on frame {frame}; click inside the instance to refine "
                "(or use text_instances: separate)"
            )
        return sid

    def propagate(self, state: Sam3State, windows: list[Window]) -> Iterator[tuple[int, PassMasks]]:
        model = self._ready()
        h, w = state.size
        for call in plan_calls([(win.direction, win.lo, win.hi) for win in windows]):
            gen = model.propagate_in_video(
                state.inference,
                start_frame_idx=call.start_frame_idx,
                max_frame_num_to_track=call.max_frame_num_to_track,
                reverse=call.reverse,
            )
            try:
                direction = "backward" if call.reverse else "forward"
                for t, outputs in gen:
                    known = set(state.ids.external_ids()) | state.prompted
                    masks = outputs_to_masks(outputs, state.ids, h, w, all_ids=known)
                    yield int(t), PassMasks(direction, masks)
            finally:
                gen.close()

    def remove_object(self, state: Sam3State, obj_id: int) -> None:
        import torch

        state.prompted.discard(obj_id)
        tracked = state.inference["tracker_metadata"].get("obj_ids_all_gpu")
        tracked = set() if tracked is None else {int(s) for s in np.asarray(tracked)}
        with torch.inference_mode():
            for sid in state.ids.remove(obj_id):
                if sid in tracked:  # SAM3 asserts the object exists
                    self._ready().remove_object(state.inference, sid, is_user_action=True)

    def reset(self, state: Sam3State) -> None:
        import torch

        with torch.inference_mode():
            self._ready().reset_state(state.inference)
        state.ids.clear()
        state.prompted.clear()

    def close(self, state: Sam3State) -> None:
        import torch

        if state.inference is not None:
            state.inference.clear()
            state.inference = None
        torch.cuda.empty_cache()

    def segment_image(
        self,
        image: np.ndarray,
        boxes: np.ndarray | None,
        points: np.ndarray | None,
        labels: np.ndarray | None,
    ) -> np.ndarray:
        from protocol.errors import Unsupported

        raise Unsupported(
            "segment_image: not offered by the sam3 backend (SAM3 box prompts are exemplars "
            "that find every similar object, not the object in the box); use backend sam2"
        )


def to_numpy(x) -> np.ndarray:
    """A torch tensor (any device) or array -> numpy array."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
