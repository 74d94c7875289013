"""The part of a service's config its process uses, and what changed since it was started.

Usage:
    snap = snapshot(cfg.services["sam"], bind="tcp://127.0.0.1:5552")   # JSON-safe dict
    config_diff(recorded, snap)    # ["options.max_sessions: 4 -> 8", ...]; [] = unchanged

tools/launch.py records the snapshot of every process it starts (RUN_DIR/TAG.json) and
restarts a running service whose recorded snapshot differs from the config file's.
"""

from __future__ import annotations

import json

from protocol.config import ServiceConfig


def snapshot(sc: ServiceConfig, bind: str) -> dict:
    """What of a service's config its process uses (client-only keys such as timeout_s and
    retries are left out: changing them needs no restart)."""
    curve = sc.curve
    return json.loads(json.dumps({
        "bind": bind, "backend": sc.backend, "options": sc.options,
        "workers": sc.workers if "workers" in sc.given else None,
        "queue_size": sc.queue_size if "queue_size" in sc.given else None,
        "max_msg_bytes": sc.max_msg_bytes, "insecure": sc.insecure, "env": sc.env_name,
        "curve": {"secret_key": curve.secret_key, "authorized_clients": curve.authorized_clients}
        if curve else None,
    }, default=list))  # fmt: skip


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, with both values: ["options.max_sessions: 4 -> 8"]."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, "<unset>"), new.get(k, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {json.dumps(a)} -> {json.dumps(b)}")
    return out
