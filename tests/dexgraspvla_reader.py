"""How DexGraspVLA's training code reads an rgbm buffer, rewritten from its source for tests.

Written from DexGraspVLA's `controller/common/streaming_replay_buffer.py`
(StreamingReplayBuffer.copy_from_path, ZarrImageReference), `controller/common/sampler.py`
(create_indices, SequenceSampler.sample_sequence; diffusion_policy's sampler) and
`controller/dataset/mask_image_dataset.py` (MaskImageDataset: keys, key_first_k,
_sample_to_data, _process_mask_image_batch, _process_image_batch). Same keys, same lookups,
same slicing and padding, same preprocessing; numba and torch are optional here: without
torch the 518x518 resize uses OpenCV (bilinear / nearest), which is what the shapes and
value ranges checked by the tests depend on, not the last bits of the interpolation.

Usage:
    ds = MaskImageDatasetCopy(["out/rgbm/rgbm.zarr"], horizon=8, n_obs_steps=1, pad_after=7)
    item = ds[0]   # {"obs": {"rgbm": (1, 4, 518, 518), "right_cam_img": (1, 3, 518, 518),
                   #          "right_state": (1, 13)}, "action": (8, 13)}  float32
"""

from __future__ import annotations

import numpy as np
import zarr

KEYS = ["right_cam_img", "rgbm", "right_state", "action"]  # what MaskImageDataset asks for
IMAGE_KEYS = ("rgbm", "right_cam_img")  # kept as lazy references, the rest is read whole


def copy_from_path(path: str, keys: list[str]) -> dict:
    """StreamingReplayBuffer.copy_from_path: meta read whole, image keys by reference (a
    KeyError here is what a missing key gives in DexGraspVLA)."""
    src = zarr.open(path, mode="r")
    meta = {}
    if "meta" in src:
        for key, value in src["meta"].arrays():
            meta[key] = np.array(value) if len(value.shape) == 0 else value[:]
    src_data = src["data"] if "data" in src else src
    data = {}
    for key in keys:
        arr = src_data[key]
        data[key] = arr if key in IMAGE_KEYS else arr[:]
    ends = meta.get("episode_ends")
    if ends is None:
        ends = np.array([len(next(iter(data.values())))])
    return {"meta": meta, "data": data, "episode_ends": np.asarray(ends)}


def create_indices(
    episode_ends: np.ndarray, sequence_length: int, episode_mask: np.ndarray,
    pad_before: int = 0, pad_after: int = 0,
) -> np.ndarray:  # fmt: skip
    """(buffer_start, buffer_end, sample_start, sample_end) of every training window."""
    pad_before = min(max(pad_before, 0), sequence_length - 1)
    pad_after = min(max(pad_after, 0), sequence_length - 1)
    rows = []
    for i in range(len(episode_ends)):
        if not episode_mask[i]:
            continue
        start = int(episode_ends[i - 1]) if i > 0 else 0
        length = int(episode_ends[i]) - start
        for idx in range(-pad_before, length - sequence_length + pad_after + 1):
            b0 = max(idx, 0) + start
            b1 = min(idx + sequence_length, length) + start
            s0 = b0 - (idx + start)
            s1 = sequence_length - ((idx + sequence_length + start) - b1)
            assert s0 >= 0 and s1 - s0 == b1 - b0
            rows.append([b0, b1, s0, s1])
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def sample_sequence(data: dict, indices: np.ndarray, idx: int, sequence_length: int,
                    key_first_k: dict[str, int]) -> dict:  # fmt: skip
    """SequenceSampler.sample_sequence: only the first k frames of image keys are loaded;
    windows at an episode's edge are padded with its first / last frame."""
    b0, b1, s0, s1 = (int(v) for v in indices[idx])
    out = {}
    for key, arr in data.items():
        if key not in key_first_k:
            sample = arr[b0:b1]
        else:
            n = b1 - b0
            k = min(key_first_k[key], n)
            sample = np.zeros((n, *arr.shape[1:]), dtype=arr.dtype)  # theirs: NaN-filled
            sample[:k] = arr[b0 : b0 + k]
        if s0 > 0 or s1 < sequence_length:
            padded = np.zeros((sequence_length, *arr.shape[1:]), dtype=arr.dtype)
            if s0 > 0:
                padded[:s0] = sample[0]
            if s1 < sequence_length:
                padded[s1:] = sample[-1]
            padded[s0:s1] = sample
            sample = padded
        out[key] = sample
    return out


def _resize(x: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """(T, C, H, W) float32 -> (T, C, *size), like F.interpolate (bilinear without
    align_corners, or nearest)."""
    try:
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.ascontiguousarray(x))
        if nearest:
            return F.interpolate(t, size=size, mode="nearest").numpy()
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False).numpy()
    except ImportError:
        import cv2

        flag = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        out = np.empty((*x.shape[:2], *size), np.float32)
        for i in range(x.shape[0]):
            for c in range(x.shape[1]):
                out[i, c] = cv2.resize(x[i, c], (size[1], size[0]), interpolation=flag)
        return out


def process_mask_image_batch(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 4) uint8 rgbm -> (T, 4, *size) float32: RGB / 255, mask (> 0.5) in {0, 1}."""
    rgb = images[..., :3].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mask = images[..., 3:].astype(np.float32).transpose(0, 3, 1, 2)
    rgb = _resize(rgb, size, nearest=False)
    mask = (_resize(mask, size, nearest=True) > 0.5).astype(np.float32)
    return np.concatenate([rgb, mask], axis=1)


def process_image_batch(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rgb = images[..., :3].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return _resize(rgb, size, nearest=False)


class MaskImageDatasetCopy:
    """MaskImageDataset over one or more rgbm buffers (val_ratio 0: every episode trains)."""

    def __init__(self, zarr_paths: list[str], horizon: int = 1, n_obs_steps: int = 1,
                 pad_before: int = 0, pad_after: int = 0,
                 image_size: tuple[int, int] = (518, 518)):  # fmt: skip
        self.image_size = image_size
        self.horizon, self.n_obs_steps = horizon, n_obs_steps
        self.buffers, self.indices = [], []
        for path in zarr_paths:
            rb = copy_from_path(path, KEYS)
            mask = np.ones(len(rb["episode_ends"]), bool)
            self.buffers.append(rb)
            self.indices.append(
                create_indices(rb["episode_ends"], horizon, mask, pad_before, pad_after)
            )
        self.first_k = {"right_cam_img": n_obs_steps, "rgbm": n_obs_steps}

    def __len__(self) -> int:
        return sum(len(i) for i in self.indices)

    def __getitem__(self, idx: int) -> dict:
        for rb, ind in zip(self.buffers, self.indices, strict=True):
            if idx < len(ind):
                sample = sample_sequence(rb["data"], ind, idx, self.horizon, self.first_k)
                break
            idx -= len(ind)
        else:
            raise IndexError(idx)
        obs = slice(self.n_obs_steps)
        return {
            "obs": {
                "rgbm": process_mask_image_batch(sample["rgbm"][obs], self.image_size),
                "right_cam_img": process_image_batch(sample["right_cam_img"][obs], self.image_size),
                "right_state": sample["right_state"].astype(np.float32)[obs],
            },
            "action": sample["action"].astype(np.float32),
        }

    def normalizer_data(self) -> dict[str, np.ndarray]:
        """What get_normalizer fits its LinearNormalizer on."""
        return {
            "action": np.concatenate([rb["data"]["action"] for rb in self.buffers]),
            "right_state": np.concatenate([rb["data"]["right_state"] for rb in self.buffers]),
        }
