"""What the training-set outputs (sam3, grounding) share: the seeded split by episode, the
studio-approval test of a done record, object selection by role, noun phrases, fsync of trees.

The split assigns every episode of the SOURCE (not only the done ones) once, from
(n_episodes, eval_fraction, split_seed): a seeded permutation, the first round(f * n)
episodes (at least 1 when f > 0 and n >= 2, at most n - 1) go to the evaluation split.
No episode is ever in two splits, and resuming or finishing in another order gives the same
split.

Usage:
    split = episode_split(n_episodes=40, fraction=0.2, seed=0)   # {episode: "train"|"eval"}
    is_studio_approved(json.loads(marker.read_text()))            # bool
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from services.exporter.episode import EpisodeJob, Writer
from services.exporter.errors import bad
from services.exporter.fsutil import fsync_path
from services.exporter.options import ROLES
from services.exporter.ytvis import CATEGORIES

TRAIN, EVAL = "train", "eval"
ROLE_PHRASE = {c["role"]: c["name"] for c in CATEGORIES}  # "target" -> "target object", ...


def episode_split(n_episodes: int, fraction: float, seed: int) -> dict[int, str]:
    """{episode: "train" | "eval"} for every episode 0..n-1 (seeded, deterministic)."""
    n_eval = 0
    if fraction > 0 and n_episodes >= 2:
        n_eval = min(n_episodes - 1, max(1, int(round(fraction * n_episodes))))
    order = np.random.default_rng(seed).permutation(n_episodes)
    held = {int(e) for e in order[:n_eval]}
    return {e: (EVAL if e in held else TRAIN) for e in range(n_episodes)}


def split_record(n_episodes: int, fraction: float, seed: int, included: dict[str, list[int]],
                 excluded: list[int], names: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """The split.json document: how the split was made, and which episodes went where."""
    split = episode_split(n_episodes, fraction, seed)
    return {
        "method": "numpy default_rng(split_seed).permutation(n_episodes); the first "
        "round(eval_fraction * n_episodes) episodes (>= 1 if eval_fraction > 0 and n >= 2) "
        "are the evaluation split",
        "split_seed": seed,
        "eval_fraction": fraction,
        "n_episodes": n_episodes,
        "split_names": names,
        "assignment": {names[s]: [e for e, v in split.items() if v == s] for s in (TRAIN, EVAL)},
        "included": {names[s]: included.get(s, []) for s in (TRAIN, EVAL)},
        "excluded_not_approved": excluded,
    }


def is_studio_approved(record: dict[str, Any]) -> bool:
    """True when a done record (done/<ep>.json, or the meta sent with finish_episode) says
    the episode came from the studio and was approved: `source: studio` and `approved: true`,
    at the top level or inside `meta`."""
    for doc in (record, record.get("meta") or {}):
        if isinstance(doc, dict) and doc.get("source") == "studio" and doc.get("approved") is True:
            return True
    return False


def parse_roles(value: str, option: str) -> tuple[str, ...]:
    """A comma-separated role list option ('' = every object)."""
    roles = tuple(r.strip() for r in value.split(",") if r.strip())
    for r in roles:
        if r not in ROLES:
            raise bad(f"options.{option}: unknown role {r!r}; use a comma-separated list of "
                      f"{', '.join(ROLES)} (empty = every object)")  # fmt: skip
    return roles


def select_objects(job: EpisodeJob, roles: tuple[str, ...], option: str) -> list[int]:
    """obj_ids to export: those of `roles` (in that order), or every object if roles is ()."""
    if not roles:
        return list(job.obj_ids)
    objs = [job.roles[r] for r in roles if r in job.roles]
    if not objs:
        raise bad(f"options.{option}: none of the roles {', '.join(roles)} names an object in "
                  f"episode {job.episode} (roles sent: {sorted(job.roles) or 'none'}); name "
                  "them in finish_episode's roles or change the option")  # fmt: skip
    return list(dict.fromkeys(objs))


def noun_phrase(job: EpisodeJob, obj_id: int, source: str) -> str:
    """The phrase naming an object: with source "prompt" the prompt's own words (a SAM3 text
    prompt, else the VLM's description, else the description sent to the VLM) from the
    episode meta; else, or when there is none, the role's category name."""
    if source == "prompt":
        for stage in (job.meta or {}).get("stages", []) or []:
            for p in stage.get("prompts", []) if isinstance(stage, dict) else []:
                if not isinstance(p, dict) or p.get("obj_id") != obj_id:
                    continue
                answer = p.get("vlm_answer") or {}
                for text in (p.get("text"), answer.get("description"), p.get("vlm")):
                    if isinstance(text, str) and text.strip():
                        return " ".join(text.split())
    return ROLE_PHRASE[job.role_of(obj_id) or ""]


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under root (a temp tree about to be renamed into place)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


class SplitWriter(Writer):
    """Base of the outputs split by episode (sam3, grounding): under `approved_only` an
    episode the studio did not approve is skipped; otherwise the objects of the roles option
    named by `roles_option` are selected and the episode's seeded split is looked up."""

    needs_rgb = True
    roles_option = ""  # the ExportOptions field listing the roles to export

    def __init__(self, n_episodes: int) -> None:
        self.n_episodes = n_episodes

    def begin(self, job: EpisodeJob) -> None:
        super().begin(job)
        opts = job.options
        self.skip = opts.approved_only and not is_studio_approved({"meta": job.meta})
        if self.skip:
            return
        name = self.roles_option
        self.objs = select_objects(job, parse_roles(getattr(opts, name), name), name)
        self.split = episode_split(self.n_episodes, opts.eval_fraction, opts.split_seed)[
            job.episode
        ]
