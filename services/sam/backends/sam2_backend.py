"""SAM2-family backend: SAM2's video predictor (and image predictor) from any config + checkpoint,
for every model with SAM2's API (option `family`, sam2_build.FAMILIES: sam2, efficienttam).

Usage (configs/services.yaml, sam section; run in the .venvs/sam-sam2 environment):
    backend: sam2
    options: {checkpoint: /models/sam2.1_hiera_large.pt, device: cuda}
or in Python:
    b = Sam2Backend(checkpoint="sam2.1_hiera_tiny.pt", device="cpu"); b.setup()
    state = b.init_state(frames)                          # (T, H, W, 3) uint8 session store
    b.add_prompt(state, Prompt(0, 1, box=np.array([10, 10, 90, 80], np.float32)))
    for t, masks in b.propagate(state, windows): ...      # PassMasks {obj_id: (H, W) bool}

Prompts: points (+labels), box (xyxy) and mask, several objects, on as many keyframes as you
like; adding a prompt to a frame replaces that object's earlier points there (send all clicks
of the frame together), and a prompt on an already tracked frame refines it. New objects may
be added after a propagation. Propagation runs over the windows the session layer planned
(any start frame: bounded re-propagation too), each result tagged with its pass (the session
layer keeps, per object and frame, the pass nearer to a keyframe: the both-direction merge
rule). Inference runs under bf16 autocast, on CUDA and on CPU alike (SAM2 stores its memory
features in bf16, so a float32 run fails: facebookresearch/sam2#308).

Corrections (a prompt on a frame SAM2 already tracked for that object) take effect: the frame
becomes a conditioning frame (SAM2's add_all_frames_to_correct_as_cond; with SAM2's default a
correction is stored as a non-conditioning output that the next propagation recomputes
without the clicks), and the object's non-conditioning memory within num_maskmem frames
(x the eval stride) on both sides is dropped (what SAM2's clear_non_cond_mem_around_input
means to do; in sam2 1.1.0 that flag calls a method the predictor lacks), so the frames
re-propagated around the correction do not read the drifted masks it corrects.

Frames: by default (video_source: memory) the inference state is built from the session's
frame store, converted per frame on use (sam2_state.py): nothing is written to disk and no
float copy of the video is kept. video_source: jpeg is the upstream route (a JPEG folder +
init_state); it needs every frame sent before the first add_prompt.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from services.sam.backends.base import PassMasks, Prompt, SamBackend, Window

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = ("bfloat16", "float16")
VIDEO_SOURCES = ("memory", "jpeg")


@dataclass
class Sam2State:
    """Per-session state: the frame store and SAM2's inference state."""

    frames: np.ndarray  # (T, H, W, 3) uint8, the session's store (not owned)
    inference: dict | None = None  # SAM2's inference_state (built lazily for jpeg)
    jpeg_dir: str | None = None  # temp folder of the jpeg route, removed on close
    # (obj_id, frame) -> frames whose non-conditioning memory a correction there dropped
    cleared: dict[tuple[int, int], list[int]] = field(default_factory=dict)


