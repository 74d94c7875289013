"""SAM2 video inference state built straight from the session's frames, or via a JPEG folder.

`SAM2VideoPredictor.init_state(video_path)` only reads MP4 files or JPEG folders, resizes every
frame eagerly into a (T, 3, S, S) float32 tensor and encodes frame 0. The sam service already
holds the frames in memory (filled chunk by chunk after the session starts), so
`memory_inference_state` builds the same state dict with a lazy FrameTensors view instead:
no disk round trip, no float copy of the video, no encoder run at session start.
`jpeg_inference_state` is the upstream route (frames written to a temp folder), kept as the
`video_source: jpeg` fallback and for the measurement in sam2_bench.py.

The state layout must match the installed sam2's init_state; `check_state_keys` compares our
keys with the ones the installed init_state assigns and fails at setup if they drifted.

Usage:
    check_state_keys(type(predictor))                      # once, at setup
    state = memory_inference_state(predictor, frames)      # frames: (T, H, W, 3) uint8 store
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections import OrderedDict

import cv2
import numpy as np
import torch

from services.sam.backends.sam2_frames import IMAGENET_MEAN, IMAGENET_STD, FrameTensors

log = logging.getLogger(__name__)

# The keys SAM2VideoPredictor.init_state (sam2 1.1.0 / facebookresearch/sam2@2b90b9f) assigns.
MEMORY_STATE_KEYS = frozenset(
    {
        "images",
        "num_frames",
        "offload_video_to_cpu",
        "offload_state_to_cpu",
        "video_height",
        "video_width",
        "device",
        "storage_device",
        "point_inputs_per_obj",
        "mask_inputs_per_obj",
        "cached_features",
        "constants",
        "obj_id_to_idx",
        "obj_idx_to_id",
        "obj_ids",
        "output_dict_per_obj",
        "temp_output_dict_per_obj",
        "frames_tracked_per_obj",
    }
)
_KEY_RE = re.compile(r"""inference_state\[["'](\w+)["']\]\s*=""")


def installed_state_keys(predictor_cls: type) -> set[str] | None:
    """Keys the installed init_state assigns (parsed from its source); None if unavailable."""
    init_state = getattr(predictor_cls, "init_state", None)
    if init_state is None:
        return None
    try:
        src = inspect.getsource(init_state)
    except (OSError, TypeError):
        return None
    return set(_KEY_RE.findall(src))


def check_state_keys(predictor_cls: type) -> None:
    """Fail loudly when the installed sam2 builds a state we would not reproduce in memory."""
    keys = installed_state_keys(predictor_cls)
    if keys is None:
        log.warning(
            "sam2: cannot read %s.init_state source; not checking the state layout",
            predictor_cls.__name__,
        )
        return
    missing = sorted(keys - MEMORY_STATE_KEYS)
    if missing:
        raise RuntimeError(
            f"video_source: the installed sam2's init_state sets state keys {missing} that the "
            "in-memory state (services/sam/backends/sam2_state.py) does not; set option "
            "video_source: jpeg, or pin sam2 as in services/sam/requirements-sam2.txt"
        )


def memory_inference_state(
    predictor: torch.nn.Module,
    frames: np.ndarray,  # (T, H, W, 3) uint8 RGB, the session's store (read lazily)
    offload_video_to_cpu: bool = False,
    offload_state_to_cpu: bool = False,
) -> dict:
    """The dict SAM2VideoPredictor.init_state returns, with lazy images and no frame-0 warm-up.

    offload_video_to_cpu: resize frames on the CPU instead of the compute device (both keep no
    float copy of the video). offload_state_to_cpu: keep per-frame outputs in CPU memory.
    """
    device = predictor.device
    images = FrameTensors(
        frames,
        image_size=predictor.image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        device="cpu" if offload_video_to_cpu else device,
    )
    state: dict = {
        "images": images,
        "num_frames": len(images),
        "offload_video_to_cpu": offload_video_to_cpu,
        "offload_state_to_cpu": offload_state_to_cpu,
        "video_height": images.height,
        "video_width": images.width,
        "device": device,
        "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }
    return state


def write_jpeg_folder(frames: np.ndarray, folder: str, quality: int = 95) -> None:
    """Write (T, H, W, 3) uint8 RGB frames as <folder>/00000.jpg ... (SAM2's folder layout)."""
    os.makedirs(folder, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    for t in range(frames.shape[0]):
        path = os.path.join(folder, f"{t:05d}.jpg")
        if not cv2.imwrite(path, np.ascontiguousarray(frames[t][..., ::-1]), params):  # RGB->BGR
            raise OSError(f"jpeg_dir: could not write {path}; check the folder is writable")


def jpeg_inference_state(
    predictor: torch.nn.Module,
    frames: np.ndarray,  # (T, H, W, 3) uint8 RGB, every frame present
    folder: str,
    offload_video_to_cpu: bool = False,
    offload_state_to_cpu: bool = False,
    quality: int = 95,
) -> dict:
    """The upstream route: write a JPEG folder, then predictor.init_state(folder)."""
    write_jpeg_folder(frames, folder, quality)
    return predictor.init_state(
        folder,
        offload_video_to_cpu=offload_video_to_cpu,
        offload_state_to_cpu=offload_state_to_cpu,
    )
