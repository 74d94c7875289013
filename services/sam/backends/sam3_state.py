"""SAM3 set-up pieces: the CUDA check, the tokenizer file, and an inference state from memory.

Sam3VideoInference.init_state only takes a path (JPEG folder, MP4, image) or a list of PIL
images that it converts eagerly. The session's frames arrive after start_session, so
`memory_inference_state` builds the same dict around a lazy FrameTensors view (SAM3's
detector indexes `img_batch` per frame and accepts any indexable, as its async loaders do),
using the model's own `_construct_initial_input_batch` for the prompt/input structures.

Usage:
    require_cuda("cuda:0")                          # RuntimeError with the fix when absent
    bpe = resolve_bpe_path(None, sam3_package_dir)  # ValueError naming the option when absent
    state = memory_inference_state(model, frames)   # frames: (T, H, W, 3) uint8 store
"""

from __future__ import annotations

import os

import numpy as np

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# The keys Sam3VideoInference.init_state (sam3 0.1.4) assigns itself; the rest come from
# _construct_initial_input_batch, which memory_inference_state calls.
INIT_STATE_KEYS = frozenset(
    {
        "image_size",
        "num_frames",
        "orig_height",
        "orig_width",
        "constants",
        "tracker_inference_states",
        "tracker_metadata",
        "feature_cache",
        "cached_frame_outputs",
        "action_history",
        "is_image_only",
    }
)

NO_CUDA = (
    "sam3 backend: needs a CUDA GPU, but {why}; SAM3 runs on CUDA only. Start the sam service "
    "on a GPU host (point configs/services.yaml's sam endpoint at it) or use backend sam2 "
    "(runs on CPU too) or classical"
)


def require_cuda(device: str) -> None:
    """Fail fast, before anything heavy, when torch or CUDA (or the chosen GPU) is missing."""
    try:
        import torch
    except ImportError:
        raise RuntimeError(
            NO_CUDA.format(why="torch is not installed in this environment")
            + "; install services/sam/requirements-sam3.txt in a CUDA machine's venv"
        ) from None
    if not torch.cuda.is_available():
        why = (
            f"torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'})"
        )
        raise RuntimeError(NO_CUDA.format(why=why))
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"device: {device} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
            "use cuda or cuda:N with N < device count"
        )


def bpe_candidates(package_dir: str) -> list[str]:
    """Where sam3 looks for its tokenizer vocabulary (inside the package and beside it)."""
    return [
        os.path.join(package_dir, "assets", BPE_NAME),
        os.path.normpath(os.path.join(package_dir, "..", "assets", BPE_NAME)),
    ]


def resolve_bpe_path(bpe_path: str | None, package_dir: str) -> str:
    """The tokenizer file to pass to build_sam3_video_model (explicit option wins)."""
    if bpe_path:
        if not os.path.isfile(bpe_path):
            raise ValueError(f"bpe_path: file {bpe_path!r} not found")
        return bpe_path
    for cand in bpe_candidates(package_dir):
        if os.path.isfile(cand):
            return cand
    raise ValueError(
        f"bpe_path: SAM3's tokenizer vocabulary {BPE_NAME} is not installed (the sam3 0.1.4 "
        "wheel ships without it, facebookresearch/sam3#339); copy it from the sam3 "
        "repository's sam3/assets/ (or OpenAI CLIP's clip/ folder) and set option bpe_path"
    )


def check_state_keys(model_cls: type) -> None:
    """Fail at setup when the installed sam3's init_state sets keys we do not reproduce."""
    from services.sam.backends.sam2_state import installed_state_keys

    keys = installed_state_keys(model_cls)
    if keys is None:
        return
    missing = sorted(keys - INIT_STATE_KEYS)
    if missing:
        raise RuntimeError(
            f"sam3: the installed sam3's init_state sets state keys {missing} that "
            "services/sam/backends/sam3_state.py does not; pin sam3 as in "
            "services/sam/requirements-sam3.txt or update memory_inference_state"
        )


def memory_inference_state(
    model,
    frames: np.ndarray,  # (T, H, W, 3) uint8 RGB, the session's store (read lazily)
    offload_video_to_cpu: bool = False,
) -> dict:
    """What model.init_state(resource_path) returns, over the in-memory frames."""
    import torch

    from services.sam.backends.sam2_frames import FrameTensors

    images = FrameTensors(
        frames,
        image_size=int(model.image_size),
        mean=tuple(model.image_mean),
        std=tuple(model.image_std),
        device="cpu" if offload_video_to_cpu else model.device,
        dtype=torch.float16,  # as SAM3's own loaders store frames
    )
    state: dict = {
        "image_size": int(model.image_size),
        "num_frames": len(images),
        "orig_height": images.height,
        "orig_width": images.width,
        "constants": {},
    }
    model._construct_initial_input_batch(state, images)
    state["tracker_inference_states"] = []
    state["tracker_metadata"] = {}
    state["feature_cache"] = {}
    state["cached_frame_outputs"] = {}
    state["action_history"] = []
    state["is_image_only"] = len(images) == 1
    return state
