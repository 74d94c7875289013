"""Spatial-grounding data (seed 003): export folders, build task JSONs, score answers.

    export  a finished run's masks -> <output>/grounding/{split}/{scene}/uid_{uid}/NN_frame_*.png
    build   grounding folders -> t1/t2a/t2b task JSONs (tools/grounding_tasks.py)
    eval    a task JSON + answers (a predictions file, or the vlm service's `point` op
            zero-shot by the object's description) -> {metrics, results} JSON

Usage:
    python -m tools.grounding export --run out/rgbm --output out/grounding [--frames 5] \
        [--dilation 10] [--inpainted-dir propainter_out] [--eval-fraction 0.2] [--seed 0]
    python -m tools.grounding build --data-root out/grounding/grounding --out-dir out/tasks \
        [--alpha 0.45] [--use-dilated-mask] [--mode anchor --anchor-k 1] [--emit-concat 1]
    python -m tools.grounding eval --data-json out/tasks/t1_val_multi.json \
        (--predictions answers.json | --vlm tcp://127.0.0.1:5553 | --baseline centre) \
        --output-json out/eval/t1.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2

from services.exporter.errors import ExportError
from tools.from_run import replay_run
from tools.grounding_eval import evaluate
from tools.grounding_tasks import NOT_VISIBLE, build_tasks
from tools.sam3_sets import parse_episodes


def load_predictions(path: Path) -> dict[str, str | None]:
    """{id: text} from a JSON object {id: text}, a JSON list or JSONL of {id, pred_text|text}."""
    raw = path.read_text()
    try:
        doc: Any = json.loads(raw)
    except json.JSONDecodeError:
        doc = [json.loads(line) for line in raw.splitlines() if line.strip()]
    if isinstance(doc, dict) and "results" in doc:  # an earlier eval output
        doc = doc["results"]
    if isinstance(doc, dict):
        return {str(k): v for k, v in doc.items()}
    out = {}
    for i, rec in enumerate(doc):
        text = rec.get("pred_text", rec.get("text")) if isinstance(rec, dict) else None
        if (
            not isinstance(rec, dict)
            or "id" not in rec
            or not (text is None or isinstance(text, str))
        ):
            raise ValueError(f"--predictions: record {i} of {path} needs 'id' and 'pred_text' "
                             "(or 'text'): a string or null")  # fmt: skip
        out[str(rec["id"])] = text
    return out


def vlm_image(sample: dict[str, Any]) -> Path:
    """The single image the point op sees: the concat image, else the query image (Task1:
    view B; Task2B: the original, whose geometry the inpainted image shares)."""
    if isinstance(sample["image"], str):
        return Path(sample["image"])
    if sample.get("task") == "t2b":
        return Path(sample["image"][0])
    return Path(sample["query_original"])


def ask_vlm(samples: list[dict[str, Any]], endpoint: str, description: str | None,
            timeout: float) -> dict[str, str | None]:  # fmt: skip
    """Zero-shot answers from the vlm service's `point` op (description-based pointing)."""
    from protocol.client import Client
    from services.vlm.api import CONTRACT

    client = Client(endpoint, timeout=timeout, contract=CONTRACT)
    out: dict[str, str | None] = {}
    try:
        for i, s in enumerate(samples):
            desc = description or s.get("description")
            if not desc:
                raise ValueError(f"sample {s['id']!r} has no description (object.json); pass "
                                 "--description 'the green cup'")  # fmt: skip
            if s.get("concat"):
                desc = f"{desc}, in the right half of the image"
            path = vlm_image(s)
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise FileNotFoundError(f"sample {s['id']!r}: cannot read {path}")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            rep = client.call("point", {"image": rgb, "description": desc})
            h, w = rgb.shape[:2]
            if not rep.get("visible") or rep.get("point") is None:
                out[s["id"]] = NOT_VISIBLE
            else:
                x, y = rep["point"]
                out[s["id"]] = f"[({x / w:.4f}, {y / h:.4f})]"
            print(f"{i + 1}/{len(samples)} {s['id']}: {out[s['id']]}", file=sys.stderr)
    finally:
        client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.grounding", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="grounding folders from a finished run's masks")
    e.add_argument("--run", required=True, type=Path)
    e.add_argument("--output", required=True, type=Path)
    e.add_argument("--source", help="the run's source buffer, if it moved (fingerprint checked)")
    e.add_argument("--frames", type=int, default=5, help="frames per episode (5)")
    e.add_argument("--dilation", type=int, default=10, help="_mask_dialated radius px (10)")
    e.add_argument("--roles", default="target", help="objects exported as uid_<obj_id> (target)")
    e.add_argument("--inpainted-dir", default="", help="ProPainter output folder (--save_frames)")
    e.add_argument("--eval-fraction", type=float, default=0.2)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--approved-only", action="store_true")
    e.add_argument("--episodes", help="only these done episodes, e.g. 0-9,12")
    b = sub.add_parser("build", help="task JSONs from grounding folders")
    b.add_argument("--data-root", required=True, type=Path, help="<export>/grounding")
    b.add_argument("--out-dir", required=True, type=Path)
    b.add_argument("--seed", type=int, default=0, help="GT point fallback RNG seed")
    b.add_argument("--alpha", type=float, default=0.45, help="red overlay alpha on A's mask")
    b.add_argument("--use-dilated-mask", action="store_true", help="GT from _mask_dialated.png")
    b.add_argument("--mode", choices=("anchor", "all"), default="anchor")
    b.add_argument("--anchor-k", type=int, default=1)
    b.add_argument("--emit-concat", type=int, choices=(0, 1), default=1)
    v = sub.add_parser("eval", help="score answers: Hit@Mask, NOT_VISIBLE accuracy, L2")
    v.add_argument("--data-json", required=True, type=Path)
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--predictions", type=Path, help="{id: text} JSON, or a list/JSONL of {id, pred_text}"
    )
    src.add_argument("--vlm", help="vlm service endpoint: answers from its point op")
    src.add_argument(
        "--baseline",
        choices=("centre",),
        help="reference answers: the query image's centre (concat: (0.75, 0.5))",
    )
    v.add_argument("--description", help="object description for --vlm (default: the sample's)")
    v.add_argument("--timeout", type=float, default=60.0)
    v.add_argument("--output-json", required=True, type=Path)
    args = p.parse_args(argv)
    try:
        if args.cmd == "export":
            options = {"grounding_frames": args.frames, "grounding_dilation": args.dilation,
                       "grounding_roles": args.roles, "inpainted_dir": args.inpainted_dir,
                       "eval_fraction": args.eval_fraction, "split_seed": args.seed,
                       "approved_only": args.approved_only}  # fmt: skip
            out: dict[str, Any] = replay_run(args.run, args.output, ["grounding"], options,
                                             args.source, parse_episodes(args.episodes))  # fmt: skip
            out["grounding"] = str(args.output.resolve() / "grounding")
        elif args.cmd == "build":
            out = build_tasks(args.data_root, args.out_dir, seed=args.seed, alpha=args.alpha,
                              use_dilated_mask=args.use_dilated_mask, mode=args.mode,
                              anchor_k=args.anchor_k, emit_concat=bool(args.emit_concat))  # fmt: skip
        else:
            samples = json.loads(args.data_json.read_text())
            if args.predictions is not None:
                preds = load_predictions(args.predictions)
            elif args.baseline == "centre":
                preds = {s["id"]: "[(0.75, 0.5)]" if s.get("concat") else "[(0.5, 0.5)]"
                         for s in samples}  # fmt: skip
            else:
                preds = ask_vlm(samples, args.vlm, args.description, args.timeout)
            report = evaluate(samples, preds)
            report["data_json"] = str(args.data_json.resolve())
            args.output_json.parent.mkdir(parents=True, exist_ok=True)
            args.output_json.write_text(json.dumps(report, indent=1) + "\n")
            out = {"output_json": str(args.output_json.resolve()), **report["metrics"]}
    except (ExportError, ValueError, KeyError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
