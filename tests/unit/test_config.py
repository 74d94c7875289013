"""configs/services.yaml validation and the bind policy: unknown keys and bad values are named.

Usage: python3 -m pytest tests/unit/test_config.py -q
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from protocol.config import ConfigError, load_services, parse_services
from protocol.security import check_bind, is_loopback

GOOD = """
version: 1
run_dir: .run
services:
  reader:
    endpoints: [tcp://127.0.0.1:5551]
    backend: zarr
    options: {max_chunk_bytes: 1048576}
  sam:
    endpoints: [tcp://gpu-a:5552, tcp://gpu-b:5552]
    bind: [tcp://0.0.0.0:5552, tcp://0.0.0.0:5552]
    backend: sam2
    workers: 1
    queue_size: 8
    timeout_s: 120
    retries: 2
    max_msg_bytes: 268435456
    curve:
      public_key: keys/sam.key
      secret_key: keys/sam.key_secret
      client_secret_key: keys/orchestrator.key_secret
      authorized_clients: keys/clients
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "services.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_valid_config_loads_into_frozen_dataclasses(tmp_path):
    cfg = load_services(write(tmp_path, GOOD), base=tmp_path)
    reader, sam = cfg.services["reader"], cfg.services["sam"]
    assert reader.endpoints == ("tcp://127.0.0.1:5551",) and reader.binds == reader.endpoints
    assert reader.local and reader.options == {"max_chunk_bytes": 1048576}
    assert reader.workers == 1 and reader.queue_size == 64  # defaults
    assert sam.binds == ("tcp://0.0.0.0:5552", "tcp://0.0.0.0:5552") and not sam.local
    assert sam.timeout_s == 120.0 and sam.retries == 2 and sam.max_msg_bytes == 1 << 28
    assert sam.curve.public_key == str(tmp_path / "keys/sam.key")  # resolved against base
    assert sam.env_name == "sam-sam2"
    with pytest.raises(AttributeError):
        sam.workers = 3


def test_config_records_which_keys_the_file_set(tmp_path):
    cfg = load_services(write(tmp_path, GOOD), base=tmp_path)
    sam, reader = cfg.services["sam"], cfg.services["reader"]
    assert "workers" in sam.given and sam.workers == 1  # written, though equal to the default
    assert "workers" not in reader.given and "queue_size" not in reader.given
    with pytest.raises(ConfigError, match="services.sam.given: unknown field; valid fields are"):
        parse_services({"services": {"sam": {"endpoints": ["tcp://127.0.0.1:1"], "backend": "x",
                                             "given": ["workers"]}}})  # fmt: skip


def test_client_from_config_spreads_over_replicas(tmp_path):
    cfg = load_services(write(tmp_path, GOOD), base=tmp_path)
    c = cfg.services["reader"].client(timeout=5.0)
    try:
        assert c.endpoints == ["tcp://127.0.0.1:5551"] and c.timeout == 5.0
    finally:
        c.close()


@pytest.mark.parametrize(
    "yaml_text, fragments",
    [
        (
            "services: {sam: {endpoints: [tcp://127.0.0.1:1], backend: x, workerz: 2}}",
            ["services.sam.workerz: unknown field; valid fields are", "workers"],
        ),
        (
            "services: {sma: {endpoints: [tcp://127.0.0.1:1], backend: x}}",
            ["services.sma: unknown service", "sam"],
        ),
        ("servics: {}", ["servics: unknown field; valid fields are", "services"]),
        ("services: {sam: {backend: x}}", ["services.sam", "endpoints"]),
        (
            "services: {sam: {endpoints: [], backend: x}}",
            ["services.sam.endpoints", "at least one"],
        ),
        (
            "services: {sam: {endpoints: [http://h:1], backend: x}}",
            ["services.sam.endpoints", "not a ZeroMQ address"],
        ),
        (
            "services: {sam: {endpoints: [tcp://127.0.0.1:1], backend: 3}}",
            ["services.sam.backend: expected str, got int 3", "write a text"],
        ),
        (
            "services: {sam: {endpoints: [tcp://127.0.0.1:1], backend: x, workers: 0}}",
            ["services.sam.workers: expected an int >= 1, got 0"],
        ),
        (
            "services: {sam: {endpoints: [tcp://127.0.0.1:1], backend: x, queue_size: yes}}",
            ["services.sam.queue_size: expected int, got bool True", "never a boolean"],
        ),
        (
            "services: {sam: {endpoints: [tcp://127.0.0.1:1], backend: x, timeout_s: '5'}}",
            ["services.sam.timeout_s: expected float, got str '5'", "without quotes"],
        ),
        (
            "services: {sam: {endpoints: [tcp://127.0.0.1:1], backend: x, max_msg_bytes: 10}}",
            ["services.sam.max_msg_bytes", ">= 4096"],
        ),
        (
            "services: {sam: {endpoints: [tcp://127.0.0.1:1], backend: x, insecure: 1}}",
            ["services.sam.insecure: expected bool, got int 1", "write true or false"],
        ),
        (
            "services: {sam: {endpoints: [tcp://127.0.0.1:1], backend: x, options: [1]}}",
            ["services.sam.options: expected dict, got list", "write a map"],
        ),
        (
            "services: {sam: {endpoints: [tcp://127.0.0.1:1], bind: [tcp://0.0.0.0:1, tcp://0.0.0.0:2], backend: x}}",
            ["services.sam.bind: has 2 addresses for 1 endpoints"],
        ),
        (
            "services: {sam: {endpoints: [tcp://127.0.0.1:1], backend: x, curve: {public_key: a, secrt: b}}}",
            ["services.sam.curve.secrt: unknown field; valid fields are", "secret_key"],
        ),
        (
            "services: {sam: {endpoints: [tcp://127.0.0.1:1], backend: x, curve: {secret_key: b}}}",
            ["services.sam.curve.public_key: required"],
        ),
        ("version: 2\nservices: {}", ["version: this release reads version 1"]),
        ("services: []", ["services: expected a map"]),
        ("- 1", ["expected a map with `services:`"]),
    ],
    ids=[
        "unknown-key",
        "unknown-service",
        "top-level",
        "no-endpoints",
        "empty-endpoints",
        "bad-endpoint",
        "backend-type",
        "workers",
        "bool-int",
        "timeout-type",
        "max-msg",
        "insecure-type",
        "options-type",
        "bind-count",
        "curve-unknown",
        "curve-public",
        "version",
        "services-type",
        "not-a-map",
    ],  # fmt: skip
)
def test_invalid_configs_name_the_key(tmp_path, yaml_text, fragments):
    with pytest.raises(ConfigError) as e:
        load_services(write(tmp_path, yaml_text))
    for f in fragments:
        assert f in str(e.value), str(e.value)


def test_missing_and_unparseable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_services(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_services(write(tmp_path, "services: {sam: [unclosed"))


def test_parse_services_accepts_dicts():
    cfg = parse_services(
        {"services": {"vlm": {"endpoints": "tcp://127.0.0.1:5553", "backend": "prompts"}}}
    )
    assert cfg.services["vlm"].endpoints == ("tcp://127.0.0.1:5553",)


@pytest.mark.parametrize(
    "endpoint, loopback",
    [
        ("tcp://127.0.0.1:5551", True),
        ("tcp://127.3.4.5:1", True),
        ("tcp://localhost:1", True),
        ("tcp://[::1]:1", True),
        ("ipc:///tmp/x", True),
        ("tcp://0.0.0.0:1", False),
        ("tcp://*:1", False),
        ("tcp://10.0.0.5:1", False),
        ("tcp://gpu-host:1", False),
        ("tcp://[::]:1", False),
    ],  # fmt: skip
)
def test_is_loopback(endpoint, loopback):
    assert is_loopback(endpoint) is loopback


def test_non_loopback_bind_needs_curve_or_insecure():
    with pytest.raises(PermissionError, match="CURVE.*--insecure"):
        check_bind("tcp://0.0.0.0:5552", curve=False, insecure=False)
    check_bind("tcp://0.0.0.0:5552", curve=True, insecure=False)
    check_bind("tcp://0.0.0.0:5552", curve=False, insecure=True)
    check_bind("tcp://127.0.0.1:5552", curve=False, insecure=False)
    with pytest.raises(ValueError, match="not a ZeroMQ address"):
        check_bind("127.0.0.1:5552", curve=False, insecure=False)
