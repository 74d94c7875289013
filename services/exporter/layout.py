"""Where each output lives inside an export folder.

Usage:
    lay = Layout(Path("/data/out"))
    lay.marker(3)          # /data/out/done/0003.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MANIFEST_FORMAT = "maskmesh-export"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "export.json"

    @property
    def done_dir(self) -> Path:
        return self.root / "done"

    def marker(self, episode: int) -> Path:
        return self.done_dir / f"{episode:04d}.json"

    @property
    def rgbm_zarr(self) -> Path:
        return self.root / "rgbm.zarr"

    @property
    def arm_only_zarr(self) -> Path:
        return self.root / "arm_only.zarr"

    @property
    def arm_only_dir(self) -> Path:
        return self.root / "arm_only"

    def arm_only_episode(self, episode: int) -> Path:
        return self.arm_only_dir / f"{episode:04d}"

    def npz(self, episode: int) -> Path:
        return self.root / "npz" / f"{episode:04d}.npz"

    def preview_mp4(self, episode: int) -> Path:
        return self.root / "preview" / f"{episode:04d}.mp4"

    def preview_sheet(self, episode: int) -> Path:
        return self.root / "preview" / f"{episode:04d}_sheet.png"

    @property
    def ytvis_dir(self) -> Path:
        return self.root / "ytvis"

    def ytvis_frames(self, episode: int) -> Path:
        return self.ytvis_dir / "JPEGImages" / f"{episode:04d}"

    def ytvis_video_json(self, episode: int) -> Path:
        return self.ytvis_dir / "videos" / f"{episode:04d}.json"

    @property
    def ytvis_json(self) -> Path:
        return self.ytvis_dir / "annotations.json"

    def folders(self) -> list[Path]:
        """Every folder that may hold temp entries (for the sweep after a killed run)."""
        return [
            self.root, self.done_dir, self.arm_only_dir, self.root / "npz", self.root / "preview",
            self.ytvis_dir, self.ytvis_dir / "JPEGImages", self.ytvis_dir / "videos",
            *self.sets_folders(),
        ]  # fmt: skip

    def sets_folders(self) -> list[Path]:
        """Folders of the training-set outputs (sam3, grounding) that may hold temps."""
        sam3, gr = self.root / "sam3", self.root / "grounding"
        return [sam3, sam3 / "parts", *(sam3 / s / d for s, ds in
                (("stage1", ("train", "test")), ("stage2", ("train", "val"))) for d in ds),
                gr, gr / "train", gr / "val"]  # fmt: skip

    def own_entries(self) -> set[str]:
        """Top-level names an export creates (a folder holding only these is ours)."""
        return {"export.json", "done", "rgbm.zarr", "arm_only.zarr", "arm_only", "npz",
                "preview", "ytvis", "sam3", "grounding", ".lock"}  # fmt: skip
