"""Compare export folders byte for byte, and read what a run left behind.

Usage:
    diff = tree_diff(reference_dir, other_dir)       # [] when every file has the same bytes
    files = tree_digest(out)                          # {relative path: sha256}
    done_markers(out)                                 # [0, 1] (episodes with done/NNNN.json)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

# Not outputs: the run's report and logs, the exporter's (empty) lock file.
IGNORED = re.compile(r"(^|/)(report\.json|[^/]*\.log|logs(/.*)?|\.lock)$")


def tree_digest(root: Path, ignored: re.Pattern = IGNORED) -> dict[str, str]:
    """sha256 of every file under root (relative POSIX paths), except the ignored ones."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if not ignored.search(rel):
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def tree_diff(a: Path, b: Path, ignored: re.Pattern = IGNORED) -> list[str]:
    """Human-readable differences between two folders ([] when identical)."""
    da, db = tree_digest(a, ignored), tree_digest(b, ignored)
    diffs = [f"only in {a.name}: {k}" for k in sorted(set(da) - set(db))]
    diffs += [f"only in {b.name}: {k}" for k in sorted(set(db) - set(da))]
    diffs += [f"bytes differ: {k}" for k in sorted(set(da) & set(db)) if da[k] != db[k]]
    return diffs


def done_markers(out: Path) -> list[int]:
    d = out / "done"
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for n in os.listdir(d) if (m := re.match(r"^(\d+)\.json$", n)))


def marker(out: Path, episode: int) -> dict:
    return json.loads((out / "done" / f"{episode:04d}.json").read_text())


def episode_files(digest: dict[str, str], episode: int) -> dict[str, str]:
    """The entries of a tree_digest that belong to one episode (its outputs and marker)."""
    tag = f"{episode:04d}"
    pat = re.compile(rf"(^|/){tag}(/|\.|_)")
    return {k: v for k, v in digest.items() if pat.search(k)}


def incomplete_done(out: Path, ref: Path) -> list[str]:
    """Episodes marked done in `out` whose files are not exactly the reference's ([] = fine)."""
    got, want = tree_digest(out), tree_digest(ref)
    bad = []
    for ep in done_markers(out):
        w, g = episode_files(want, ep), episode_files(got, ep)
        if not w:
            bad.append(f"episode {ep}: marked done but the reference has no such episode")
        missing = sorted(set(w) - set(g))
        differ = sorted(k for k in set(w) & set(g) if w[k] != g[k])
        if missing or differ:
            bad.append(f"episode {ep}: marked done, missing {missing[:3]}, differing {differ[:3]}")
    return bad
