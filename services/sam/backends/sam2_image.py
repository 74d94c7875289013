"""segment_image for the sam2 backend: SAM2's image predictor on the video model's weights.

Usage:
    pred = image_predictor(video_model)        # shares weights, no second model in memory
    masks = predict_image(pred, image, boxes, points, labels)    # (n, H, W) bool
"""

from __future__ import annotations

import numpy as np


def image_predictor(model, mask_threshold: float = 0.0, cls=None):
    """A SAM2ImagePredictor (or the family's `cls`) over `model` (a video predictor is a
    SAM2Base)."""
    if cls is None:
        from sam2.sam2_image_predictor import SAM2ImagePredictor as cls

    pred = cls(model, mask_threshold=mask_threshold)
    # upstream hard-codes the 1024-px feature sizes; derive them from the model's image size
    s = int(model.image_size)
    pred._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return pred


def predict_image(
    pred,
    image: np.ndarray,  # (H, W, 3) uint8 RGB
    boxes: np.ndarray | None,  # (n, 4) float32 xyxy abs px
    points: np.ndarray | None,  # (N, 2) float32 abs px
    labels: np.ndarray | None,  # (N,) int32
) -> np.ndarray:
    """One mask per box (points shared by every box), or one mask from the points alone.

    A lone point is ambiguous, so SAM2 returns three candidates and the best-scored one wins
    (SAM's recommendation); every other prompt asks for a single mask.
    """
    if boxes is None and points is None:
        raise ValueError("segment_image: give boxes and/or points (+labels)")
    if points is not None and (labels is None or len(labels) != len(points)):
        raise ValueError("labels: need one label (0/1) per point")
    h, w = image.shape[:2]
    pred.set_image(image)
    n = 1 if boxes is None else len(boxes)
    if n == 0:
        return np.zeros((0, h, w), bool)
    pc = pl = None
    if points is not None:
        pc = np.broadcast_to(points[None], (n, *points.shape)).astype(np.float32)  # (n, N, 2)
        pl = np.broadcast_to(labels[None], (n, len(labels))).astype(np.int32)  # (n, N)
        if boxes is None:
            pc, pl = pc[0], pl[0]  # (N, 2), (N,)
    multimask = boxes is None and points is not None and len(points) == 1
    masks, scores, _ = pred.predict(
        point_coords=pc,
        point_labels=pl,
        box=None if boxes is None else np.asarray(boxes, np.float32),
        multimask_output=multimask,
    )
    masks = masks.reshape(n, -1, h, w)  # (n, C, H, W) float 0/1
    scores = scores.reshape(n, -1)  # (n, C)
    best = scores.argmax(axis=1)  # (n,)
    return masks[np.arange(n), best] > 0.5  # (n, H, W) bool
