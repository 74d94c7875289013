"""Export options: a frozen dataclass with defaults in code, parsed by protocol/schema.py
(unknown keys refused, one rule for booleans and numbers); ranges are checked here.

Usage:
    opts = ExportOptions.from_dict({"dilation_radius": 8, "compressor": "zstd"})
    codec = opts.codec()          # numcodecs codec for every zarr array written
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numcodecs

from protocol.errors import BadRequest
from protocol.schema import parse
from protocol.vocab import OUTPUTS, ROLES
from services.exporter.errors import bad

OPERATIONAL = ("fsync",)  # options that do not change what is written
COMPRESSORS = ("blosc", "zstd", "zlib", "none")  # all lossless
BLOSC_CNAMES = ("lz4", "lz4hc", "blosclz", "zstd", "zlib")
SHUFFLES = {
    "noshuffle": numcodecs.Blosc.NOSHUFFLE,
    "shuffle": numcodecs.Blosc.SHUFFLE,
    "bitshuffle": numcodecs.Blosc.BITSHUFFLE,
}


@dataclass(frozen=True)
class ExportOptions:
    compressor: str = "blosc"  # lossless codec of every zarr array: blosc | zstd | zlib | none
    cname: str = "lz4"  # blosc inner codec (diffusion_policy's default)
    clevel: int = 5  # compression level (blosc 0-9, zstd 1-22, zlib 0-9)
    shuffle: str = "noshuffle"  # blosc shuffle: noshuffle | shuffle | bitshuffle
    chunk_bytes: int = 2_000_000  # target chunk size along time (diffusion_policy's 2 MB)
    rgbm_key: str = "rgbm"  # name of the RGB+mask array under data/
    dilation_radius: int = 15  # arm-only mask dilation, elliptical kernel radius px (0 = none)
    require_gripper_mask: bool = (
        True  # arm_only: refuse an episode whose gripper masks are all empty
    )
    arm_only_zarr: bool = False  # also write data/arm_only_mask (T,H,W) uint8 to arm_only.zarr
    rgbm_zip: bool = False  # also write rgbm.zarr.zip (a zarr ZipStore, as UMI's loader opens)
    jpeg_quality: int = 95  # YTVIS frame JPEGs
    preview_fps: float = 10.0  # overlay MP4 frame rate
    preview_stride: int = 1  # overlay MP4 keeps every n-th frame
    sheet_frames: int = 12  # contact sheet: frames sampled evenly over the episode
    sheet_cols: int = 4  # contact sheet: tiles per row
    sheet_tile_width: int = 320  # contact sheet: tile width px (aspect kept)
    fsync: bool = True  # fsync data before marking an episode done (crash/power-loss safe)
    pipeline: dict = field(default_factory=dict)  # the pipeline config, recorded in rgbm attrs
    # training sets (sam3, grounding; services/exporter/sets.py): split by episode
    eval_fraction: float = 0.2  # share of the source's episodes in the eval split (test/val)
    split_seed: int = 0  # seed of the episode split, negatives and grounding GT points
    approved_only: bool = False  # sam3/grounding: only episodes approved in the studio
    sam3_every: int = 5  # stage 1 takes every k-th frame
    sam3_video_every: int = 1  # stage 2 videos take every k-th frame (1 = all)
    sam3_negatives: float = 0.15  # stage 1: at most this share of images without any object
    sam3_roles: str = ""  # comma-separated roles to export ('' = every object)
    sam3_phrases: str = "prompt"  # noun phrase: prompt (its words, else role name) | role
    grounding_frames: int = 5  # grounding: frames per episode, evenly spaced (01..NN)
    grounding_dilation: int = 10  # grounding: _mask_dialated.png radius px (elliptical)
    grounding_roles: str = "target"  # grounding: roles exported as uid_<obj_id> ('' = all)
    inpainted_dir: str = ""  # grounding: ProPainter output folder for _inpainted.png ('' = none)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> ExportOptions:
        """Validate and build; every error names the option and the fix."""
        try:  # keys and types: protocol.schema, the one validator of the mesh
            opts = parse(cls, dict(raw or {}), where="options")
        except BadRequest as e:
            raise bad(str(e)) from None
        opts._validate()
        return opts

    def _validate(self) -> None:
        if self.compressor not in COMPRESSORS:
            raise bad(f"options.compressor: {self.compressor!r}; use one of {COMPRESSORS}")
        if self.cname not in BLOSC_CNAMES:
            raise bad(f"options.cname: {self.cname!r}; use one of {BLOSC_CNAMES}")
        if self.shuffle not in SHUFFLES:
            raise bad(f"options.shuffle: {self.shuffle!r}; use one of {sorted(SHUFFLES)}")
        limits = {
            "clevel": (0, 22),
            "chunk_bytes": (1024, 1 << 30),
            "dilation_radius": (0, 512),
            "jpeg_quality": (1, 100),
            "preview_stride": (1, 10_000),
            "sheet_frames": (1, 400),
            "sheet_cols": (1, 100),
            "sheet_tile_width": (16, 4096),
            "sam3_every": (1, 100_000),
            "sam3_video_every": (1, 100_000),
            "grounding_frames": (2, 99),
            "grounding_dilation": (0, 512),
        }
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise bad(f"options.{name}: {value} is out of range; use {lo}..{hi}")
        if self.compressor in ("blosc", "zlib") and self.clevel > 9:
            raise bad(f"options.clevel: {self.clevel}; {self.compressor} takes 0..9")
        if not 0.1 <= self.preview_fps <= 240:
            raise bad(f"options.preview_fps: {self.preview_fps} is out of range; use 0.1..240")
        for name in ("eval_fraction", "sam3_negatives"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise bad(f"options.{name}: {getattr(self, name)} is out of range; use 0 <= x < 1")
        for name in ("sam3_roles", "grounding_roles"):
            for role in (r.strip() for r in getattr(self, name).split(",")):
                if role and role not in ROLES:
                    raise bad(f"options.{name}: unknown role {role!r}; use a comma-separated "
                              f"list of {', '.join(ROLES)} ('' = every object)")  # fmt: skip
        if self.sam3_phrases not in ("prompt", "role"):
            raise bad(f"options.sam3_phrases: {self.sam3_phrases!r}; use 'prompt' or 'role'")
        if not self.rgbm_key or "/" in self.rgbm_key or self.rgbm_key.startswith("."):
            raise bad(f"options.rgbm_key: {self.rgbm_key!r}; use a plain array name like 'rgbm'")
        try:
            json.dumps(self.pipeline, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise bad(f"options.pipeline: must be JSON-serialisable ({exc})") from exc

    def codec(self) -> numcodecs.abc.Codec | None:
        """The lossless compressor for zarr arrays (None = uncompressed)."""
        if self.compressor == "blosc":
            return numcodecs.Blosc(
                cname=self.cname, clevel=self.clevel, shuffle=SHUFFLES[self.shuffle]
            )
        if self.compressor == "zstd":
            return numcodecs.Zstd(level=self.clevel)
        if self.compressor == "zlib":
            return numcodecs.Zlib(level=self.clevel)
        return None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def output_settings(self) -> dict[str, Any]:
        """Options that shape the output bytes (all but operational ones such as fsync);
        recorded in the manifest and attrs, and must match when an export is resumed."""
        return {k: v for k, v in self.as_dict().items() if k not in OPERATIONAL}


def parse_outputs(outputs: list[str]) -> tuple[str, ...]:
    """Validate the requested outputs; returned in canonical order."""
    if not outputs:
        raise bad(f"outputs: empty; ask for at least one of {OUTPUTS}")
    for name in outputs:
        if name not in OUTPUTS:
            raise bad(f"outputs: unknown output {name!r}; valid outputs: {', '.join(OUTPUTS)}")
    return tuple(name for name in OUTPUTS if name in outputs)
