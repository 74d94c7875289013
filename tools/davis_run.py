"""A replay buffer and a finished "run" from DAVIS sequences, with the ground-truth masks as the
run's masks: real video to try the training-set tools (tools.sam3_sets, tools.grounding) on.

Writes <out>/davis.zarr (diffusion_policy layout: data/camera0_rgb (N, H, W, 3) uint8,
meta/episode_ends; one episode per sequence) and <out>/run/ (an exporter folder with the npz
output: the ground-truth mask as the `target` object, obj_id 1; the meta names the sequence
as the object's text prompt, e.g. "bmx trees", and `source: davis-ground-truth`).

Usage:
    python -m tools.davis_run --davis ../shared/data/davis2016-dev --out out/davis --max-frames 40
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import zarr

from bench.davis import default_davis, list_sequences, load_sequence
from protocol.masks import pack
from services.exporter.export import Export, MemoryBudget

CAMERA_KEY = "camera0_rgb"


def write_buffer(path: Path, frames: list[np.ndarray]) -> None:
    """frames: per episode (T, H, W, 3) uint8 RGB, all of one size."""
    ends = np.cumsum([len(f) for f in frames]).astype(np.int64)
    h, w = frames[0].shape[1:3]
    root = zarr.open_group(zarr.storage.LocalStore(path), mode="w-", zarr_format=2)
    arr = root.require_group("data").create_array(
        CAMERA_KEY, shape=(int(ends[-1]), h, w, 3), dtype=np.uint8, chunks=(1, h, w, 3)
    )
    t = 0
    for f in frames:
        arr[t : t + len(f)] = f
        t += len(f)
    meta = root.require_group("meta")
    meta.create_array("episode_ends", shape=ends.shape, dtype=np.int64, chunks=ends.shape)[...] = (
        ends
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.davis_run", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--davis", type=Path, default=default_davis(), help="DAVIS root (JPEGImages/480p)"
    )
    p.add_argument("--out", type=Path, required=True, help="new folder: davis.zarr and run/")
    p.add_argument("--sequences", help="comma-separated names (default: every sequence)")
    p.add_argument("--max-frames", type=int, default=40, help="frames per sequence (40)")
    args = p.parse_args(argv)
    names = list_sequences(args.davis)
    if not names:
        print(f"error: --davis: no sequences under {args.davis}/JPEGImages/480p", file=sys.stderr)
        return 2
    if args.sequences:
        want = [s.strip() for s in args.sequences.split(",") if s.strip()]
        unknown = sorted(set(want) - set(names))
        if unknown:
            print(f"error: --sequences: {unknown} not in {args.davis} ({names})", file=sys.stderr)
            return 2
        names = want
    if (args.out / "davis.zarr").exists():
        print(f"error: --out: {args.out}/davis.zarr exists; use a new folder", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    frames, masks = [], []
    for name in names:
        f, m = load_sequence(args.davis, name, max_frames=args.max_frames)
        if frames and f.shape[1:] != frames[0].shape[1:]:
            print(f"error: {name} is {f.shape[2]}x{f.shape[1]}, the others "
                  f"{frames[0].shape[2]}x{frames[0].shape[1]}; pass --sequences of one size",
                  file=sys.stderr)  # fmt: skip
            return 2
        frames.append(f)
        masks.append(m)
        print(f"{name}: {len(f)} frames", file=sys.stderr)
    buf = args.out / "davis.zarr"
    write_buffer(buf, frames)
    exp = Export.open(str(args.out / "run"), str(buf), CAMERA_KEY, ["npz"], {"fsync": False},
                      MemoryBudget(4 << 30))  # fmt: skip
    width = frames[0].shape[2]
    for ep, (name, m) in enumerate(zip(names, masks, strict=True)):
        for s in range(0, len(m), 16):
            exp.put_masks(ep, s, [1], pack(m[None, s : s + 16]), width)
        phrase = name.replace("-", " ")
        meta = {"source": "davis-ground-truth", "sequence": name,
                "stages": [{"stage": "gt", "prompts": [{"role": "target", "obj_id": 1,
                                                        "frame": 0, "text": phrase}]}]}  # fmt: skip
        exp.finish_episode(ep, {"target": 1}, meta)
    exp.close()
    print(json.dumps({"buffer": str(buf.resolve()), "run": str((args.out / "run").resolve()),
                      "episodes": dict(enumerate(names))}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
