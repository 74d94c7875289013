"""protocol/spawn.py: the one helper that starts a service and waits for its READY line.

Programs standing in for services here are `python -c` one-liners (named as such): they print
what a service prints, so each outcome (ready, exits first, silent) is exercised exactly.
Usage: pytest -q tests/unit/test_spawn.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from protocol.spawn import READY_PREFIX, StartError, service_args, spawn, start


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_ready_line_gives_the_endpoint_and_log_keeps_both_streams(tmp_path: Path) -> None:
    code = ("import sys, time; print('starting', file=sys.stderr, flush=True); "
            f"print('{READY_PREFIX}tcp://127.0.0.1:5999', flush=True); time.sleep(30)")  # fmt: skip
    svc = start(_py(code), name="fake", log_path=tmp_path / "f.log", ready_timeout=20)
    try:
        assert svc.endpoint == "tcp://127.0.0.1:5999" and svc.alive()
        assert "starting" in svc.log()
    finally:
        assert svc.stop(5) is not None
    assert not svc.alive()


def test_a_process_that_exits_first_is_reported_with_code_and_log_tail(tmp_path: Path) -> None:
    code = "import sys; print('option x: not known', file=sys.stderr); sys.exit(2)"
    with pytest.raises(StartError, match=r"fake: exited with code 2 before printing READY") as e:
        start(_py(code), name="fake", log_path=tmp_path / "f.log", ready_timeout=20)
    assert "option x: not known" in str(e.value) and e.value.returncode == 2


def test_timeout_names_the_setting_shows_the_log_and_stops_the_process(tmp_path: Path) -> None:
    code = "import time; print('loading weights', flush=True); time.sleep(60)"
    t0 = time.monotonic()
    with pytest.raises(StartError) as e:
        start(_py(code), name="slow", log_path=tmp_path / "s.log", ready_timeout=1.5,
              setting="READY_TIMEOUT_S")  # fmt: skip
    msg = str(e.value)
    assert "no READY line within 1.5 s" in msg and "READY_TIMEOUT_S" in msg
    assert "loading weights" in msg and "process stopped" in msg
    assert e.value.returncode is not None  # killed, not left running
    assert time.monotonic() - t0 < 15


def test_an_earlier_ready_in_an_appended_log_is_not_taken(tmp_path: Path) -> None:
    """make up appends to one log per service: only this start's READY counts."""
    log = tmp_path / "svc.log"
    log.write_text(f"{READY_PREFIX}tcp://127.0.0.1:1111\n")
    code = f"import time; time.sleep(0.5); print('{READY_PREFIX}tcp://127.0.0.1:2222', flush=True); time.sleep(30)"
    svc = spawn(_py(code), name="svc", log_path=log, detach=True)
    try:
        assert svc.wait_ready(20) == "tcp://127.0.0.1:2222"
    finally:
        svc.stop(5)


def test_service_args_is_the_runner_command_line() -> None:
    args = service_args("sam", python="py", bind="tcp://127.0.0.1:0", backend="classical",
                        options={"max_sessions": 2, "names": ["a", "b"]}, extra_args=["--insecure"])  # fmt: skip
    assert args == ["py", "-m", "services.sam", "--bind", "tcp://127.0.0.1:0", "--backend", "classical",
                    "--option", "max_sessions=2", "--option", "names=[a, b]", "--insecure"]  # fmt: skip
