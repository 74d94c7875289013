"""Re-export a finished run's masks into other exporter outputs (sam3, grounding, ...), in process.

A run's export folder (written by the orchestrator with the `npz` output) holds per episode
the masks (npz/<ep>.npz), the roles and the meta (done/<ep>.json) and, in export.json, the
source buffer and camera key. This replays each done episode through a new Export, so the
training sets can be made (again, with other options) without running SAM again. The source
must be the run's (same fingerprint); --source overrides its path if it moved.

Usage:
    summary = replay_run(Path("out/rgbm"), Path("out/sam3"), ["sam3"], {"sam3_every": 5})
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from protocol.masks import pack
from services.exporter.export import Export, MemoryBudget
from services.exporter.layout import Layout
from services.exporter.records import read_done
from services.exporter.source import SourceBuffer

CHUNK = 64  # frames per put_masks


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def read_npz(path: Path) -> tuple[np.ndarray, list[int]]:
    """masks (n_obj, T, H, W) bool and obj_ids from an exporter npz."""
    with np.load(path, allow_pickle=False) as z:
        masks, ids = z["masks"], [int(v) for v in z["obj_ids"]]
    if masks.ndim != 5 or masks.shape[2] != 1:
        raise ValueError(
            f"run: {path} masks have shape {masks.shape}; expected (n_obj, T, 1, H, W)"
        )
    return masks[:, :, 0], ids


def run_manifest(run: Path) -> dict[str, Any]:
    path = run / "export.json"
    if not path.is_file():
        raise FileNotFoundError(f"--run: {run} has no export.json; give the --output folder of an "
                                "orchestrator run (the exporter's output folder)")  # fmt: skip
    manifest = json.loads(path.read_text())
    if "npz" not in manifest.get("outputs", []):
        raise ValueError(f"--run: {run} was exported without the npz output (outputs: "
                         f"{manifest.get('outputs')}); re-run the pipeline with npz in "
                         "exporter.outputs so the masks are kept")  # fmt: skip
    return manifest


def replay_run(run: Path, output: Path, outputs: list[str], options: dict[str, Any],
               source: str | None = None, episodes: list[int] | None = None,
               say: Callable[[str], None] = _say) -> dict[str, Any]:  # fmt: skip
    """Write `outputs` into `output` from the done episodes of `run`; returns a summary."""
    run = Path(run).resolve()
    manifest = run_manifest(run)
    src_path = source or manifest["source"]["path"]
    src = SourceBuffer.open(src_path)
    try:
        have, want = src.describe()["fingerprint"], manifest["source"]["fingerprint"]
    finally:
        src.close()
    if have != want:
        raise ValueError(f"--source: {src_path} is not the buffer the run was made from "
                         f"(fingerprint {have[:12]}, the run's {want[:12]}); give the run's source")  # fmt: skip
    done = read_done(Layout(run))
    todo = [e for e in done if episodes is None or e in set(episodes)]
    if episodes is not None and (missing := sorted(set(episodes) - set(done))):
        raise ValueError(f"--episodes: {missing} are not done in the run (done: {done})")
    if not todo:
        raise ValueError(f"--run: {run} has no done episode to export")
    exp = Export.open(str(output), src_path, manifest["camera_key"], outputs, options,
                      MemoryBudget(8 << 30))  # fmt: skip
    written, skipped = [], []
    try:
        for i, ep in enumerate(todo):
            if ep in exp.done:
                skipped.append(ep)
                continue
            marker = json.loads(Layout(run).marker(ep).read_text())
            npz = run / marker["outputs"]["npz"]
            try:
                masks, ids = read_npz(npz)
            except (OSError, KeyError, zipfile.BadZipFile) as exc:
                raise ValueError(
                    f"--run: cannot read the masks of episode {ep} ({npz}): {exc}"
                ) from exc
            width = masks.shape[-1]
            for s in range(0, masks.shape[1], CHUNK):
                exp.put_masks(ep, s, ids, pack(masks[:, s : s + CHUNK]), width)
            meta = dict(marker.get("meta") or {})
            for key in ("source", "approved"):  # a top-level studio approval travels too
                if key in marker and key not in meta:
                    meta[key] = marker[key]
            exp.finish_episode(ep, marker["roles"], meta)
            written.append(ep)
            say(f"episode {ep}: {masks.shape[1]} frames, {len(ids)} objects "
                f"({i + 1}/{len(todo)})")  # fmt: skip
    finally:
        exp.close()
    return {"run": str(run), "output": str(Path(output).resolve()), "outputs": outputs,
            "written": written, "already_done": skipped}  # fmt: skip