class Sam2Backend(SamBackend):
    """SAM2 / SAM2.1 (hiera t / s / b+ / l) and SAM2-API models: video + image segmentation."""

    name = "sam2"
    prompt_kinds = frozenset({"points", "box", "mask"})
    capabilities = frozenset({"segment_image", "bounded"})
    default_family = "sam2"

    def __init__(
        self,
        checkpoint: str | None = None,  # path to a SAM2 .pt checkpoint (required)
        family: str | None = None,  # sam2_build.FAMILIES entry; None = this backend's default
        config: str | None = None,  # None = inferred from the checkpoint name; see sam2_build
        device: str = "auto",  # "auto" (cuda if available), "cuda", "cuda:1", "cpu"
        autocast_dtype: str = "bfloat16",  # "bfloat16" or "float16" (CUDA)
        video_source: Literal["memory", "jpeg"] = "memory",  # how frames reach init_state
        offload_video_to_cpu: bool = False,  # resize on CPU / keep jpeg frames in CPU memory
        offload_state_to_cpu: bool = False,  # keep per-frame outputs in CPU memory (long videos)
        jpeg_dir: str | None = None,  # parent folder for jpeg temp folders (None = system tmp)
        jpeg_quality: int = 95,  # JPEG quality of the jpeg route
        vos_optimized: bool = False,  # torch.compile the whole model (CUDA, slow first call)
        hydra_overrides: list[str] | None = None,  # extra hydra overrides, "++model.x=y"
        apply_postprocessing: bool = True,  # SAM2's default video post-processing overrides
        mask_threshold: float = 0.0,  # logit threshold for a pixel to be in the mask
        corrections: bool = True,  # corrections become conditioning frames, stale memory dropped
    ) -> None:
        from services.sam.backends.sam2_build import family as family_entry

        self.family = family_entry(family or self.default_family)  # ValueError naming it
        if autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype: {autocast_dtype!r} is not one of {AUTOCAST_DTYPES}")
        if video_source not in VIDEO_SOURCES:
            raise ValueError(f"video_source: {video_source!r} is not one of {VIDEO_SOURCES}")
        if not isinstance(device, str) or not device.startswith(("auto", "cpu", "cuda")):
            raise ValueError(f"device: {device!r}; use auto, cpu, cuda or cuda:N")
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality: must be in [1, 100], got {jpeg_quality}")
        if hydra_overrides is not None and not all(isinstance(o, str) for o in hydra_overrides):
            raise ValueError("hydra_overrides: must be a list of strings like '++model.x=y'")
        self.checkpoint = checkpoint
        self.config = config
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.video_source = video_source
        self.offload_video_to_cpu = bool(offload_video_to_cpu)
        self.offload_state_to_cpu = bool(offload_state_to_cpu)
        self.jpeg_dir = jpeg_dir
        self.jpeg_quality = int(jpeg_quality)
        self.vos_optimized = bool(vos_optimized)
        self.hydra_overrides = list(hydra_overrides or [])
        self.apply_postprocessing = bool(apply_postprocessing)
        self.mask_threshold = float(mask_threshold)
        self.corrections = bool(corrections)
        self.model = None  # SAM2VideoPredictor, after setup()
        self.config_name: str | None = None
        self._image_predictor = None

    # ---- lifecycle -------------------------------------------------------------------
    def setup(self) -> None:
        try:
            import torch

            from services.sam.backends.sam2_build import build_video_predictor
            from services.sam.backends.sam2_state import check_state_keys
        except ImportError as e:
            raise RuntimeError(
                f"{self.name} backend: {e}; run the service in the sam2 environment "
                "(uv pip install -r services/sam/requirements-sam2.txt)"
            ) from e
        if self.checkpoint is None:
            raise ValueError("checkpoint: required for the sam2 backend (path to a SAM2 .pt)")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"device: {self.device} requested but CUDA is not available; "
                    "use device: cpu or auto"
                )
            if torch.cuda.get_device_properties(torch.device(self.device)).major >= 8:
                torch.backends.cuda.matmul.allow_tf32 = True  # as SAM2's notebooks do on Ampere+
                torch.backends.cudnn.allow_tf32 = True
        elif self.vos_optimized:
            raise ValueError("vos_optimized: needs CUDA (torch.compile of the full model)")
        self.model, self.config_name = build_video_predictor(
            self.config,
            self.checkpoint,
            self.device,
            vos_optimized=self.vos_optimized,
            hydra_overrides=self.hydra_overrides,
            apply_postprocessing=self.apply_postprocessing,
            fam=self.family,
        )
        if self.corrections:  # a prompt on a tracked frame is a conditioning frame (a keyframe)
            self.model.add_all_frames_to_correct_as_cond = True
        if self.video_source == "memory":
            check_state_keys(type(self.model))
        log.info(
            "%s ready: %s on %s, autocast %s, image_size %d, video_source %s",
            self.family.name,
            self.config_name,
            self.device,
            self.autocast_dtype,
            self.model.image_size,
            self.video_source,
        )

    def info(self) -> dict:
        return {
            "family": self.family.name,
            "model": self.config_name,
            "checkpoint": self.checkpoint,
            "device": self.device,
            "autocast_dtype": self.autocast_dtype,
            "image_size": None if self.model is None else int(self.model.image_size),
            "video_source": self.video_source,
            "sam2_version": sam2_version(self.family.dists),
        }

    def _ready(self):
        if self.model is None:
            raise RuntimeError(f"{self.name} backend: setup() has not run")
        return self.model

    def _ctx(self) -> contextlib.ExitStack:
        """inference_mode + autocast on the model's device type."""
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        dev = "cuda" if self.device.startswith("cuda") else "cpu"
        stack.enter_context(torch.autocast(dev, dtype=getattr(torch, self.autocast_dtype)))
        return stack

    # ---- sessions --------------------------------------------------------------------
    def init_state(self, frames: np.ndarray) -> Sam2State:
        model = self._ready()
        st = Sam2State(frames=frames)  # (T, H, W, 3) uint8, filled later by put_frames
        if self.video_source == "memory":
            from services.sam.backends.sam2_state import memory_inference_state

            st.inference = memory_inference_state(
                model, frames, self.offload_video_to_cpu, self.offload_state_to_cpu
            )
        return st

    def _inference(self, st: Sam2State) -> dict:
        if st.inference is None:  # jpeg route: all frames must be in the store by now
            from services.sam.backends.sam2_state import jpeg_inference_state

            st.jpeg_dir = tempfile.mkdtemp(prefix="sam2-frames-", dir=self.jpeg_dir)
            with self._ctx():
                st.inference = jpeg_inference_state(
                    self._ready(),
                    st.frames,
                    st.jpeg_dir,
                    self.offload_video_to_cpu,
                    self.offload_state_to_cpu,
                    self.jpeg_quality,
                )
        return st.inference

    def add_prompt(self, state: Sam2State, prompt: Prompt) -> dict[int, np.ndarray]:
        frame, obj_id, points, labels = prompt.frame, prompt.obj_id, prompt.points, prompt.labels
        box, mask = prompt.box, prompt.mask
        if prompt.text is not None:
            raise ValueError("text: the sam2 backend has no text prompts; use sam3, or a box")
        if points is None and box is None and mask is None:
            raise ValueError("add_prompt: give points (+labels), a box or a mask")
        model = self._ready()
        inf = self._inference(state)
        tracked = self._tracked(inf, obj_id, frame)  # before: a correction of a tracked frame
        with self._ctx():
            if mask is not None:  # (H, W) bool at video resolution; SAM2 resizes it
                _, ids, logits = model.add_new_mask(inf, frame, obj_id, mask)
            if points is not None or box is not None:
                # replaces this object's points on `frame`; a mask given in the same call
                # (or an earlier result on this frame) feeds in as the previous mask logits
                _, ids, logits = model.add_new_points_or_box(
                    inf,
                    frame,
                    obj_id,
                    points=points,
                    labels=labels,
                    box=box,
                    clear_old_points=True,
                    normalize_coords=True,
                )
            i = list(ids).index(obj_id)
            out = (logits[i, 0] > self.mask_threshold).cpu().numpy()  # (H, W) bool
        if tracked and self.corrections:
            state.cleared[(obj_id, frame)] = self._clear_memory_around(inf, obj_id, frame)
        return {obj_id: out}

    @staticmethod
    def _tracked(inf: dict, obj_id: int, frame: int) -> bool:
        idx = inf["obj_id_to_idx"].get(obj_id)
        return idx is not None and frame in inf["frames_tracked_per_obj"].get(idx, {})

    def _clear_memory_around(self, inf: dict, obj_id: int, frame: int) -> list[int]:
        """Drop obj_id's non-conditioning memory within num_maskmem (x stride) frames of
        `frame`, both sides; returns the frames dropped."""
        model = self._ready()
        reach = int(model.memory_temporal_stride_for_eval) * int(model.num_maskmem)
        idx = inf["obj_id_to_idx"][obj_id]
        non_cond = inf["output_dict_per_obj"][idx]["non_cond_frame_outputs"]
        gone = [t for t in range(frame - reach, frame + reach + 1) if non_cond.pop(t, None)]
        log.debug("%s: correction on frame %d of obj %d dropped memory %s", self.name, frame,
                  obj_id, gone)  # fmt: skip
        return gone

    def propagate(self, state: Sam2State, windows: list[Window]) -> Iterator[tuple[int, PassMasks]]:
        model = self._ready()
        inf = self._inference(state)
        for w in windows:
            reverse = w.direction == "backward"
            gen = model.propagate_in_video(
                inf,
                start_frame_idx=w.hi if reverse else w.lo,
                max_frame_num_to_track=w.hi - w.lo,  # SAM2 tracks max+1 frames: [lo, hi]
                reverse=reverse,
            )
            try:
                while True:
                    with self._ctx():  # per step: the caller's code between yields runs plain
                        try:
                            t, ids, logits = next(gen)  # logits (n_obj, 1, H, W)
                        except StopIteration:
                            break
                        masks = (logits[:, 0] > self.mask_threshold).cpu().numpy()
                    yield (
                        int(t),
                        PassMasks(w.direction, {int(o): masks[i] for i, o in enumerate(ids)}),
                    )
            finally:
                gen.close()

    def remove_object(self, state: Sam2State, obj_id: int) -> None:
        if state.inference is not None:
            with self._ctx():
                self._ready().remove_object(
                    state.inference, obj_id, strict=False, need_output=False
                )

    def reset(self, state: Sam2State) -> None:
        state.cleared.clear()
        if state.inference is not None:
            with self._ctx():
                self._ready().reset_state(state.inference)

    def close(self, state: Sam2State) -> None:
        if state.inference is not None:
            state.inference.clear()  # drop tensors now, not when the session object dies
            state.inference = None
        if state.jpeg_dir is not None:
            shutil.rmtree(state.jpeg_dir, ignore_errors=True)
            state.jpeg_dir = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    # ---- single images ---------------------------------------------------------------
    def segment_image(
        self,
        image: np.ndarray,  # (H, W, 3) uint8 RGB
        boxes: np.ndarray | None,  # (n, 4) float32 xyxy abs px
        points: np.ndarray | None,  # (N, 2) float32 abs px
        labels: np.ndarray | None,  # (N,) int32
    ) -> np.ndarray:
        from services.sam.backends.sam2_image import predict_image

        if self._image_predictor is None:
            from services.sam.backends.sam2_image import image_predictor

            cls = self.family.load(self.family.image_predictor)
            self._image_predictor = image_predictor(self._ready(), self.mask_threshold, cls)
        with self._ctx():
            return predict_image(self._image_predictor, image, boxes, points, labels)


class EfficientTamBackend(Sam2Backend):
    """EfficientTAM: SAM2's API, its own package (sam2_build.FAMILIES["efficienttam"])."""

    name = "efficienttam"
    default_family = "efficienttam"


def sam2_version(dists: tuple[str, ...] = ("sam2", "SAM-2")) -> str:
    """Installed distribution version (PyPI "sam2", or "SAM-2" from a git checkout)."""
    from importlib import metadata

    for dist in dists:
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "unknown"
