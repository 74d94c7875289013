"""Contracts (services/*/api.py): servers register every op from them, clients take
idempotency from them, requests are validated by them, and they stay dependency-light."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from protocol.client import Client
from protocol.contract import Contract, Op, contract_for
from protocol.errors import BadRequest
from services.exporter.api import CONTRACT as EXPORTER
from services.reader.api import CONTRACT as READER
from services.sam.api import CONTRACT as SAM
from services.vlm.api import CONTRACT as VLM
from tests.helpers import ROOT

CONTRACTS = {"reader": READER, "sam": SAM, "vlm": VLM, "exporter": EXPORTER}


def _build(name: str):
    if name == "reader":
        from services.reader.service import build_service

        return build_service("zarr", {})
    if name == "sam":
        from services.sam.service import build_service

        return build_service("classical", {})
    if name == "vlm":
        from services.vlm.service import build_service

        return build_service("prompts", {})
    from services.exporter.service import build_service

    return build_service("local", {})


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_every_service_serves_exactly_its_contract(name):
    svc = _build(name)
    assert svc.contract is CONTRACTS[name] and contract_for(name) is CONTRACTS[name]
    svc.check_contract()  # a handler for every op of the table
    assert set(svc.ops) == set(CONTRACTS[name].ops)
    for op_name, spec in svc.ops.items():  # the table decides, not the registration
        assert spec.idempotent is CONTRACTS[name].op(op_name).idempotent
        assert spec.body is CONTRACTS[name].op(op_name).request
    svc.request_stop()


def test_the_table_decides_which_ops_may_be_resent():
    assert SAM.idempotent("add_prompt") is False  # clicks accumulate
    assert SAM.idempotent("start_session") is False
    assert SAM.long_running("propagate") is True
    assert SAM.idempotent("masks") and EXPORTER.idempotent("close_export")
    assert SAM.idempotent("ping") and SAM.idempotent("info")
    assert SAM.idempotent("no_such_op") is False  # sent once; the service says unsupported


def test_a_client_with_a_contract_refuses_a_caller_idempotency_flag():
    with Client("tcp://127.0.0.1:9", contract=SAM) as c:
        assert c.idempotent("add_prompt") is False and c.idempotent("masks") is True
        with pytest.raises(TypeError, match="idempotency comes from the sam contract"):
            c.submit("add_prompt", {}, idempotent=True)
    with Client("tcp://127.0.0.1:9") as raw:  # no contract: nothing but health checks resent
        assert raw.idempotent("add_prompt") is False and raw.idempotent("ping") is True


def test_request_builds_validated_bodies_naming_the_field():
    body = SAM.request("propagate", session="s1", direction="forward")
    assert body == {"session": "s1", "direction": "forward"}
    with pytest.raises(BadRequest, match=r"sam.propagate.direction: 'sideways' is not one of"):
        SAM.request("propagate", session="s1", direction="sideways")
    with pytest.raises(BadRequest, match=r"sam.masks.stride: unknown field"):
        SAM.request("masks", session="s1", stride=2)
    req = READER.decode("frames", {"dataset": "d", "episode": 0, "key": "rgb"})
    assert (req.start, req.stop, req.stride) == (0, None, 1)
    rep = SAM.decode_reply("masks", {"obj_ids": [1], "start": 0, "stop": 2, "width": 8,
                                     "masks": np.zeros((1, 2, 4, 1), np.uint8)})  # fmt: skip
    assert rep.stop == 2


def test_a_contract_refuses_duplicate_and_builtin_op_names():
    with pytest.raises(ValueError, match="built in or listed twice"):
        Contract("x", [Op("ping", None, None, idempotent=True)])
    with pytest.raises(ValueError, match="built in or listed twice"):
        Contract("x", [Op("a", None, None, True), Op("a", None, None, False)])


def test_contract_modules_import_without_service_dependencies():
    """api.py files are numpy + protocol only: no zarr, numcodecs, cv2, torch, service code."""
    code = (
        "import sys\n"
        "import services.reader.api, services.sam.api, services.vlm.api, services.exporter.api\n"
        "import protocol.echo_api, protocol.prompts_file, protocol.vocab\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('zarr', 'numcodecs', 'cv2', 'torch',"
        " 'httpx', 'imagecodecs') or (m.startswith('services.') and m.count('.') > 1 and"
        " not m.endswith('.api'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
