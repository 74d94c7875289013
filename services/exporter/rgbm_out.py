"""rgbm output: a new replay buffer with every source data/ key copied and data/rgbm added.

    rgbm.zarr/ (zarr format 2)
      meta/episode_ends   (E,) int64          identical to the source
      data/<source key>   (N, ...)            copied value for value, per episode
      data/rgbm           (N, H, W, 4) uint8  R, G, B from the camera, M = target mask 0/1

Usage:
    buf = create_rgbm_buffer(layout.rgbm_zarr, source, "camera0_rgb", options)
    writer = RgbmWriter(buf, source, "camera0_rgb", options)     # an episode.Writer
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from services.exporter.buffer import ZarrOut, time_chunk
from services.exporter.episode import Writer, blocks
from services.exporter.errors import bad
from services.exporter.options import ExportOptions
from services.exporter.source import SourceBuffer

COPY_BLOCK_BYTES = 32 << 20


def rgbm_arrays(
    source: SourceBuffer, camera_key: str, options: ExportOptions
) -> dict[str, tuple[tuple[int, ...], Any, dict[str, Any]]]:
    """Every array of the rgbm buffer: (shape, dtype, attrs)."""
    if options.rgbm_key in source.arrays:
        raise bad(
            f"options.rgbm_key: the source already has data/{options.rgbm_key}; "
            "pick another name, e.g. rgbm_target"
        )
    h, w = source.check_camera(camera_key)
    arrays = {k: (tuple(a.shape), a.dtype, dict(a.attrs)) for k, a in source.arrays.items()}
    arrays[options.rgbm_key] = (
        (source.n_frames, h, w, 4),
        np.uint8,
        {
            "channel_order": "RGBM",
            "channels": ["R", "G", "B", "M"],
            "mask_values": [0, 1],
            "mask_role": "target",
            "source": {**source.describe(), "camera_key": camera_key},
            "pipeline": options.pipeline,
            "export_options": {
                k: v for k, v in options.output_settings().items() if k != "pipeline"
            },
            "mask_obj_ids": {},  # episode -> obj ids whose union is the mask channel
        },
    )
    return arrays


def create_rgbm_buffer(
    path: Path, source: SourceBuffer, camera_key: str, options: ExportOptions
) -> ZarrOut:
    arrays = rgbm_arrays(source, camera_key, options)
    return ZarrOut.create(
        path, arrays, meta=source.meta, codec=options.codec(),
        chunk_bytes=options.chunk_bytes, fsync=options.fsync,
    )  # fmt: skip


class RgbmWriter(Writer):
    needs_rgb = True

    def __init__(
        self, buf: ZarrOut, source: SourceBuffer, camera_key: str, options: ExportOptions
    ) -> None:
        self.buf = buf
        self.source = source
        self.camera_key = camera_key
        self.key = options.rgbm_key

    def add(self, t0: int, rgb: np.ndarray | None, masks: dict[int, np.ndarray]) -> None:
        job = self.job
        g0 = job.start + t0
        mask = masks[job.roles["target"]]  # (n, H, W) bool
        rgbm = np.empty((*mask.shape, 4), np.uint8)  # (n, H, W, 4) uint8
        rgbm[..., :3] = rgb
        rgbm[..., 3] = mask
        self.buf.write(self.key, g0, rgbm)
        self.buf.write(self.camera_key, g0, rgb)

    def commit(self) -> dict[str, str]:
        job = self.job
        for key, arr in self.source.arrays.items():
            if key == self.camera_key:
                continue  # written block by block in add()
            frame = arr.shape[1:]
            align = time_chunk(frame, arr.dtype, job.options.chunk_bytes, arr.shape[0])
            per_frame = max(1, int(np.prod(frame, dtype=np.int64)) * arr.dtype.itemsize)
            for g0, g1 in blocks(job.start, job.stop, align, COPY_BLOCK_BYTES // per_frame):
                self.buf.write(key, g0, self.source.read(key, g0, g1))

        def record(attrs: dict[str, Any]) -> None:
            attrs.setdefault("mask_obj_ids", {})[str(job.episode)] = [job.roles["target"]]

        self.buf.update_attrs(self.key, record)
        return {"rgbm": str(self.buf.path)}
