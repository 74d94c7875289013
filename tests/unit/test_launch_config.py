"""tools/launch_config.py: which config edits make `make up` restart a running service.

Usage: pytest -q tests/unit/test_launch_config.py
"""

from __future__ import annotations

from protocol.config import parse_services
from tools.launch_config import config_diff, snapshot


def _sam(**extra) -> dict:
    raw = {"endpoints": ["tcp://127.0.0.1:5552"], "backend": "classical", **extra}
    sc = parse_services({"version": 1, "services": {"sam": raw}}).services["sam"]
    return snapshot(sc, sc.binds[0])


def test_server_side_edits_are_named_with_both_values() -> None:
    old = _sam(options={"max_sessions": 4, "flow": {"scale": 0.5}})
    new = _sam(options={"max_sessions": 8, "flow": {"scale": 0.5}}, workers=2)
    assert config_diff(old, new) == ["options.max_sessions: 4 -> 8", "workers: null -> 2"]


def test_client_only_edits_need_no_restart() -> None:
    assert config_diff(_sam(), _sam(timeout_s=5, retries=0)) == []


def test_writing_the_default_explicitly_counts_as_a_change() -> None:
    """`workers: 1` written in the file overrides the service's own default (runner rule)."""
    assert config_diff(_sam(), _sam(workers=1)) == ["workers: null -> 1"]


def test_backend_and_bind_changes_are_seen() -> None:
    d = config_diff(_sam(), _sam(backend="sam2", bind=["tcp://0.0.0.0:5552"]))
    assert 'backend: "classical" -> "sam2"' in d
    assert 'bind: "tcp://127.0.0.1:5552" -> "tcp://0.0.0.0:5552"' in d
    assert any(x.startswith("env:") for x in d)
