"""The session's uint8 frame store seen as a model's input tensors, converted one frame at a time.

SAM2 and SAM3 keep their video as `inference_state[...]` "images": anything indexable that
returns a normalised (3, S, S) float tensor per frame and has a len() (both predictors accept
lazy loaders there). FrameTensors is such a view over the session's (T, H, W, 3) uint8 store:
no float copy of the video is ever held (a JPEG-folder init_state holds T x 3 x S x S float32,
12 MiB per frame at S=1024), and frames that arrive after the session started are picked up,
because nothing is read before a prompt or a propagation asks for it.

Usage:
    images = FrameTensors(frames, image_size=1024, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                          device="cuda")
    x = images[7]          # (3, 1024, 1024) float32 on cuda, normalised

Conversion: HWC uint8 -> CHW float, (x / 255 - mean) / std, bilinear resize to S x S
(antialiased when shrinking): what SAM2's image predictor does (torchvision Resize +
Normalize), to float rounding.
SAM2's JPEG loader resizes with PIL bicubic instead; the difference is below JPEG noise
(see tests/integration/test_sam2_backend.py). Needs torch; import it only in a torch env.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # SAM2's normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)  # SAM3's normalisation
HALF_STD = (0.5, 0.5, 0.5)


class FrameTensors:
    """Indexable (len T) view of a (T, H, W, 3) uint8 RGB store as (3, S, S) model inputs.

    The resize runs on `device` (upload uint8, then resize there: cheap on a GPU). The store is
    read, never written or copied as a whole; the caller keeps it alive.
    """

    def __init__(
        self,
        frames: np.ndarray,  # (T, H, W, 3) uint8 RGB
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
            got = getattr(frames, "shape", type(frames).__name__)
            raise ValueError(f"frames: expected a (T, H, W, 3) uint8 array, got {got}")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames: expected dtype uint8 (RGB), got {frames.dtype}")
        if image_size < 1:
            raise ValueError(f"image_size: must be >= 1, got {image_size}")
        self.frames = frames
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.dtype = dtype
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device)[:, None, None]
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device)[:, None, None]

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __getitem__(self, index: int | torch.Tensor) -> torch.Tensor:
        t = int(index)
        if not -len(self) <= t < len(self):
            raise IndexError(f"frame {t} is outside [0, {len(self)})")
        frame = self.frames[t]  # (H, W, 3) uint8, a view into the store
        if not frame.flags.writeable:  # torch.from_numpy wants a writable buffer
            frame = frame.copy()
        return convert_frame(frame, self.image_size, self._mean, self._std, self.device).to(
            self.dtype
        )


def convert_frame(
    frame: np.ndarray,  # (H, W, 3) uint8 RGB
    image_size: int,
    mean: torch.Tensor,  # (3, 1, 1) float32 on device
    std: torch.Tensor,  # (3, 1, 1) float32 on device
    device: torch.device,
) -> torch.Tensor:
    """One frame -> (3, S, S) float32 normalised model input on `device`.

    Normalises before resizing: bilinear weights sum to 1, so per-channel affine maps commute
    with the resize, and the (usually smaller) source has fewer pixels to touch. Antialiasing
    only changes downscaling, so it is switched on only then.
    """
    x = torch.from_numpy(frame).to(device)  # (H, W, 3) uint8
    x = x.permute(2, 0, 1).to(torch.float32)  # (3, H, W) in [0, 255]
    x = x.mul_(1.0 / (255.0 * std)).sub_(mean / std)  # (x / 255 - mean) / std
    h, w = x.shape[-2:]
    if (h, w) != (image_size, image_size):
        x = F.interpolate(
            x.unsqueeze(0),
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=h > image_size or w > image_size,
        )[0]
    return x  # (3, S, S)
