"""Done records of an export folder: which episodes are done, and what each record says.

Usage:
    read_status("/data/out")     # {done: [0, 2], n_episodes: 3, exists: True, records: {...}}
    done_record(layout, 2)       # {source, approved, round, prompts_fingerprint} of done/0002.json

An episode is done when done/<episode:04d>.json exists (written atomically, so each is
complete). Its `meta` is what finish_episode was given; RECORD_KEYS of it are reported by
`status` so the orchestrator can re-run an episode whose prompts changed and leave an episode
approved in the studio alone.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from services.exporter.errors import bad
from services.exporter.fsutil import user_path
from services.exporter.layout import Layout

MARKER_RE = re.compile(r"^(\d{4,})\.json$")


def read_done(layout: Layout) -> list[int]:
    """Episodes with a done marker (markers are written atomically, so each is complete)."""
    if not layout.done_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for n in os.listdir(layout.done_dir) if (m := MARKER_RE.match(n)))


# what `status` reports of each done record (the marker's meta, written by whoever finished
# the episode): source "orchestrator" | "studio", approved, round, prompts_fingerprint
RECORD_KEYS = ("source", "approved", "round", "prompts_fingerprint")


def done_record(layout: Layout, episode: int) -> dict[str, Any]:
    """The RECORD_KEYS of an episode's done marker (None where the marker does not say)."""
    try:
        meta = json.loads(layout.marker(episode).read_text()).get("meta") or {}
    except (OSError, ValueError):
        meta = {}
    return {k: meta.get(k) for k in RECORD_KEYS}


def read_status(output: str) -> dict[str, Any]:
    """status op: done episodes of an export folder (and what each done record says about its
    prompts), without opening it."""
    layout = Layout(user_path(output, "output"))
    if not layout.root.exists():
        return {"done": [], "n_episodes": None, "exists": False, "records": {}}
    if not layout.manifest.exists():
        raise bad(f"output: {layout.root} has no export.json; it is not an export folder")
    manifest = json.loads(layout.manifest.read_text())
    done = read_done(layout)
    return {
        "done": done,
        "n_episodes": manifest["source"]["n_episodes"],
        "exists": True,
        "records": {str(e): done_record(layout, e) for e in done},
    }
