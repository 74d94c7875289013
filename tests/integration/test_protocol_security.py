"""Security with real processes: the bind policy, CURVE with the right and a wrong key, keys CLI.

Usage: python3 -m pytest tests/integration/test_protocol_security.py -q
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import zmq

from protocol.client import Client, ServiceUnavailable
from protocol.echo_api import CONTRACT as ECHO
from protocol.keys import generate
from tests.helpers import ROOT, spawn_service, stop_process

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


def run_echo(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "protocol.echo", "--backend", "echo", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_non_loopback_bind_is_refused_without_keys():
    r = run_echo("--bind", "tcp://0.0.0.0:0")
    assert r.returncode == 2
    assert "reachable from the network" in r.stderr and "--insecure" in r.stderr
    assert "READY" not in r.stdout


def test_non_loopback_bind_with_insecure_serves():
    proc, ep, log = spawn_service("echo", backend="echo", module="protocol.echo",
                                  bind="tcp://0.0.0.0:0", extra_args=["--insecure"])  # fmt: skip
    try:
        port = ep.rsplit(":", 1)[1]
        with Client(f"tcp://127.0.0.1:{port}", timeout=10, contract=ECHO) as c:
            assert c.call("ping") == {"service": "echo"}
        assert "without CURVE (--insecure)" in log.read_text()
    finally:
        stop_process(proc)


def test_keys_command_writes_a_key_pair(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "protocol.keys",
        "generate",
        "--dir",
        str(tmp_path / "k"),
        "--name",
        "svc",
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    pub, sec = tmp_path / "k" / "svc.key", tmp_path / "k" / "svc.key_secret"
    assert "public-key" in pub.read_text() and "secret-key" in sec.read_text()
    assert "secret-key" not in pub.read_text()
    assert sec.stat().st_mode & 0o077 == 0  # the secret is readable by its owner only
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert again.returncode == 2 and "--force" in again.stderr  # never overwrites silently


@pytest.fixture(scope="module")
def curve_service(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    _, server_secret = generate(d, "server")
    _, client_secret = generate(d / "clients", "orchestrator")
    _, intruder_secret = generate(d / "others", "intruder")
    _, other_server_secret = generate(d / "others", "other-server")
    for p in (d / "clients").glob("*.key_secret"):
        p.rename(d / p.name)  # the authorized folder holds public keys only
    client_secret = d / client_secret.name
    proc, ep, log = spawn_service("echo", backend="echo", module="protocol.echo",
                                  bind="tcp://0.0.0.0:0",  # network bind: allowed with CURVE
                                  extra_args=["--curve-secret", str(server_secret),
                                              "--curve-clients", str(d / "clients")])  # fmt: skip
    port = ep.rsplit(":", 1)[1]
    yield {"endpoint": f"tcp://127.0.0.1:{port}", "server_key": str(d / "server.key"),
           "client": str(client_secret), "intruder": str(intruder_secret),
           "other_server_key": str(d / "others" / "other-server.key"), "proc": proc}  # fmt: skip
    stop_process(proc)


def test_curve_with_the_right_keys_works(curve_service):
    s = curve_service
    with Client(s["endpoint"], timeout=10, curve_server_key=s["server_key"],
                curve_client_secret=s["client"], contract=ECHO) as c:  # fmt: skip
        assert c.call("ping") == {"service": "echo"}
        assert c.call("echo", {"secret": "plans"}) == {"secret": "plans"}


@pytest.mark.parametrize("who", ["intruder", "wrong-server-key", "no-curve"])
def test_curve_with_a_wrong_key_gets_no_service(curve_service, who):
    s = curve_service
    kw = {
        "intruder": dict(curve_server_key=s["server_key"], curve_client_secret=s["intruder"]),
        "wrong-server-key": dict(
            curve_server_key=s["other_server_key"], curve_client_secret=s["client"]
        ),
        "no-curve": {},
    }[who]
    with Client(s["endpoint"], timeout=0.5, retries=0, **kw, contract=ECHO) as c:
        with pytest.raises(ServiceUnavailable):
            c.call("ping")
    assert s["proc"].poll() is None  # refused clients do not hurt the server
    with Client(s["endpoint"], timeout=10, curve_server_key=s["server_key"],
                curve_client_secret=s["client"], contract=ECHO) as c:  # fmt: skip
        assert c.call("ping") == {"service": "echo"}
