"""The orchestrator and the studio build every request body with the service's contract
(services/<name>/api.py `CONTRACT.request`), so a misspelt or mistyped field is refused on the
sending side, before anything reaches a socket.

Usage: pytest tests/unit/test_contract_requests.py
"""

from __future__ import annotations

import ast
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from orchestrator.config import RunConfig
from orchestrator.episode import ExportJob, ExportRunner
from orchestrator.plan import PromptOp
from protocol.client import Client
from protocol.errors import BadRequest
from services.exporter.api import CONTRACT as EXPORTER
from services.sam.api import CONTRACT as SAM
from services.studio import calls
from tests.helpers import ROOT

BUILTIN = {"ping", "info", "inflight"}


@pytest.fixture
def router():
    """A real ROUTER socket standing where a service would: it records what arrives."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()


def test_a_misspelt_field_is_refused_before_anything_is_sent(router):
    sock, endpoint = router
    client = Client([endpoint], contract=SAM, timeout=2.0, retries=0)
    try:
        with pytest.raises(BadRequest, match=r"sam.close_session.sesion: unknown field; valid "
                                             r"fields are \['session'\]"):  # fmt: skip
            client.call("close_session", SAM.request("close_session", sesion="s1"))
        assert sock.poll(300) == 0, "a refused request reached the socket"
        fut = client.submit("close_session", SAM.request("close_session", session="s1"))
        assert sock.poll(3000), "the well-formed request never arrived: the check proves nothing"
        assert not fut.done()  # unanswered: the stand-in service never replies
    finally:
        client.close()


def test_the_orchestrators_exporter_path_refuses_a_bad_field_before_sending(router):
    sock, endpoint = router
    client = Client([endpoint], contract=EXPORTER, timeout=2.0, retries=0)
    try:
        runner = ExportRunner(client, {"output": "o"}, run=RunConfig(), stop=threading.Event(),
                              export_id="e1")  # fmt: skip
        bits = np.zeros((1, 2, 4, 1), np.uint8)
        job = ExportJob(plan=SimpleNamespace(episode=0, roles={}), attempt=1, obj_ids=["1"],
                        chunks=[(0, bits)], width=8, meta={}, replica=endpoint)  # fmt: skip
        with pytest.raises(BadRequest, match=r"exporter.put_masks.obj_ids\[0\]: expected int, "
                                             r"got str '1'"):  # fmt: skip
            runner.export(job)
        assert sock.poll(300) == 0, "put_masks with a bad field reached the socket"
    finally:
        client.close()


def test_orchestrator_prompt_bodies_go_through_the_sam_contract():
    body = PromptOp(frame=3, obj_id=1, role="target", box=(1, 2, 30, 40)).body("s1")
    assert body == {"session": "s1", "frame": 3, "obj_id": 1, "box": [1.0, 2.0, 30.0, 40.0]}
    with pytest.raises(BadRequest, match=r"sam.add_prompt.frame: expected int, got str '3'"):
        PromptOp(frame="3", obj_id=1, role="target", box=(1, 2, 30, 40)).body("s1")


def test_the_studio_no_longer_passes_unknown_fields_through():
    assert calls.sam_propagate("s1", "both", True, True) == (
        "propagate", {"session": "s1", "direction": "both", "bounded": True})  # fmt: skip
    with pytest.raises(BadRequest, match=r"sam.propagate.boundd: unknown field"):
        calls._req(SAM, "propagate", session="s1", direction="both", boundd=True)
    with pytest.raises(KeyError, match="no op 'propgate'"):
        calls._req(SAM, "propgate", session="s1")


def _dict_names(tree) -> set[str]:
    """Names ever assigned a dict literal (`body = {...}`) in the module."""
    return {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Dict)
            for t in n.targets if isinstance(t, ast.Name)}  # fmt: skip


def _sent_bodies(path):
    """(line, op, body node, hand-written) of every .call/.submit/call(client, ...) with a
    literal op; hand-written: a dict literal, or a name assigned one."""
    tree = ast.parse(path.read_text())
    dict_names = _dict_names(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        args = node.args
        if name in ("call", "_setup_call") and isinstance(f, ast.Name):  # fn(client, op, body)
            args = args[1:]
        if name not in ("call", "submit", "_setup_call") or len(args) < 2:
            continue
        if isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
            body = args[1]
            literal = isinstance(body, ast.Dict) and bool(body.keys)
            named = isinstance(body, ast.Name) and body.id in dict_names
            yield node.lineno, args[0].value, body, literal or named


@pytest.mark.parametrize("folder", ["orchestrator", "services/studio"])
def test_no_hand_written_request_dicts_are_sent(folder):
    found, bad = 0, []
    for path in sorted((ROOT / folder).glob("*.py")):
        for line, op, _body, hand_written in _sent_bodies(path):
            found += 1
            if hand_written:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {op} with a hand-written dict")
    assert not bad, "build these with CONTRACT.request(op, ...):\n" + "\n".join(bad)
    assert found or folder == "services/studio", "the scan found no calls: it checks nothing"
