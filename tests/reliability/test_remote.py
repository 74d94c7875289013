"""Remote hosts: services in another network namespace, reachable over a veth pair, with CURVE.

Usage:
    sudo pytest -m reliability tests/reliability/test_remote.py     # root: ip netns add

Layout ("workstation" = client namespace, "GPU host" = server namespace):
    client ns 10.77.0.1: orchestrator, reader + exporter on the namespace's own 127.0.0.1
    server ns 10.77.0.2: sam + vlm bound on tcp://10.77.0.2:PORT with CURVE keys and an
                         authorized-clients folder holding only the orchestrator's public key
Skipped, with the reason, where namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq.auth

from tests.reliability.mesh import Mesh, pipeline_yaml
from tests.reliability.netns import NetnsUnavailable, NetPair
from tests.reliability.outputs import done_markers, tree_diff
from tests.reliability.procs import ROOT, child_env, spawn

pytestmark = pytest.mark.reliability

REMOTE = ("sam", "vlm")
PROBE_TIMEOUT_S = 2.0  # a CURVE handshake on a veth pair takes milliseconds


def make_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """NAME.key + NAME.key_secret via `python -m protocol.keys` (or zmq.auth if absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    if (ROOT / "protocol" / "keys.py").is_file():
        subprocess.run([sys.executable, "-m", "protocol.keys", "generate", "--dir", str(folder),
                        "--name", name], cwd=ROOT, check=True, capture_output=True, timeout=60)  # fmt: skip
    else:
        zmq.auth.create_certificates(str(folder), name)
    pub, sec = folder / f"{name}.key", folder / f"{name}.key_secret"
    if not (pub.is_file() and sec.is_file()):
        raise RuntimeError(f"key generation for {name} did not write {pub} and {sec}")
    return pub, sec


@pytest.fixture(scope="module")
def net() -> Iterator[NetPair]:
    try:
        pair = NetPair.create()
    except NetnsUnavailable as e:
        pytest.skip(f"remote-host tests need network namespaces: {e}")
    try:
        yield pair
    finally:
        pair.destroy()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    out: dict[str, Path] = {}
    for name in ("sam", "vlm", "orchestrator", "intruder"):
        out[f"{name}.key"], out[f"{name}.key_secret"] = make_keys(d / "all", name)
    clients = d / "clients"  # only the orchestrator is admitted
    clients.mkdir()
    (clients / "orchestrator.key").write_bytes(out["orchestrator.key"].read_bytes())
    out["clients"] = clients
    return out


@pytest.fixture(scope="module")
def remote_mesh(
    net: NetPair, keys: dict[str, Path], demo_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("remote"), demo_data)
    try:
        mesh.start(("reader", "exporter"), prefix=net.client_prefix)  # the workstation's loopback
        for name in REMOTE:
            mesh.start((name,), prefix=net.server_prefix, host=net.server_ip, **{
                f"{name}_args": ["--curve-secret", str(keys[f"{name}.key_secret"]),
                                 "--curve-clients", str(keys["clients"])]})  # fmt: skip
            mesh.curve[name] = {"public_key": str(keys[f"{name}.key"]),
                                "client_secret_key": str(keys["orchestrator.key_secret"])}  # fmt: skip
        yield mesh
    finally:
        mesh.stop()


def probe(net: NetPair, endpoint: str, **attempts: tuple[Path | None, Path | None]) -> dict:
    """Pings from the client namespace, one per attempt (server key, client key pair), at once;
    returns {attempt: {"answered": bool, "reply": ...}}."""
    args = [*net.client_prefix, sys.executable, "-m", "tests.reliability.probe", endpoint,
            "--timeout", str(PROBE_TIMEOUT_S)]  # fmt: skip
    for name, (server_key, client_secret) in attempts.items():
        spec = {"server_key": str(server_key) if server_key else None,
                "client_secret": str(client_secret) if client_secret else None}  # fmt: skip
        args += ["--attempt", f"{name}={json.dumps(spec)}"]
    r = subprocess.run(args, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"probe failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_remote_services_bind_the_namespace_address(remote_mesh: Mesh, net: NetPair) -> None:
    for name in REMOTE:
        assert remote_mesh.endpoint(name).startswith(f"tcp://{net.server_ip}:"), name
    for name in ("reader", "exporter"):
        assert remote_mesh.endpoint(name).startswith("tcp://127.0.0.1:"), name


def test_orchestrator_with_server_keys_runs_end_to_end(
    remote_mesh: Mesh, net: NetPair, reference, tmp_path: Path
) -> None:
    """rgbm: the VLM boxes the target and SAM segments it, both across the veth pair."""
    cfg = pipeline_yaml(tmp_path / "rgbm.yaml", remote_mesh.prompts, pipeline="rgbm")
    out = tmp_path / "out"
    rc = remote_mesh.run(cfg, out, prefix=net.client_prefix, timeout=240)
    assert rc == 0, remote_mesh.log("orchestrator")
    assert done_markers(out) == [0, 1]
    diff = tree_diff(reference("rgbm", remote_mesh.demo), out)
    assert not diff, f"remote run differs from the loopback run: {diff[:10]}"


def test_orchestrator_with_the_wrong_key_gets_no_service(
    remote_mesh: Mesh, net: NetPair, keys: dict[str, Path], tmp_path: Path
) -> None:
    """`orchestrator status` with another server's public key: SAM and the VLM are down to it,
    the loopback services are up; with the right keys everything is up."""
    good = remote_mesh.services_yaml(tmp_path / "good.yaml")
    saved = dict(remote_mesh.curve)
    try:
        for name in REMOTE:
            remote_mesh.curve[name] = {**saved[name], "public_key": str(keys["intruder.key"])}
        bad = remote_mesh.services_yaml(tmp_path / "bad.yaml")
    finally:
        remote_mesh.curve.update(saved)
    rows = {}
    for label, cfg in (("good", good), ("bad", bad)):
        r = subprocess.run([*net.client_prefix, sys.executable, "-m", "orchestrator", "status",
                            "--services", str(cfg)], cwd=ROOT, env=child_env(),
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        rows[label] = (r.returncode, r.stdout)
    assert rows["good"][0] == 0, rows["good"][1]
    assert rows["bad"][0] == 1, rows["bad"][1]
    state = {ln.split()[0]: ln.split()[2] for ln in rows["bad"][1].splitlines()[1:] if ln.strip()}
    assert state == {"reader": "up", "exporter": "up", "sam": "DOWN", "vlm": "DOWN"}, rows["bad"]


@pytest.mark.parametrize("service", REMOTE)
def test_clients_without_the_keys_get_no_service(
    remote_mesh: Mesh, net: NetPair, keys: dict[str, Path], service: str
) -> None:
    ep = remote_mesh.endpoint(service)
    right = (keys[f"{service}.key"], keys["orchestrator.key_secret"])
    got = probe(net, ep, control=right, plain_tcp=(None, None),
                wrong_server_key=(keys["intruder.key"], keys["orchestrator.key_secret"]),
                unauthorized_client=(keys[f"{service}.key"], keys["intruder.key_secret"]),
                ephemeral_client=(keys[f"{service}.key"], None))  # fmt: skip
    control = got.pop("control")
    assert control["answered"] and control["reply"]["ok"], f"control: the key holder got {control}"
    answered = {k: v for k, v in got.items() if v["answered"]}
    assert not answered, f"{service} answered clients without the keys: {answered}"
    again = probe(net, ep, control=right)["control"]
    assert again["answered"], "the service stopped answering its key holder after refusals"
    assert remote_mesh.procs[service].alive()


@pytest.mark.parametrize("service", ["reader", "sam", "vlm", "exporter"])
def test_non_loopback_bind_without_keys_is_refused(
    net: NetPair, demo_data: Path, tmp_path: Path, service: str
) -> None:
    opts = {"prompts_file": str(demo_data / "prompts.yaml")} if service == "vlm" else None
    with pytest.raises(RuntimeError, match="exited with code 2 before printing READY") as e:
        spawn(service, cwd=tmp_path, bind=f"tcp://{net.server_ip}:0", prefix=net.server_prefix,
              options=opts, ready_timeout=60)  # fmt: skip
    text = str(e.value)
    assert "CURVE" in text and "--insecure" in text, f"the refusal must say how to fix it: {text}"


def test_insecure_flag_is_the_explicit_opt_out(net: NetPair, tmp_path: Path) -> None:
    """Control for the refusal above: the same bind starts when the user says --insecure."""
    svc = spawn("sam", cwd=tmp_path, bind=f"tcp://{net.server_ip}:0", prefix=net.server_prefix,
                extra_args=["--insecure"])  # fmt: skip
    try:
        assert svc.endpoint.startswith(f"tcp://{net.server_ip}:")
        assert probe(net, svc.endpoint, plain_tcp=(None, None))["plain_tcp"]["answered"]
        assert "without CURVE" in svc.log()
    finally:
        svc.stop()
