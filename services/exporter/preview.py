"""Previews for a quick look: an overlay MP4 per episode and a contact-sheet PNG.

    preview/<episode:04d>.mp4        mp4v, every `preview_stride`-th frame at `preview_fps`;
                                     each object tinted in its own colour, outlined, id labelled;
                                     an odd width/height is padded by one black pixel (mp4v)
    preview/<episode:04d>_sheet.png  a grid of `sheet_frames` evenly sampled overlay frames,
                                     `sheet_cols` per row, tiles `sheet_tile_width` px wide

Usage:
    bgr = overlay(rgb_frame, {1: mask1, 2: mask2}, {1: "target"}, frame_index=0)  # (H, W, 3)
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from services.exporter.episode import EpisodeJob, Writer
from services.exporter.errors import ExportError
from services.exporter.fsutil import atomic_write_bytes, commit_file, remove_quietly, tmp_path_for
from services.exporter.masks_out import encode_png

# BGR, distinct under tinting; object id i gets PALETTE[i % len(PALETTE)]
PALETTE = [(75, 25, 230), (75, 180, 60), (25, 225, 255), (200, 130, 0), (48, 130, 245),
           (180, 30, 145), (240, 240, 70), (230, 50, 240), (60, 245, 210), (190, 190, 250)]  # fmt: skip
ALPHA = 0.5  # tint strength


def colour(obj_id: int) -> tuple[int, int, int]:
    return PALETTE[obj_id % len(PALETTE)]


def overlay(
    rgb: np.ndarray, masks: dict[int, np.ndarray], names: dict[int, str], frame_index: int
) -> np.ndarray:
    """rgb (H, W, 3) uint8 RGB, masks obj_id -> (H, W) bool -> (H, W, 3) uint8 BGR."""
    out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    h = out.shape[0]
    scale = max(0.35, h / 960)
    for obj_id in sorted(masks):
        m = masks[obj_id]
        if not m.any():
            continue
        c = np.array(colour(obj_id), np.float32)
        out[m] = (out[m] * (1 - ALPHA) + c * ALPHA).astype(np.uint8)
        contours, _ = cv2.findContours(
            m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, colour(obj_id), 1)
        ys, xs = np.nonzero(m)
        label = f"{obj_id}" + (f" {names[obj_id]}" if obj_id in names else "")
        org = (int(xs.min()), max(int(ys.min()) - 3, int(12 * scale / 0.35)))
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(
            out, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour(obj_id), 1, cv2.LINE_AA
        )
    cv2.putText(out, f"#{frame_index}", (4, h - 6), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    return out


def sheet_indices(n_frames: int, n: int) -> list[int]:
    """Up to n frame indices spread evenly over the episode, first and last included."""
    return sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, min(n, n_frames))})


class PreviewWriter(Writer):
    needs_rgb = True

    def begin(self, job: EpisodeJob) -> None:
        super().begin(job)
        opts = job.options
        self.dest = job.layout.preview_mp4(job.episode)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp: Path | None = tmp_path_for(self.dest)
        self.size = (job.width + job.width % 2, job.height + job.height % 2)  # (W, H) even
        fourcc = cv2.VideoWriter_fourcc(*"mp4v")
        self.video = cv2.VideoWriter(str(self.tmp), fourcc, opts.preview_fps, self.size)
        if not self.video.isOpened():
            raise ExportError(
                "internal", f"preview: cv2.VideoWriter could not open {self.tmp} with mp4v"
            )
        self.n_written = 0
        self.names = {o: r for r, o in job.roles.items()}
        self.sheet_at = set(sheet_indices(job.n_frames, opts.sheet_frames))
        self.tiles: list[np.ndarray] = []

    def add(self, t0: int, rgb: np.ndarray | None, masks: dict[int, np.ndarray]) -> None:
        stride = self.job.options.preview_stride
        for i in range(len(rgb)):
            t = t0 + i
            if t % stride and t not in self.sheet_at:
                continue
            frame = overlay(rgb[i], {o: m[i] for o, m in masks.items()}, self.names, t)
            if t % stride == 0:
                padded = np.zeros((self.size[1], self.size[0], 3), np.uint8)
                padded[: frame.shape[0], : frame.shape[1]] = frame
                self.video.write(padded)
                self.n_written += 1
            if t in self.sheet_at:
                self.tiles.append(self._tile(frame))

    def _tile(self, frame: np.ndarray) -> np.ndarray:
        w = min(self.job.options.sheet_tile_width, frame.shape[1])  # never upscale
        h = max(1, round(frame.shape[0] * w / frame.shape[1]))
        return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)

    def commit(self) -> dict[str, str]:
        self.video.release()
        cap = cv2.VideoCapture(str(self.tmp))
        got = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        if got != self.n_written:
            raise ExportError(
                "internal",
                f"preview: {self.dest.name} holds {got} of {self.n_written} frames after "
                "writing (disk full?); nothing was marked done",
            )
        commit_file(self.tmp, self.dest, self.job.options.fsync)
        self.tmp = None
        sheet = self.job.layout.preview_sheet(self.job.episode)
        atomic_write_bytes(sheet, encode_png(self._sheet()), self.job.options.fsync)
        return {"preview": str(self.dest), "preview_sheet": str(sheet)}

    def _sheet(self) -> np.ndarray:
        cols = min(self.job.options.sheet_cols, len(self.tiles))
        rows = math.ceil(len(self.tiles) / cols)
        th, tw = self.tiles[0].shape[:2]
        grid = np.zeros((rows * th, cols * tw, 3), np.uint8)  # (rows*th, cols*tw, 3) BGR
        for k, tile in enumerate(self.tiles):
            r, c = divmod(k, cols)
            grid[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = tile
        return grid

    def abort(self) -> None:
        if getattr(self, "video", None) is not None:
            self.video.release()
        if getattr(self, "tmp", None) is not None:
            remove_quietly(self.tmp)
