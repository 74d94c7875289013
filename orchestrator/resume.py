"""Which selected episodes a run does: new ones, and done ones whose prompts changed.

Usage:
    todo, skipped, reopen = decide(plans, done={0, 1}, records=status["records"])
    # reopen: done episodes to re-export (exporter reopen_episode, then run them again)

A done episode is skipped unless the prompts-file entry it was exported from changed: its done
record's `prompts_fingerprint` differs from the plan's (protocol: episode_fingerprint). An
episode whose record says `source: studio` and `approved` is never re-run or overwritten.
"""

from __future__ import annotations

from orchestrator.plan import EpisodePlan
from orchestrator.report import EpisodeRecord


def decide(plans: list[EpisodePlan], done: set[int],
           records: dict) -> tuple[list[EpisodePlan], list[EpisodeRecord], list[EpisodePlan]]:  # fmt: skip
    """(to run, skipped records, done episodes to reopen first)."""
    todo: list[EpisodePlan] = []
    skipped: list[EpisodeRecord] = []
    reopen: list[EpisodePlan] = []
    for p in plans:
        if p.episode not in done:
            todo.append(p)
            continue
        rec = records.get(str(p.episode)) or records.get(p.episode) or {}
        was_round, was_fp = rec.get("round"), rec.get("prompts_fingerprint")
        if rec.get("source") == "studio" and rec.get("approved"):
            skipped.append(EpisodeRecord(p.episode, p.n_frames, result="skipped", round=was_round,
                                         prompts_fingerprint=was_fp,
                                         note=f"approved in the studio (round {was_round}); "
                                              "left as it is"))  # fmt: skip
        elif p.prompts_fingerprint is not None and was_fp != p.prompts_fingerprint:
            reopen.append(p)
            todo.append(p)
        else:
            skipped.append(EpisodeRecord(p.episode, p.n_frames, result="skipped", round=was_round,
                                         prompts_fingerprint=was_fp, note="already done"))  # fmt: skip
    return todo, skipped, reopen


def rerun_note(p: EpisodePlan, records: dict) -> str:
    rec = records.get(str(p.episode)) or {}
    return (f"re-run: its prompts changed since it was exported (round {rec.get('round')} -> "
            f"{p.prompts_round})")  # fmt: skip
