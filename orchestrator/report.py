"""What users see: progress bars (tqdm, stderr), the summary table, <output>/report.json.

Usage:
    progress = Progress(enabled=True, episodes=10, frames=1000)
    progress.frames(100); progress.episode_done(); progress.close()
    report = build_report(records, ...)          # dict, written as report.json
    print(summary_table(report))

report.json:
    {pipeline, input, output, run_id, started, wall_s, interrupted, config: {...},
     episodes: [{episode, frames, result: done|failed|skipped|interrupted, attempts, retries,
                 request_retries, replica, stages: {read, vlm, wait_frames, upload, prompt,
                 propagate, masks, sam, export} (seconds, summed over attempts), outputs, error,
                 errors (one line per failed attempt), round (prompts-file round the masks come
                 from; null: not from a file), prompts_fingerprint, note (why skipped/re-run),
                 prompt (rgbm: {frame, why, spec, note?, held?: {held, label, description}})}],
     totals: {episodes, done, failed, skipped, interrupted, frames, frames_per_s,
              busy: {read, vlm, sam, export} (fraction of wall time x threads of that stage),
              sam_replicas, reader_threads}}
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

STAGE_KEYS = (
    "read",
    "vlm",
    "wait_frames",
    "upload",
    "prompt",
    "propagate",
    "masks",
    "sam",
    "export",
)


@dataclass
class EpisodeRecord:
    episode: int
    frames: int
    result: str = "pending"  # pending -> done | failed | skipped | interrupted
    attempts: int = 0
    request_retries: int = 0
    replica: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    error: str | None = None
    errors: list[str] = field(default_factory=list)
    round: int | None = None  # the prompts-file round this episode's masks come from
    prompts_fingerprint: str | None = None  # episode_fingerprint() of the prompts used
    note: str | None = None  # why it was skipped / re-run (empty, approved, prompts changed)
    prompt: dict = field(default_factory=dict)  # rgbm: frame, why, note, held (prompt_frame.py)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_times(self, times: dict[str, float]) -> None:
        with self._lock:
            for k, v in times.items():
                self.stages[k] = self.stages.get(k, 0.0) + v

    def as_dict(self) -> dict:
        return {
            "episode": self.episode,
            "frames": self.frames,
            "result": self.result,
            "attempts": self.attempts,
            "retries": max(0, self.attempts - 1),
            "request_retries": self.request_retries,
            "replica": self.replica,
            "stages": {k: round(self.stages[k], 4) for k in STAGE_KEYS if k in self.stages},
            "outputs": self.outputs,
            "error": self.error,
            "errors": self.errors,
            "round": self.round,
            "prompts_fingerprint": self.prompts_fingerprint,
            "note": self.note,
            **({"prompt": self.prompt} if self.prompt else {}),
        }


class Progress:
    """Two tqdm bars on stderr: episodes and frames (rate, ETA). No-op when disabled."""

    def __init__(self, enabled: bool = True, episodes: int = 0, frames: int = 0):
        self._ep = self._fr = None
        self._lock = threading.Lock()
        if enabled:
            from tqdm import tqdm

            self._ep = tqdm(total=episodes, desc="episodes", unit="ep", file=sys.stderr, position=0,
                            dynamic_ncols=True, smoothing=0.1)  # fmt: skip
            self._fr = tqdm(total=frames, desc="frames  ", unit="fr", file=sys.stderr, position=1,
                            dynamic_ncols=True, smoothing=0.1)  # fmt: skip
        self.failed = 0

    def frames(self, n: int) -> None:
        if self._fr is not None and n:
            with self._lock:
                self._fr.update(n)

    def episode_done(self) -> None:
        if self._ep is not None:
            with self._lock:
                self._ep.update(1)

    def episode_failed(self) -> None:
        with self._lock:
            self.failed += 1
            if self._ep is not None:
                self._ep.set_postfix(failed=self.failed)
                self._ep.update(1)

    def close(self) -> None:
        for bar in (self._fr, self._ep):
            if bar is not None:
                bar.close()


def build_report(records: list[EpisodeRecord], *, meta: dict, wall_s: float,
                 busy: dict[str, float], threads: dict[str, int]) -> dict:  # fmt: skip
    """The report dict: per-episode records and totals (frames/s, busy fraction per stage)."""
    eps = sorted(records, key=lambda r: r.episode)
    counts = {
        k: sum(r.result == k for r in eps) for k in ("done", "failed", "skipped", "interrupted")
    }
    frames = sum(r.frames for r in eps if r.result == "done")
    wall = max(wall_s, 1e-9)
    busy_frac = {}
    for stage, t in busy.items():
        n = max(1, threads.get(stage, 1))
        busy_frac[stage] = round(min(1.0, t / (wall * n)), 4)
    totals = {
        "episodes": len(eps),
        **counts,
        "frames": frames,
        "frames_per_s": round(frames / wall, 3),
        "busy": busy_frac,
        "sam_replicas": threads.get("sam", 0),
        "reader_threads": threads.get("read", 0),
    }
    return {
        **meta,
        "wall_s": round(wall_s, 4),
        "episodes": [r.as_dict() for r in eps],
        "totals": totals,
    }


def write_report(report: dict, output: str | os.PathLike) -> Path:
    """Write <output>/report.json atomically (temp file + rename)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def summary_table(report: dict) -> str:
    """A fixed-width table: one row per episode, then the totals."""
    head = f"{'episode':>7} {'result':<11} {'frames':>6} {'tries':>5} {'read s':>7} {'sam s':>7} {'prop s':>7} {'export s':>8}  note"
    rows = [head, "-" * len(head)]
    for e in report["episodes"]:
        st = e["stages"]
        note = e["error"] or e.get("note") or ""
        if len(note) > 70:
            note = note[:67] + "..."
        rows.append(
            f"{e['episode']:>7} {e['result']:<11} {e['frames']:>6} {e['attempts']:>5} "
            f"{st.get('read', 0):>7.2f} {st.get('sam', 0):>7.2f} {st.get('propagate', 0):>7.2f} "
            f"{st.get('export', 0):>8.2f}  {note}".rstrip()
        )
    t = report["totals"]
    busy = ", ".join(f"{k} {v:.0%}" for k, v in t["busy"].items())
    rows.append("-" * len(head))
    rows.append(
        f"{t['done']} done, {t['failed']} failed, {t['skipped']} skipped, "
        f"{t['interrupted']} interrupted | {t['frames']} frames in {report['wall_s']:.1f}s "
        f"= {t['frames_per_s']:.1f} frames/s | busy: {busy}"
    )
    return "\n".join(rows)
