"""The orchestrator CLI.

Usage:
    python -m orchestrator run --config configs/pipelines/rgbm.yaml --input data/demo/demo.zarr \\
        --output out/rgbm [--episodes 0-9,12] [--services configs/services.yaml] \\
        [--prompts data/demo/prompts.yaml] [--camera-key head_cam_img] [--fail-fast] \\
        [--no-progress] [--dry-run]
    python -m orchestrator status [--services configs/services.yaml] [--output out/rgbm]
    python -m orchestrator fingerprint --input mine.zarr [--camera-key KEY]

The services config is --services, else $SERVICES_CONFIG, else configs/services.yaml; every
command prints which one it used.

Exit codes: 0 every selected episode done (or skipped as already done); 1 some failed;
2 the run could not start (config, prompts, services); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from orchestrator.config import PipelineConfigError, load_pipeline
from orchestrator.report import summary_table
from orchestrator.run import RunError, RunInterrupted, run_pipeline
from orchestrator.status import dry_run, export_progress, fingerprint, format_status, mesh_status
from protocol.config import (
    DEFAULT_SERVICES_CONFIG,
    ConfigError,
    describe_services_source,
    load_services,
    services_config_path,
)

SERVICES_HELP = f"services config (default: $SERVICES_CONFIG, else {DEFAULT_SERVICES_CONFIG})"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator", description="Run mask-labelling pipelines over the mesh."
    )
    p.add_argument(
        "--log-level", default="WARNING", help="logging level on stderr (default WARNING)"
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a pipeline over a replay buffer")
    r.add_argument(
        "--config", required=True, help="pipeline config, e.g. configs/pipelines/rgbm.yaml"
    )
    r.add_argument(
        "--input", required=True, help="input replay buffer (zarr directory or .zarr.zip)"
    )
    r.add_argument("--output", required=True, help="export folder (report.json goes there too)")
    r.add_argument("--episodes", help="episodes to run, e.g. 0-9,12 (default: all)")
    r.add_argument("--services", default=None, help=SERVICES_HELP)
    r.add_argument(
        "--prompts",
        help="prompts file (docs/prompts-file.md) written for --input; replaces the config's "
        "prompts_file, and for rgbm sets prompt.source: file (the boxes come from the file)",
    )
    r.add_argument(
        "--camera-key",
        help="data/<key> to mask, (T, H, W, 3) uint8 RGB; replaces the config's camera_key",
    )
    r.add_argument(
        "--fail-fast", action="store_true", default=None, help="stop at the first failed episode"
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="validate config and prompts, check every service answers, print the plan",
    )
    r.add_argument(
        "--json", action="store_true", help="print report.json to stdout instead of the table"
    )
    s = sub.add_parser("status", help="is every service replica up? what has an export done?")
    s.add_argument("--services", default=None, help=SERVICES_HELP)
    s.add_argument("--output", help="also show this export folder's progress / report.json")
    f = sub.add_parser(
        "fingerprint", help="print the `buffer:` entry that ties a prompts file to a buffer"
    )
    f.add_argument("--input", required=True, help="replay buffer (zarr directory or .zarr.zip)")
    f.add_argument("--camera-key", help="data/<key> the prompts are for (default: the only one)")
    f.add_argument("--services", default=None, help=SERVICES_HELP)
    return p


def _services_path(args: argparse.Namespace) -> str:
    """Resolve the services config (flag, $SERVICES_CONFIG, default) and say which one."""
    path, origin = services_config_path(args.services)
    print(describe_services_source(path, origin), file=sys.stderr)
    return path


def _status(args: argparse.Namespace) -> int:
    svcs = load_services(_services_path(args))
    rows = mesh_status(svcs)
    print(format_status(rows))
    if args.output:
        rep = Path(args.output) / "report.json"
        if rep.is_file():
            print(summary_table(json.loads(rep.read_text())))
        print(export_progress(svcs, args.output))
    return 0 if all(r["ok"] for r in rows) else 1


def _sigterm(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops as cleanly as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s orchestrator %(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        if args.cmd == "status":
            return _status(args)
        services = _services_path(args)
        if args.cmd == "fingerprint":
            print(fingerprint(args.input, services, camera_key=args.camera_key))
            return 0
        cfg = args.config
        if args.camera_key is not None:
            cfg = load_pipeline(args.config, {"camera_key": args.camera_key})
        if args.dry_run:
            print(dry_run(cfg, args.input, args.output, services, args.episodes,
                          prompts_file=args.prompts))  # fmt: skip
            return 0
        signal.signal(signal.SIGTERM, _sigterm)
        report = run_pipeline(cfg, args.input, args.output, services, args.episodes,
                              prompts_file=args.prompts, fail_fast=args.fail_fast,
                              progress=False if args.no_progress else None,
                              echo=lambda m: print(m, file=sys.stderr))  # fmt: skip
    except (RunError, ConfigError, PipelineConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunInterrupted as e:
        print(summary_table(e.report), file=sys.stderr)
        print(
            f"interrupted: finished episodes are kept in {args.output}; run again to resume",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:
        print("interrupted before the run started", file=sys.stderr)
        return 130
    print(json.dumps(report, indent=2) if args.json else summary_table(report))
    print(f"report: {Path(report['output']) / 'report.json'}", file=sys.stderr)
    return 1 if report["totals"]["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
