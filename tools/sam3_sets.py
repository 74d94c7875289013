"""SAM3 fine-tuning sets (stage 1 COCO, stage 2 YTVIS, split by episode) from a finished run.

Replays the run's masks (its npz output) through the exporter's `sam3` output into a new
folder (layout: services/exporter/README.md), then prints the counts per split as JSON.

Usage:
    python -m tools.sam3_sets --run out/rgbm --output out/sam3-sets --every 5 --negatives 0.15 \
        --eval-fraction 0.2 --seed 0 [--video-every 1] [--roles target] [--phrases prompt|role] \
        [--approved-only] [--episodes 0-9,12] [--source moved.zarr]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from services.exporter.errors import ExportError
from tools.from_run import replay_run


def parse_episodes(text: str | None) -> list[int] | None:
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    if not text:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.partition("-")
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise ValueError(f"--episodes: {text!r}; use a list like 0-9,12") from None
    return out


def counts(root: Path) -> dict[str, Any]:
    """Images/annotations (stage 1) and videos/tracks/frames (stage 2) per split."""
    out: dict[str, Any] = {}
    for folder in ("train", "test"):
        doc = json.loads((root / "stage1" / folder / "_annotations.coco.json").read_text())
        empty = len({i["id"] for i in doc["images"]} - {a["image_id"] for a in doc["annotations"]})
        out[f"stage1_{folder}"] = {"images": len(doc["images"]), "negatives": empty,
                                   "annotations": len(doc["annotations"]),
                                   "categories": [c["name"] for c in doc["categories"]]}  # fmt: skip
    for folder in ("train", "val"):
        doc = json.loads((root / "stage2" / folder / "annotations.json").read_text())
        out[f"stage2_{folder}"] = {"videos": len(doc["videos"]), "tracks": len(doc["annotations"]),
                                   "frames": sum(v["length"] for v in doc["videos"])}  # fmt: skip
    split = json.loads((root / "split.json").read_text())
    out["split"] = split["included"]
    out["excluded_not_approved"] = split["excluded_not_approved"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.sam3_sets", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--run", required=True, type=Path, help="a finished run's output folder (npz kept)"
    )
    p.add_argument("--output", required=True, type=Path, help="new folder for the sets (resumable)")
    p.add_argument("--source", help="the run's source buffer, if it moved (fingerprint checked)")
    p.add_argument("--every", type=int, default=5, help="stage 1: every k-th frame (5)")
    p.add_argument("--video-every", type=int, default=1, help="stage 2: every k-th frame (1)")
    p.add_argument(
        "--negatives",
        type=float,
        default=0.15,
        help="stage 1: at most this share of images without the objects (0.15)",
    )
    p.add_argument("--eval-fraction", type=float, default=0.2, help="episodes in test/val (0.2)")
    p.add_argument("--seed", type=int, default=0, help="split and negatives seed (0)")
    p.add_argument("--roles", default="", help="comma-separated roles ('' = every object)")
    p.add_argument(
        "--phrases",
        choices=("prompt", "role"),
        default="prompt",
        help="noun phrase: the prompt's words (else the role) or the role's name",
    )
    p.add_argument("--approved-only", action="store_true", help="only studio-approved episodes")
    p.add_argument("--episodes", help="only these done episodes, e.g. 0-9,12")
    p.add_argument("--jpeg-quality", type=int, default=95)
    args = p.parse_args(argv)
    options = {"sam3_every": args.every, "sam3_video_every": args.video_every, "sam3_negatives": args.negatives,
               "eval_fraction": args.eval_fraction, "split_seed": args.seed,
               "sam3_roles": args.roles, "sam3_phrases": args.phrases,
               "approved_only": args.approved_only, "jpeg_quality": args.jpeg_quality}  # fmt: skip
    try:
        summary = replay_run(args.run, args.output, ["sam3"], options, args.source,
                             parse_episodes(args.episodes))  # fmt: skip
    except (ExportError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary["sets"] = str(args.output.resolve() / "sam3")
    summary.update(counts(args.output / "sam3"))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
