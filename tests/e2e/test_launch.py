"""`make up` / `make status` / `make down` through tools.launch, with real service processes.

The services run with this test's interpreter (`--python`), so no per-service environment is
built; everything else is what `make up` does: detached processes, pid and log files in the
run folder, readiness by the READY line and the run token in `info`, status from `info`,
SIGTERM then SIGKILL on down, restart of a service whose config changed, refusal of a process
that answers on a service's port but was not started by `up`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from protocol.config import load_services
from protocol.spawn import service_args, start

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
    assert "sam-0: exited with code 2 before printing READY" in up.stdout
    assert "no_such_option" in up.stdout  # the log tail says why


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


def _pids(config: Path) -> dict[str, int]:
    run = Path(yaml.safe_load(config.read_text())["run_dir"])
    return {f.stem: int(f.read_text()) for f in run.glob("*.pid")}


def test_up_restarts_a_service_whose_config_changed_and_names_the_keys(config: Path) -> None:
    up = _launch(config, "up", "--python", sys.executable, "--services", "sam vlm")
    assert up.returncode == 0, up.stdout
    before = _pids(config)
    cfg = yaml.safe_load(config.read_text())
    cfg["services"]["sam"]["options"] = {"max_sessions": 3}  # a server-side change
    cfg["services"]["vlm"]["timeout_s"] = 5  # client-side only: vlm keeps running
    config.write_text(yaml.safe_dump(cfg))
    again = _launch(config, "up", "--python", sys.executable, "--services", "sam vlm")
    assert again.returncode == 0, again.stdout
    for tag in ("sam-0", "sam-1"):
        assert f"{tag}: running (pid {before[tag]}) but its config differs" in again.stdout
    assert 'options.max_sessions: "<unset>" -> 3' in again.stdout, again.stdout
    assert "vlm-0: already running" in again.stdout
    after = _pids(config)
    assert after["vlm-0"] == before["vlm-0"]
    assert after["sam-0"] != before["sam-0"] and after["sam-1"] != before["sam-1"]
    assert not _alive(before["sam-0"]) and not _alive(before["sam-1"])
    sc = load_services(config).services["sam"]
    c = sc.client(endpoints=[sc.endpoints[0]], retries=0, timeout=5)
    try:
        assert c.call("info")["max_sessions"] == 3  # the running service has the new config
    finally:
        c.close()
    third = _launch(config, "up", "--python", sys.executable, "--services", "sam")
    assert third.returncode == 0 and third.stdout.count("config unchanged") == 2, third.stdout
    r = _launch(config, "restart", "--python", sys.executable, "--services", "vlm")
    assert r.returncode == 0 and "restart asked" in r.stdout, r.stdout
    assert _pids(config)["vlm-0"] != before["vlm-0"]


def test_up_never_takes_a_process_it_did_not_start_for_its_service(
    config: Path, tmp_path: Path
) -> None:
    """Another mesh's sam answering `ping` on this config's port: up refuses, leaves it alone."""
    ep = load_services(config).services["sam"].endpoints[0]
    stranger = start(service_args("sam", backend="classical", bind=ep), name="stranger",
                     log_path=tmp_path / "stranger.log", ready_timeout=60)  # fmt: skip
    try:
        up = _launch(config, "up", "--python", sys.executable, "--services", "sam")
        assert up.returncode == 1, up.stdout
        assert f"sam-0: {ep} is already answered by sam pid {stranger.pid}" in up.stdout, up.stdout
        assert "not taken for sam" in up.stdout
        assert stranger.alive()
        assert "sam-0" not in _pids(config)  # nothing recorded as ours
        down = _launch(config, "down")
        assert down.returncode == 0 and stranger.alive()
    finally:
        stranger.stop()


def test_up_detects_a_stranger_answering_for_a_running_service(
    config: Path, tmp_path: Path
) -> None:
    """The pid file's process runs, but the endpoint answers with another run token."""
    up = _launch(config, "up", "--python", sys.executable, "--services", "vlm")
    assert up.returncode == 0, up.stdout
    run = Path(yaml.safe_load(config.read_text())["run_dir"])
    state = json.loads((run / "vlm-0.json").read_text())
    state["token"] = "0" * 16  # as if another process had taken the port since
    (run / "vlm-0.json").write_text(json.dumps(state))
    again = _launch(config, "up", "--python", sys.executable, "--services", "vlm")
    assert again.returncode == 1 and "is answered by vlm pid" in again.stdout, again.stdout


def test_status_shows_open_sessions_per_service(config: Path) -> None:
    up = _launch(config, "up", "--python", sys.executable, "--services", "sam")
    assert up.returncode == 0, up.stdout
    sc = load_services(config).services["sam"]
    c = sc.client(endpoints=[sc.endpoints[1]], retries=0, timeout=10)
    try:
        sid = c.call("start_session", {"height": 8, "width": 12, "n_frames": 3})["session"]
        st = _launch(config, "status")
    finally:
        c.close()
    lines = st.stdout.splitlines()
    assert lines[0].split()[-1] == "sessions"
    rows = {r.split()[1]: r.split() for r in lines[1:] if r.startswith("sam ")}
    assert rows[sc.endpoints[0]][-1] == "0" and rows[sc.endpoints[1]][-1] == "1", st.stdout
    assert any(sid in ln and sc.endpoints[1] in ln and "3x8x12" in ln for ln in lines), st.stdout
