"""Arm-only masks for ProPainter and RoboInter-style masks.npz.

    arm_only/<episode:04d>/<frame:05d>.png   (H, W) uint8 0/255, single channel
        = dilate((arm_left | arm_right) & ~(gripper_left | gripper_right)), elliptical kernel
    arm_only.zarr/data/arm_only_mask         (N, H, W) uint8 0/255 (option arm_only_zarr)
    npz/<episode:04d>.npz                    masks (n_obj, T, 1, H, W) bool, obj_ids (n_obj,)
                                             int64, roles (n_obj,) str ('' = no role)

Usage:
    m = arm_only_masks(job, masks, kernel)        # (n, H, W) uint8 0/255
    NpzWriter().begin(job); NpzWriter.commit()    # as episode.Writer
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np

from protocol.vocab import ARM_ROLES, GRIPPER_ROLES
from services.exporter.buffer import ZarrOut
from services.exporter.episode import EpisodeJob, Writer
from services.exporter.fsutil import commit_dir, commit_file, remove_quietly, tmp_path_for

FORMULA = "(arm_left | arm_right) & ~(gripper_left | gripper_right), then dilated"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: two runs give identical bytes


def ellipse_kernel(radius: int) -> np.ndarray | None:
    """(2r+1, 2r+1) uint8 elliptical structuring element; None for radius 0."""
    if radius <= 0:
        return None
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def arm_only_masks(
    job: EpisodeJob, masks: dict[int, np.ndarray], kernel: np.ndarray | None
) -> np.ndarray:
    """(n, H, W) uint8 0/255 arm-only masks of one block."""
    arm = job.role_mask(masks, *ARM_ROLES) & ~job.role_mask(masks, *GRIPPER_ROLES)
    out = arm.astype(np.uint8) * np.uint8(255)  # (n, H, W) uint8
    if kernel is not None:
        for i in range(len(out)):
            out[i] = cv2.dilate(out[i], kernel)
    return out


def encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cv2.imencode could not encode a {image.shape} {image.dtype} PNG")
    return buf.tobytes()


class ArmOnlyWriter(Writer):
    def __init__(self, buf: ZarrOut | None) -> None:
        self.buf = buf  # arm_only.zarr, or None when the option is off
        self.tmp: Path | None = None

    def begin(self, job: EpisodeJob) -> None:
        super().begin(job)
        self.dest = job.layout.arm_only_episode(job.episode)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_path_for(self.dest)
        self.tmp.mkdir()
        self.kernel = ellipse_kernel(job.options.dilation_radius)

    def add(self, t0: int, rgb: np.ndarray | None, masks: dict[int, np.ndarray]) -> None:
        out = arm_only_masks(self.job, masks, self.kernel)  # (n, H, W) uint8 0/255
        for i, frame in enumerate(out):
            (self.tmp / f"{t0 + i:05d}.png").write_bytes(encode_png(frame))
        if self.buf is not None:
            self.buf.write("arm_only_mask", self.job.start + t0, out)

    def commit(self) -> dict[str, str]:
        commit_dir(self.tmp, self.dest, self.job.options.fsync)
        self.tmp = None
        outputs = {"arm_only": str(self.dest)}
        if self.buf is not None:
            outputs["arm_only_zarr"] = str(self.buf.path)
        return outputs

    def abort(self) -> None:
        if self.tmp is not None:
            remove_quietly(self.tmp)


class NpzWriter(Writer):
    """masks.npz as RoboInter writes it, streamed object by object (never all unpacked)."""

    tmp: Path | None = None

    def commit(self) -> dict[str, str]:
        job = self.job
        dest = job.layout.npz(job.episode)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_path_for(dest)
        ids = job.obj_ids
        roles = np.array([job.role_of(o) or "" for o in ids], dtype="<U16")  # (n_obj,) str
        shape = (len(ids), job.n_frames, 1, job.height, job.width)
        with zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            with zf.open(_entry("masks.npy"), "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "|b1", "fortran_order": False, "shape": shape}
                )
                for obj in ids:
                    for s in range(0, job.n_frames, 64):
                        stop = min(job.n_frames, s + 64)
                        f.write(job.held.unpack(obj, s, stop).tobytes())  # (n, H, W) bool
            for name, arr in (("obj_ids", np.array(ids, np.int64)), ("roles", roles)):
                with zf.open(_entry(f"{name}.npy"), "w") as f:
                    np.lib.format.write_array(f, arr, allow_pickle=False)
        commit_file(self.tmp, dest, job.options.fsync)
        self.tmp = None
        return {"npz": str(dest)}

    def abort(self) -> None:
        if self.tmp is not None:
            remove_quietly(self.tmp)


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info
