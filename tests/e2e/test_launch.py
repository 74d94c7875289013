"""`make up` / `make status` / `make down` through tools.launch, with real service processes.

The services run with this test's interpreter (`--python`), so no per-service environment is
built; everything else is what `make up` does: detached processes, pid and log files in the
run folder, readiness by ping, status from `info`, SIGTERM then SIGKILL on down.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _launch(cfg: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.launch", "--config", str(cfg), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(yaml.safe_dump({"version": 1, "coords": "abs", "episodes": {
        0: {"target": {"frame": 0, "box": [1, 1, 5, 5], "description": "a box"}}}}))  # fmt: skip
    p1, p2, p3, p4, p5 = _free_ports(5)
    cfg = {
        "version": 1,
        "run_dir": str(tmp_path / "run"),
        "services": {
            "reader": {"endpoints": [f"tcp://127.0.0.1:{p1}"], "backend": "zarr"},
            "sam": {"endpoints": [f"tcp://127.0.0.1:{p2}", f"tcp://127.0.0.1:{p3}"], "backend": "classical"},
            "vlm": {"endpoints": [f"tcp://127.0.0.1:{p4}"], "backend": "prompts",
                    "options": {"prompts_file": str(prompts)}},
            "exporter": {"endpoints": [f"tcp://127.0.0.1:{p5}"], "backend": "local"},
        },
    }  # fmt: skip
    path = tmp_path / "services.yaml"
    path.write_text(yaml.safe_dump(cfg))
    yield path
    _launch(path, "down")


def test_up_status_down_leaves_no_process(config: Path) -> None:
    up = _launch(config, "up", "--python", sys.executable)
    assert up.returncode == 0, up.stdout + up.stderr
    run = Path(yaml.safe_load(config.read_text())["run_dir"])
    pids = {f.stem: int(f.read_text()) for f in run.glob("*.pid")}
    assert sorted(pids) == ["exporter-0", "reader-0", "sam-0", "sam-1", "vlm-0"]
    assert all(_alive(p) for p in pids.values())

    st = _launch(config, "status")
    assert st.returncode == 0, st.stdout
    rows = [line.split() for line in st.stdout.splitlines()[1:]]
    assert len(rows) == 5 and all(r[4] == "ok" for r in rows), st.stdout
    assert {r[3] for r in rows} == {str(p) for p in pids.values()}  # status shows the real pids

    again = _launch(config, "up", "--python", sys.executable)  # idempotent: nothing restarted
    assert again.returncode == 0 and again.stdout.count("already running") == 5

    down = _launch(config, "down")
    assert down.returncode == 0
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids.values())
    assert not list(run.glob("*.pid"))
    st = _launch(config, "status")
    assert st.returncode == 1 and st.stdout.count("DOWN") == 5


def test_up_reports_a_service_that_dies_with_its_log_tail(config: Path) -> None:
    cfg = yaml.safe_load(config.read_text())
    cfg["services"]["sam"]["options"] = {"no_such_option": 1}  # the service refuses to start
    config.write_text(yaml.safe_dump(cfg))
    up = _launch(config, "up", "--python", sys.executable, "--services", "sam")
    assert up.returncode == 1
    assert "exited before answering ping" in up.stdout and "no_such_option" in up.stdout


def test_bad_config_key_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "services.yaml"
    bad.write_text(yaml.safe_dump({"services": {"sam": {"endpoints": ["tcp://127.0.0.1:1"],
                                                        "backend": "classical", "wokers": 2}}}))  # fmt: skip
    r = _launch(bad, "status")
    assert r.returncode == 2 and "services.sam.wokers" in r.stdout


def test_non_loopback_bind_without_keys_is_refused(config: Path) -> None:
    up = _launch(
        config, "up", "--python", sys.executable, "--services", "sam", "--bind", "tcp://0.0.0.0:0"
    )
    assert up.returncode == 1
    assert "CURVE" in up.stdout and "--insecure" in up.stdout


def test_stale_pid_file_is_neither_adopted_nor_killed(config: Path) -> None:
    """A pid file whose pid now belongs to another program: up starts the service, down spares it."""
    run = Path(yaml.safe_load(config.read_text())["run_dir"])
    run.mkdir(parents=True, exist_ok=True)
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        (run / "vlm-0.pid").write_text(str(bystander.pid))
        up = _launch(config, "up", "--python", sys.executable, "--services", "vlm")
        assert up.returncode == 0, up.stdout
        assert "already running" not in up.stdout
        assert int((run / "vlm-0.pid").read_text()) != bystander.pid
        (run / "exporter-0.pid").write_text(str(bystander.pid))  # stale again, for down
        down = _launch(config, "down")
        assert down.returncode == 0 and "stale pid file" in down.stdout
        assert bystander.poll() is None  # still running: down did not signal it
    finally:
        bystander.kill()
        bystander.wait()
