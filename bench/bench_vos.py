"""Video object segmentation benchmark on DAVIS through the sam session layer: J, F, J&F,
frames/s, single-image box -> mask IoU, simulated corrections and the drift alarm.

Usage:
    python -m bench.bench_vos [--davis ../shared/data/davis2016-dev] [--sequences dog camel] \
        [--max-frames 20] [--protocols mask box image interactive] [--rounds 5] \
        [--backend classical] [--option KEY=VALUE] [--threads 2]
    python -m bench.bench_vos --sam2-random --sequences blackswan dog --max-frames 4   # sam2 venv

Protocols (bench/vos_protocols.py): mask (frame-0 GT mask, propagate forward), box (frame-0 GT
box, forward), image (segment_image with each first frame's GT box), interactive (start from
the box protocol, up to --rounds simulated corrections on the worst-J frame, re-propagation).
Metrics (bench/vos_metrics.py): DAVIS J and F (boundary tolerance 0.008 of the diagonal),
means over frames 1..T-2 per sequence, then over sequences. frames/s: frames over prompting +
propagation time of the mask protocol, one object (wall clock), and frames per CPU second of
the process (fps_per_cpu_second: what one free core gives, whatever else runs). Without the DAVIS folder it prints why and
exits 0 (skipped). The LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import yaml

from bench.davis import default_davis, list_sequences, load_sequence
from bench.vos_metrics import sequence_scores
from bench.vos_protocols import has_bounded, run_image, run_interactive, run_prompted
from services.sam.backends import create_backend
from services.sam.sessions import SessionManager

PROTOCOLS = ("mask", "box", "image", "interactive")
RANDOM_NOTE = "sam2 with RANDOM weights: the protocol runs, the quality figures mean nothing"


def random_sam2_options(tmp: Path, image_size: int) -> dict:
    """Build sam2.1_hiera_t with random weights (seed 0), save it the way Meta's checkpoints
    are saved, and return the sam2 backend options that load it through the normal path."""
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    path = tmp / "sam2.1_hiera_tiny.pt"  # the name lets the backend infer the config
    torch.save({"model": model.state_dict()}, path)
    return {"checkpoint": str(path), "device": "cpu",
            "hydra_overrides": [f"++model.image_size={image_size}"]}  # fmt: skip


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(float(np.mean(xs)), 4) if xs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.bench_vos", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--davis", type=Path, default=None,
                    help="DAVIS folder (default: ../shared/data/davis2016-dev from the repo root)")  # fmt: skip
    ap.add_argument("--sequences", nargs="*", help="sequence names (default: all in the folder)")
    ap.add_argument("--max-frames", type=int, default=None, help="first N frames of each sequence")
    ap.add_argument("--protocols", nargs="*", default=list(PROTOCOLS), choices=PROTOCOLS)
    ap.add_argument("--rounds", type=int, default=5, help="simulated corrections (interactive)")
    ap.add_argument("--backend", default="classical")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="backend option, VALUE read as YAML (repeatable)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2, help="OpenCV threads (cores to use)")
    ap.add_argument("--sam2-random", action="store_true",
                    help="sam2 backend with a random-weight sam2.1_hiera_t (protocol check only)")  # fmt: skip
    ap.add_argument("--sam2-image-size", type=int, default=128, help="with --sam2-random")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = args.davis if args.davis is not None else default_davis()
    names = list_sequences(root)
    if not names:
        print(f"skipped: no DAVIS sequences under {root} (give --davis PATH)", file=sys.stderr)
        print(json.dumps({"skipped": True, "davis": str(root)}))
        return 0
    if args.sequences:
        missing = sorted(set(args.sequences) - set(names))
        if missing:
            print(f"--sequences: {missing} not in {root} (has {names})", file=sys.stderr)
            return 2
        names = list(args.sequences)
    if args.max_frames is not None and args.max_frames < 3:
        print("--max-frames: needs >= 3 (J and F leave out the first and last frame)", file=sys.stderr)  # fmt: skip
        return 2
    cv2.setNumThreads(args.threads)
    options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.option)}
    backend_name = args.backend
    tmp = None
    if args.sam2_random:
        tmp = tempfile.TemporaryDirectory(prefix="bench-vos-sam2-")
        backend_name = "sam2"
        options = {**random_sam2_options(Path(tmp.name), args.sam2_image_size), **options}
        print(RANDOM_NOTE)
    backend = create_backend(backend_name, options)
    backend.setup()
    mgr = SessionManager(backend, max_sessions=2)
    load_start = os.getloadavg()
    rows: dict[str, dict] = {}
    fps_frames, fps_s, cpu_s = 0, 0.0, 0.0
    for name in names:
        frames, gts = load_sequence(root, name, args.max_frames)
        row: dict = {"frames": int(len(frames))}
        for kind in ("mask", "box"):
            if kind in args.protocols:
                r = run_prompted(mgr, frames, gts, kind)
                s = sequence_scores(r["pred"], gts)
                row[kind] = {k: round(s[k], 4) for k in ("J", "F", "JF")}
                row[kind]["fps"] = round(r["frames"] / (r["prompt_s"] + r["propagate_s"]), 2)
                if kind == "mask":
                    fps_frames += r["frames"]
                    fps_s += r["prompt_s"] + r["propagate_s"]
                    cpu_s += r["cpu_s"]
        if "image" in args.protocols:
            row["image_iou"] = round(run_image(backend, frames[0], gts[0]), 4)
        if "interactive" in args.protocols:
            it = run_interactive(mgr, frames, gts, rounds=args.rounds)
            row["interactive"] = {
                "JF": [round(x, 4) for x in it["JF"]],
                "J": [round(x, 4) for x in it["J"]],
                "to_j85": it["to_target"],
                "reprop": it["reprop"],
                "reprop_s": round(float(np.sum(it["propagate_s"][1:])), 2),
                "recomputed": it["recomputed"],
                "drift": it["drift"],
            }
        rows[name] = row
        print(_line(name, row), flush=True)
    load_end = os.getloadavg()
    result = _summary(args, backend_name, options, root, rows, fps_frames, fps_s)
    if cpu_s > 0:
        result["fps_per_cpu_second"] = round(fps_frames / cpu_s, 2)
    result["loadavg"] = {"start": [round(x, 2) for x in load_start],
                         "end": [round(x, 2) for x in load_end]}  # fmt: skip
    result["bounded_available"] = has_bounded(mgr)
    if args.sam2_random:
        result["note"] = RANDOM_NOTE
    _print_summary(result)
    print(json.dumps(result))
    if tmp is not None:
        tmp.cleanup()
    return 0


def _line(name: str, row: dict) -> str:
    parts = [f"{name:<20} T={row['frames']:<3}"]
    for kind in ("mask", "box"):
        if kind in row:
            r = row[kind]
            parts.append(
                f"{kind}: J {r['J']:.3f} F {r['F']:.3f} J&F {r['JF']:.3f} ({r['fps']:.1f} fps)"
            )
    if "image_iou" in row:
        parts.append(f"image IoU {row['image_iou']:.3f}")
    if "interactive" in row:
        it = row["interactive"]
        parts.append("J&F by round " + " ".join(f"{x:.2f}" for x in it["JF"]))
        parts.append(f"to J>=0.85: {it['to_j85']}")
        if it["drift"] is not None:
            parts.append(f"drift hit {it['drift']['hit']}")
    return " | ".join(parts)


def _summary(args, backend_name, options, root, rows, fps_frames, fps_s) -> dict:
    res: dict = {
        "backend": backend_name,
        "options": {k: v for k, v in options.items() if k != "checkpoint"},
        "davis": str(root),
        "sequences": list(rows),
        "max_frames": args.max_frames,
        "threads": args.threads,
    }
    for kind in ("mask", "box"):
        per = {n: r[kind] for n, r in rows.items() if kind in r}
        if per:
            res[kind] = {k: _mean(v[k] for v in per.values()) for k in ("J", "F", "JF")}
            res[kind]["per_sequence"] = per
    if fps_s > 0:
        res["fps"] = round(fps_frames / fps_s, 2)
    img = {n: r["image_iou"] for n, r in rows.items() if "image_iou" in r}
    if img:
        res["image_iou"] = _mean(img.values())
        res["image_iou_per_sequence"] = img
    its = {n: r["interactive"] for n, r in rows.items() if "interactive" in r}
    if its:
        n_r = args.rounds + 1
        res["interactive"] = {
            "start": "box",
            "rounds": args.rounds,
            "reprop": next(iter(its.values()))["reprop"],
            "JF_after": [_mean(v["JF"][i] for v in its.values()) for i in range(n_r)],
            "J_after": [_mean(v["J"][i] for v in its.values()) for i in range(n_r)],
            "to_j85": {n: v["to_j85"] for n, v in its.items()},
            "reprop_s": round(sum(v["reprop_s"] for v in its.values()), 2),
        }
        drift = {n: v["drift"]["hit"] for n, v in its.items() if v["drift"] is not None}
        res["drift"] = (
            {"hits": drift, "hit_rate": _mean(float(h) for h in drift.values())}
            if drift else {"available": False, "why": "services/sam/drift.py not importable"}
        )  # fmt: skip
    return res


def _print_summary(res: dict) -> None:
    for kind in ("mask", "box"):
        if kind in res:
            r = res[kind]
            print(f"{kind:>5} protocol: J {r['J']:.3f}  F {r['F']:.3f}  J&F {r['JF']:.3f}")
    if "fps" in res:
        print(f"speed: {res['fps']:.1f} frames/s (mask protocol, one object, prompt + propagate)")
        if "fps_per_cpu_second" in res:
            print(f"       {res['fps_per_cpu_second']:.1f} frames per CPU second (all threads)")
    if "image_iou" in res:
        print(f"single-image box -> mask IoU (frame 0): {res['image_iou']:.3f}")
    if "interactive" in res:
        it = res["interactive"]
        print("interactive (" + it["reprop"] + " re-propagation): J&F after 0..N corrections "
              + " ".join(f"{x:.3f}" for x in it["JF_after"]))  # fmt: skip
        print(
            "                 J after 0..N corrections "
            + " ".join(f"{x:.3f}" for x in it["J_after"])
        )
        print(f"corrections to J >= 0.85: {it['to_j85']}")
        d = res["drift"]
        if "hit_rate" in d:
            print(f"drift alarm: worst-J frame in its top 10% on {d['hit_rate']:.2f} of sequences")
        else:
            print(f"drift alarm: not measured ({d['why']})")
    print(f"load average at start {res['loadavg']['start']}, end {res['loadavg']['end']}")
    if "note" in res:
        print(res["note"])


if __name__ == "__main__":
    sys.exit(main())
