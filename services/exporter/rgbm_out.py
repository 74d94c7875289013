"""rgbm output: a new replay buffer with every source data/ key copied and data/rgbm added.

    rgbm.zarr/ (zarr format 2)                root attrs: the source's root attrs
      meta/episode_ends   (E,) int64          identical to the source
      data/<source key>   (N, ...)            a format-2 source: copied file by file when the
                                              buffer is created (chunks, codec, attrs and bytes
                                              identical); a format-3 source: decoded and
                                              re-encoded value for value, per episode
      data/rgbm           (N, H, W, 4) uint8  R, G, B from the camera, M = target mask 0/1

Usage:
    buf = create_rgbm_buffer(layout.rgbm_zarr, source, "camera0_rgb", options)
    writer = RgbmWriter(buf, source, "camera0_rgb", options)     # an episode.Writer
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from services.exporter.buffer import RawCopy, ZarrOut
from services.exporter.episode import Writer, blocks
from services.exporter.errors import bad
from services.exporter.fsutil import ZARR_PARTIAL_SUFFIX, commit_file, remove_quietly, tmp_path_for
from services.exporter.options import ExportOptions
from services.exporter.source import SourceBuffer

COPY_BLOCK_BYTES = 32 << 20
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed entry dates: the same buffer gives the same zip bytes


def write_zip(folder: Path, dest: Path, fsync: bool) -> Path:
    """Pack a zarr folder into a .zarr.zip (ZIP_STORED, as zarr's ZipStore writes and UMI's
    loader reads): sorted entries, fixed dates, written to a temp file and renamed."""
    tmp = tmp_path_for(dest)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                name = path.relative_to(folder).as_posix()
                if name.endswith(ZARR_PARTIAL_SUFFIX):
                    continue
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
                info.external_attr = 0o644 << 16
                with open(path, "rb") as src, zf.open(info, "w", force_zip64=True) as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        commit_file(tmp, dest, fsync)
    except BaseException:
        remove_quietly(tmp)
        raise
    return dest


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


def raw_copy(source: SourceBuffer) -> RawCopy:
    """The source keys copied file by file (every key of a format-2 source)."""
    return RawCopy.for_source(source.path, sorted(source.arrays))


def create_rgbm_buffer(
    path: Path, source: SourceBuffer, camera_key: str, options: ExportOptions
) -> ZarrOut:
    arrays = rgbm_arrays(source, camera_key, options)
    return ZarrOut.create(
        path, arrays, meta=source.meta, codec=options.codec(),
        chunk_bytes=options.chunk_bytes, fsync=options.fsync,
        raw=raw_copy(source), root_attrs=source.attrs,
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
        self.raw = raw_copy(source).copied_into(buf.path)  # in the buffer, bytes as the source

    def add(self, t0: int, rgb: np.ndarray | None, masks: dict[int, np.ndarray]) -> None:
        job = self.job
        g0 = job.start + t0
        mask = masks[job.roles["target"]]  # (n, H, W) bool
        rgbm = np.empty((*mask.shape, 4), np.uint8)  # (n, H, W, 4) uint8
        rgbm[..., :3] = rgb
        rgbm[..., 3] = mask
        self.buf.write(self.key, g0, rgbm)
        if self.camera_key not in self.raw:
            self.buf.write(self.camera_key, g0, rgb)

    def commit(self) -> dict[str, str]:
        job = self.job
        for key, arr in self.source.arrays.items():
            if key == self.camera_key or key in self.raw:
                continue  # written block by block in add() / copied when the buffer was made
            frame = arr.shape[1:]
            align = int(self.buf.array(key).chunks[0])
            per_frame = max(1, int(np.prod(frame, dtype=np.int64)) * arr.dtype.itemsize)
            for g0, g1 in blocks(job.start, job.stop, align, COPY_BLOCK_BYTES // per_frame):
                self.buf.write(key, g0, self.source.read(key, g0, g1))

        def record(attrs: dict[str, Any]) -> None:
            attrs.setdefault("mask_obj_ids", {})[str(job.episode)] = [job.roles["target"]]
            if isinstance(job.meta.get("prompt"), dict):  # where the target prompt went, why,
                attrs.setdefault("prompts", {})[str(job.episode)] = job.meta["prompt"]  # held

        self.buf.update_attrs(self.key, record)
        return {"rgbm": str(self.buf.path)}
