"""The lazy frame view the sam2/sam3 backends give their predictors: same numbers as SAM2's
own preprocessing, closer to SAM2's JPEG-folder route than JPEG itself is, and lazy.

Needs torch + sam2 (the sam2 venv); skipped with the reason elsewhere.
Usage: .venvs/sam-sam2/bin/python -m pytest tests/unit/test_sam2_frames.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: run in the sam2 venv")
pytest.importorskip("sam2", reason="needs sam2: run in the sam2 venv")
cv2 = pytest.importorskip("cv2")

from PIL import Image  # noqa: E402  (sam2 depends on pillow)
from sam2.utils.misc import _load_img_as_tensor  # noqa: E402
from sam2.utils.transforms import SAM2Transforms  # noqa: E402

from services.sam.backends.sam2_frames import (  # noqa: E402
    HALF_MEAN,
    HALF_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrameTensors,
)

pytestmark = pytest.mark.sam2


def _image(h: int = 120, w: int = 160) -> np.ndarray:
    """A smooth random RGB image (JPEG-friendly, like camera frames)."""
    rng = np.random.default_rng(0)
    small = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), 1), (w, h), interpolation=cv2.INTER_CUBIC)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x.float() - mean) / std


def test_matches_sam2_image_predictor_transform_exactly() -> None:
    img = _image()
    x = FrameTensors(img[None], 256, IMAGENET_MEAN, IMAGENET_STD)[0]
    assert x.shape == (3, 256, 256) and x.dtype == torch.float32
    torch.testing.assert_close(x, SAM2Transforms(256, 0.0)(img), rtol=0, atol=1e-5)
    big = _image(600, 800)  # shrinking: antialiased like torchvision
    x = FrameTensors(big[None], 256, IMAGENET_MEAN, IMAGENET_STD)[0]
    torch.testing.assert_close(x, SAM2Transforms(256, 0.0)(big), rtol=0, atol=1e-5)


def test_closer_to_the_jpeg_route_than_jpeg_noise(tmp_path) -> None:
    img = _image()
    mem = FrameTensors(img[None], 256, IMAGENET_MEAN, IMAGENET_STD)[0]
    Image.fromarray(img).save(tmp_path / "0.png")  # lossless: SAM2's resize, no JPEG
    png, h, w = _load_img_as_tensor(str(tmp_path / "0.png"), 256)
    cv2.imwrite(str(tmp_path / "00000.jpg"), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    jpg, _, _ = _load_img_as_tensor(str(tmp_path / "00000.jpg"), 256)
    assert (h, w) == img.shape[:2]
    resize_gap = (mem - _normalise(png)).abs().mean().item()  # bilinear-AA vs PIL bicubic
    jpeg_noise = (_normalise(jpg) - _normalise(png)).abs().mean().item()
    assert resize_gap < jpeg_noise / 2, (resize_gap, jpeg_noise)


def test_reads_frames_written_after_creation_and_never_copies_the_store() -> None:
    store = np.zeros((3, 24, 32, 3), np.uint8)  # (T, H, W, 3) as start_session allocates
    view = FrameTensors(store, 64, HALF_MEAN, HALF_STD, dtype=torch.float16)
    assert len(view) == 3 and (view.height, view.width) == (24, 32)
    assert view[1].dtype == torch.float16 and torch.all(view[1] == -1)  # black -> -1
    store[1] = 255  # put_frames fills the store in place later
    assert torch.all(view[1] == 1) and torch.all(view[2] == -1)
    assert view.frames is store
    assert torch.equal(view[torch.tensor(1)], view[1])  # SAM3 may index with a tensor


def test_read_only_store_and_errors() -> None:
    store = np.full((2, 8, 8, 3), 128, np.uint8)
    store.flags.writeable = False  # e.g. a zmq buffer view
    assert FrameTensors(store, 8, IMAGENET_MEAN, IMAGENET_STD)[0].shape == (3, 8, 8)
    with pytest.raises(IndexError, match="outside"):
        FrameTensors(store, 8, IMAGENET_MEAN, IMAGENET_STD)[2]
    with pytest.raises(ValueError, match="frames: expected dtype uint8"):
        FrameTensors(store.astype(np.float32), 8, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match=r"frames: expected a \(T, H, W, 3\)"):
        FrameTensors(store[0], 8, IMAGENET_MEAN, IMAGENET_STD)
