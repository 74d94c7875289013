"""Details of protocol/README.md a client written from it depends on (issue 14 item 17): the
id of a version-mismatch reply, the packed-mask bit order, and `python -m protocol.echo`
starting without --backend, its help naming its own module."""

from __future__ import annotations

import subprocess
import sys

import msgpack
import numpy as np

from protocol.masks import pack, unpack
from protocol.wire import PREFIX, PROTOCOL_VERSION, WireError, decode
from tests.helpers import ROOT, spawn_service, stop_process


def test_version_mismatch_keeps_the_request_id():
    head = msgpack.packb({"op": "ping", "id": 77, "body": {}}, use_bin_type=True)
    frame = PREFIX.pack(b"MMSH", PROTOCOL_VERSION + 1, 0, len(head)) + head
    try:
        decode([frame])
    except WireError as e:
        assert e.code == "version_mismatch" and (e.msg_id, e.op) == (77, "ping")
    else:
        raise AssertionError("another version decoded")


def test_packed_mask_bit_order_is_msb_first_with_zero_padding():
    row = np.zeros((1, 10), bool)
    row[0, [0, 7, 9]] = True  # pixels 0 and 7 -> first byte 0b1000_0001; pixel 9 -> 0b0100_0000
    bits = pack(row)
    assert bits.tolist() == [[0b1000_0001, 0b0100_0000]]  # bits 10..15 of the 2nd byte are 0
    assert np.array_equal(unpack(bits, 10), row)


def test_echo_starts_without_backend_and_its_help_names_it(tmp_path):
    r = subprocess.run([sys.executable, "-m", "protocol.echo", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and "usage: python -m protocol.echo" in r.stdout
    proc, ep, _ = spawn_service("echo", backend=None, module="protocol.echo",
                                log_path=tmp_path / "echo.log")  # fmt: skip
    try:
        from protocol.client import Client

        c = Client([ep], timeout=5.0)
        try:
            assert c.call("echo", {"a": 1}) == {"a": 1}
            assert c.call("info", {})["backend"] == "echo"
        finally:
            c.close()
    finally:
        stop_process(proc)
