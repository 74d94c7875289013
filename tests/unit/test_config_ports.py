"""A port outside 1-65535 in configs/services.yaml is refused when the config is read, with a
message naming the key and the fix (issue 14 item 5: `make up` used to wait 180 s for it).

Usage: pytest -q tests/unit/test_config_ports.py
"""

from __future__ import annotations

import pytest

from protocol.config import ConfigError, parse_services


def _cfg(endpoint: str, bind: str | None = None) -> dict:
    sam = {"endpoints": [endpoint], "backend": "classical"}
    if bind is not None:
        sam["bind"] = [bind]
    return {"version": 1, "services": {"sam": sam}}


@pytest.mark.parametrize("port", ["0", "65536", "99999", "*"])
def test_endpoint_port_outside_range_is_refused(port: str) -> None:
    with pytest.raises(ConfigError, match=r"services\.sam\.endpoints.*1 to 65535") as e:
        parse_services(_cfg(f"tcp://127.0.0.1:{port}"))
    assert repr(port) in str(e.value)


def test_bind_port_outside_range_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"services\.sam\.bind.*1 to 65535"):
        parse_services(_cfg("tcp://127.0.0.1:5552", bind="tcp://0.0.0.0:70000"))


@pytest.mark.parametrize("port", ["1", "5552", "65535"])
def test_ports_in_range_are_kept(port: str) -> None:
    cfg = parse_services(_cfg(f"tcp://127.0.0.1:{port}"))
    assert cfg.services["sam"].endpoints == (f"tcp://127.0.0.1:{port}",)
