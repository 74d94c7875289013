"""What the README says about `make down` is what tools/launch.py does (issue 14 item 18: the
README said "SIGKILL after 20 s" while the code waited 35 s).

Usage: pytest -q tests/unit/test_launch_docs.py
"""

from __future__ import annotations

import re
from pathlib import Path

from protocol.server import DRAIN_TIMEOUT_S
from tools import launch

ROOT = Path(__file__).resolve().parents[2]


def test_readme_sigkill_delay_is_the_code_s() -> None:
    text = (ROOT / "README.md").read_text()
    said = re.findall(r"SIGKILL after (\d+) s", text)
    assert said, "README.md no longer says when make down sends SIGKILL"
    assert {float(s) for s in said} == {launch.STOP_TIMEOUT_S}, (said, launch.STOP_TIMEOUT_S)
    assert launch.STOP_TIMEOUT_S > DRAIN_TIMEOUT_S  # a service gets its whole drain first
    doc = launch.__doc__ or ""
    assert f"STOP_TIMEOUT_S ({launch.STOP_TIMEOUT_S:.0f} s" in doc
    assert f"{DRAIN_TIMEOUT_S:.0f} s drain" in doc
