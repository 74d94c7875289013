"""The exporter as a real process on a real socket: the op contract, error replies, and a
SIGKILL in the middle of an episode followed by a resume that ends byte-identical.

Run: python3 -m pytest tests/integration/test_exporter_service.py -q
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr

from protocol.client import Client
from protocol.errors import RemoteError
from protocol.masks import pack
from services.exporter.export import Export, MemoryBudget
from services.exporter.synthetic import (
    CAMERA_KEY,
    ROLE_IDS,
    export_episodes,
    make_replay_buffer,
    synthetic_masks,
    tree_digest,
)
from tests.helpers import spawn_service, start_service, stop_process

ALL = ["rgbm", "arm_only", "npz", "preview", "ytvis"]
OPTS = {"chunk_bytes": 20_000, "dilation_radius": 2, "arm_only_zarr": True}
IDS = list(ROLE_IDS.values())


@pytest.fixture(scope="module")
def service():
    with start_service("exporter", backend="local", options={"max_held_mb": 64}, retries=0) as svc:
        yield svc


def send_episode(c: Client, export: str, ep: int, n: int, h: int, w: int, chunk: int = 8) -> dict:
    """put_masks pipelined in chunks, then finish_episode; returns the finish reply."""
    masks = synthetic_masks(n, h, w, IDS, episode=ep)  # (5, n, H, W) bool
    futs = [c.submit("put_masks", {"export": export, "episode": ep, "start": s, "obj_ids": IDS,
                                   "masks": pack(masks[:, s : s + chunk]), "width": w})
            for s in range(0, n, chunk)]  # fmt: skip
    assert [f.result()["received"] for f in futs][-1] == n
    return c.call("finish_episode", {"export": export, "episode": ep, "roles": dict(ROLE_IDS),
                                     "meta": {"ep": ep}}, timeout=120)  # fmt: skip


def test_export_through_the_service_matches_the_library(tmp_path: Path, service) -> None:
    lengths, h, w = [9, 13], 30, 41
    src = make_replay_buffer(tmp_path / "src.zarr", lengths, h, w)
    c = service.client
    out = tmp_path / "svc"
    opened = c.call("open_export", {"output": str(out), "source": str(src), "camera_key": CAMERA_KEY,
                                    "outputs": ALL, "options": OPTS})  # fmt: skip
    assert opened["done"] == [] and opened["n_episodes"] == 2
    again = c.call("open_export", {"output": str(out), "source": str(src), "camera_key": CAMERA_KEY,
                                   "outputs": ALL, "options": OPTS})  # fmt: skip
    assert again["export"] == opened["export"]  # a retried open is the same export
    export = opened["export"]
    reply = send_episode(c, export, 1, lengths[1], h, w)
    assert reply["episode"] == 1
    assert reply["outputs"]["npz"] == str(out / "npz" / "0001.npz")
    assert set(reply["outputs"]) >= {"rgbm", "arm_only", "arm_only_zarr", "preview", "ytvis"}
    assert c.call("status", {"output": str(out)})["done"] == [1]
    send_episode(c, export, 0, lengths[0], h, w)
    assert c.call("info")["exports"] == {export: str(out)}
    assert c.call("close_export", {"export": export}) == {}
    none = {"source": None, "approved": None, "round": None, "prompts_fingerprint": None}
    assert c.call("status", {"output": str(out)}) == {
        "done": [0, 1],
        "n_episodes": 2,
        "exists": True,
        "records": {"0": none, "1": none},  # send_episode's meta says nothing of its prompts
    }

    rgbm = zarr.open_group(str(out / "rgbm.zarr"), mode="r")["data/rgbm"][:]
    np.testing.assert_array_equal(rgbm[9:, ..., 3], synthetic_masks(13, h, w, IDS, 1)[0])
    cap = cv2.VideoCapture(str(out / "preview" / "0000.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 9
    cap.release()
    doc = json.loads((out / "ytvis" / "annotations.json").read_text())
    assert len(doc["videos"]) == 2 and len(doc["annotations"]) == 10

    ref = Export.open(str(tmp_path / "lib"), str(src), CAMERA_KEY, ALL, OPTS, MemoryBudget(1 << 30))
    export_episodes(ref, lengths, h, w)
    ref.close()
    assert tree_digest(out) == tree_digest(tmp_path / "lib")  # the wire changes no byte


def test_error_replies_name_the_field(tmp_path: Path, service) -> None:
    src = make_replay_buffer(tmp_path / "src.zarr", [4, 4], 16, 20)
    c = service.client
    body = {"output": str(tmp_path / "o"), "source": str(src), "camera_key": CAMERA_KEY,
            "outputs": ["rgbm"]}  # fmt: skip

    def error(op: str, b: dict) -> RemoteError:
        with pytest.raises(RemoteError) as err:
            c.call(op, b)
        return err.value

    e = error("open_export", {**body, "options": {"dilate": 2}})
    assert (
        e.code == "bad_request" and "options.dilate: unknown field; valid fields are" in e.message
    )
    e = error("open_export", {**body, "outputs": ["gif"]})
    assert e.code == "bad_request" and "unknown output 'gif'" in e.message
    e = error("open_export", {**body, "extra": 1})
    assert e.code == "bad_request" and "extra" in e.message
    e = error("open_export", {**body, "source": str(tmp_path / "none.zarr")})
    assert e.code == "not_found"
    export = c.call("open_export", body)["export"]
    bits = pack(np.zeros((1, 2, 16, 20), bool))
    e = error("put_masks", {"export": export, "episode": 0, "start": 0, "obj_ids": [1],
                            "masks": bits, "width": 24})  # fmt: skip
    assert e.code == "bad_request" and e.message.startswith("width: 24")
    e = error("put_masks", {"export": export, "episode": 5, "start": 0, "obj_ids": [1],
                            "masks": bits, "width": 20})  # fmt: skip
    assert e.code == "bad_request" and "episode: 5 is out of range" in e.message
    c.call("put_masks", {"export": export, "episode": 0, "start": 0, "obj_ids": [1],
                         "masks": pack(np.ones((1, 4, 16, 20), bool)), "width": 20})  # fmt: skip
    e = error("finish_episode", {"export": export, "episode": 0, "roles": {"arm_left": 1}})
    assert e.code == "bad_request" and "roles.target: missing" in e.message
    assert c.call("discard_episode", {"export": export, "episode": 0}) == {"discarded": True}
    e = error("put_masks", {"export": "nope", "episode": 0, "start": 0, "obj_ids": [1],
                            "masks": bits, "width": 20})  # fmt: skip
    assert e.code == "not_found" and "call open_export first" in e.message
    (tmp_path / "plain").mkdir()
    e = error("status", {"output": str(tmp_path / "plain")})
    assert e.code == "bad_request" and "not an export folder" in e.message
    c.call("close_export", {"export": export})


def test_sigkill_mid_episode_then_resume_is_byte_identical(tmp_path: Path) -> None:
    lengths, h, w = [6, 120], 72, 96
    src = make_replay_buffer(tmp_path / "src.zarr", lengths, h, w)
    out = tmp_path / "out"
    body = {"output": str(out), "source": str(src), "camera_key": CAMERA_KEY, "outputs": ALL,
            "options": OPTS}  # fmt: skip
    proc, endpoint, log = spawn_service("exporter", backend="local")
    c = Client(endpoint, timeout=60, retries=0)
    try:
        export = c.call("open_export", body)["export"]
        send_episode(c, export, 0, lengths[0], h, w)
        before = {k: v for k, v in tree_digest(out).items() if not k.startswith("rgbm.zarr/data")}
        masks = synthetic_masks(lengths[1], h, w, IDS, episode=1)
        c.call("put_masks", {"export": export, "episode": 1, "start": 0, "obj_ids": IDS,
                             "masks": pack(masks), "width": w})  # fmt: skip
        c.submit("finish_episode", {"export": export, "episode": 1, "roles": dict(ROLE_IDS)})
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".tmp-") for p in (out / "arm_only").iterdir()):
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)  # mid-episode: PNGs are being written
        proc.wait(10)
    finally:
        c.close()
        stop_process(proc)

    with start_service("exporter", backend="local", retries=0) as svc:
        c = svc.client
        assert c.call("status", {"output": str(out)})["done"] == [0]  # 1 is not marked done
        after = tree_digest(out)
        for k, v in before.items():  # episode 0's files are untouched
            if k.startswith(("done/0000", "npz/0000", "arm_only/0000", "preview/0000", "ytvis/")):
                assert after.get(k) == v, k
        rgbm = zarr.open_group(str(out / "rgbm.zarr"), mode="r")["data/rgbm"][:6]
        np.testing.assert_array_equal(rgbm[..., 3], synthetic_masks(6, h, w, IDS, 0)[0])
        reopened = c.call("open_export", body)
        assert reopened["done"] == [0]
        send_episode(c, reopened["export"], 1, lengths[1], h, w, chunk=40)
        c.call("close_export", {"export": reopened["export"]})

    ref = Export.open(str(tmp_path / "ref"), str(src), CAMERA_KEY, ALL, OPTS, MemoryBudget(1 << 30))
    export_episodes(ref, lengths, h, w)
    ref.close()
    assert tree_digest(out) == tree_digest(tmp_path / "ref")
