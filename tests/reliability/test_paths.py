"""Path fields with hostile values get a validation error, never `internal` (found by fuzzing).

Usage:
    pytest -m reliability tests/reliability/test_paths.py

A NUL byte or a name longer than the filesystem allows is the client's mistake: the reply
must be bad_request / not_found naming the field, as for any other bad path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.client import Client
from protocol.errors import RemoteError
from tests.reliability.procs import spawn

pytestmark = pytest.mark.reliability

HOSTILE = {"nul byte": "data\x00.zarr", "name too long": "x" * 300}
CLIENT_ERRORS = {"bad_request", "not_found"}


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Client]]:
    work = tmp_path_factory.mktemp("paths")
    procs = {
        n: spawn(n, cwd=work, extra_args=["--log-level", "WARNING"]) for n in ("reader", "exporter")
    }
    out = {n: Client(p.endpoint, timeout=20, retries=0, name=n) for n, p in procs.items()}
    try:
        yield out
    finally:
        for c in out.values():
            c.close()
        for p in procs.values():
            p.stop()


def _code(c: Client, op: str, body: dict) -> str:
    try:
        c.call(op, body)
    except RemoteError as e:
        return e.code
    return "ok"


# (service, op, body(value, demo_dir), id); `close` of an unknown dataset is ok {closed: false}
CASES = [
    ("reader", "open", lambda v, d: {"path": v}, "reader.open"),
    ("reader", "frames", lambda v, d: {"dataset": v, "episode": 0, "key": "head_cam_img"},
     "reader.frames"),
    ("reader", "arrays", lambda v, d: {"dataset": v, "episode": 0}, "reader.arrays"),
    ("reader", "close", lambda v, d: {"dataset": v}, "reader.close"),
    ("exporter", "status", lambda v, d: {"output": v}, "exporter.status"),
    ("exporter", "open_export", lambda v, d: {"output": v, "source": str(d / "demo.zarr"),
     "camera_key": "head_cam_img", "outputs": ["npz"]}, "exporter.open_export.output"),
    ("exporter", "open_export", lambda v, d: {"output": "ok-out", "source": v,
     "camera_key": "head_cam_img", "outputs": ["npz"]}, "exporter.open_export.source"),
]  # fmt: skip


@pytest.mark.parametrize("value", list(HOSTILE), ids=list(HOSTILE))
@pytest.mark.parametrize(("service", "op", "body", "name"), CASES, ids=[c[3] for c in CASES])
def test_hostile_path_is_a_client_error(
    clients: dict[str, Client], demo_data: Path, service: str, op: str, body, name: str, value: str
) -> None:
    allowed = CLIENT_ERRORS | ({"ok"} if op == "close" else set())
    code = _code(clients[service], op, body(HOSTILE[value], demo_data))
    assert code in allowed, f"{name} with a path holding a {value}: got {code}, want {allowed}"
    assert clients[service].ping()
