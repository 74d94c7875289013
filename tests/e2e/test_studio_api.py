"""The studio's HTTP API against a real mesh: bad input in words, auth, kill -9, a service down.

Usage: .venvs/test/bin/python -m pytest -q tests/e2e/test_studio_api.py
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.e2e.studio_mesh import studio_mesh
from tests.helpers import ROOT, spawn_service, stop_process


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with studio_mesh(tmp_path_factory.mktemp("studio-api"), episodes=1, frames=20) as m:
        yield m


def call(
    mesh, method: str, path: str, body=None, token: str | None = None, raw: bytes | None = None
):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(mesh.url.rstrip("/") + path, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def jcall(mesh, *a, **kw):
    status, body = call(mesh, *a, **kw)
    return status, json.loads(body)


@pytest.fixture(scope="module")
def alice(mesh):
    s, r = jcall(mesh, "POST", "/api/login", {"name": "alice"})
    assert s == 200 and r["new"]
    return r["token"]


def point(x=10, y=10, label=1, frame=0, obj=1):
    return {
        "obj_id": obj,
        "frame": frame,
        "kind": "point",
        "data": {"x": x, "y": y, "label": label},
    }


def test_requests_without_a_valid_token_are_refused(mesh, alice):
    assert jcall(mesh, "GET", "/api/episodes")[0] == 401
    assert jcall(mesh, "GET", "/api/episodes", token="forged")[0] == 401
    s, r = jcall(mesh, "POST", "/api/login", {"name": "alice", "token": "wrong"})
    assert s == 401 and "wrong or missing token" in r["error"]
    assert jcall(mesh, "POST", "/api/login", {"name": "alice", "token": alice})[0] == 200
    assert jcall(mesh, "GET", "/api/episodes", token=alice)[0] == 200


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/api/episodes/7/prompts", point(), 400, "episode: 7 is not an episode"),
        ("/api/episodes/0/prompts", point(frame=20), 400, "frame: 20 is outside"),
        ("/api/episodes/0/prompts", point(x=640), 400, "data.x: 640 is outside the image"),
        ("/api/episodes/0/prompts", point(y=-1), 400, "data.y: -1 is outside the image"),
        ("/api/episodes/0/prompts", point(obj=99), 400, "obj_id: 99 is not an object"),
        ("/api/episodes/0/prompts", point(label=2), 400, "data.label: must be 1"),
        ("/api/episodes/0/prompts", {**point(), "kind": "lasso"}, 400, "kind: 'lasso'"),
        ("/api/episodes/0/prompts", {"obj_id": 1, "frame": 0, "kind": "box",
                                     "data": {"box": [50, 50, 10, 10]}}, 400, "x0 < x1"),
        ("/api/episodes/0/propagate", {"direction": "sideways"}, 400, "direction: 'sideways'"),
        ("/api/episodes/0/review", {"action": "maybe"}, 400, "action: 'maybe'"),
        ("/api/episodes/0/prompts", {"obj_id": 1, "frame": 0, "kind": "text",
                                     "data": {"text": "the red mug"}}, 400,
         "not supported by backend 'classical'"),
        ("/api/episodes/0/objects", {"name": "a b"}, 400, "name: 1-32 letters"),
        ("/api/episodes/0/nothing", {}, 404, "no such endpoint"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_in_words(mesh, alice, path, body, status, words):
    s, r = jcall(mesh, "POST", path, body, token=alice)
    assert s == status and words in r["error"], r


def test_bad_bodies_and_frames(mesh, alice):
    big = b"{" + b" " * (2 << 20) + b"}"
    s, r = jcall(mesh, "POST", "/api/episodes/0/prompts", raw=big, token=alice)
    assert s == 413 and "too large" in r["error"]
    s, r = jcall(mesh, "POST", "/api/episodes/0/prompts", raw=b"{not json", token=alice)
    assert s == 400 and "not valid JSON" in r["error"]
    s, r = jcall(mesh, "GET", "/api/episodes/0/frames/20", token=alice)
    assert s == 400 and "frame: 20 is outside" in r["error"]
    s, data = call(mesh, "GET", "/api/episodes/0/frames/3", token=alice)
    assert s == 200 and data[:2] == b"\xff\xd8"  # a JPEG
    assert call(mesh, "GET", "/../../etc/passwd")[0] == 404


def test_kill_9_keeps_every_saved_prompt(mesh, alice):
    for x in (300, 320):
        s, r = jcall(mesh, "POST", "/api/episodes/0/prompts", point(x=x, y=240), token=alice)
        assert s == 200, r
    s, before = jcall(mesh, "GET", "/api/episodes/0", token=alice)
    assert len(before["prompts"]) == 2
    mesh.restart_studio(kill=True)
    s, after = jcall(mesh, "GET", "/api/episodes/0", token=alice)
    assert s == 200 and after["prompts"] == before["prompts"]
    assert after["holder"] == "alice"
    s, masks = jcall(mesh, "POST", "/api/episodes/0/open", {}, token=alice)  # session rebuilt
    assert s == 200 and masks["frames"][0]["m"]["1"]
    assert alice not in mesh.log.read_text()


def test_a_service_down_is_reported_and_the_studio_recovers(mesh, alice):
    sam = mesh.services["sam"]
    stop_process(sam.proc)
    s, h = jcall(mesh, "GET", "/api/health")
    assert h["services"]["sam"] is False and h["services"]["reader"] is True
    s, r = jcall(mesh, "POST", "/api/episodes/0/prompts", point(x=310, y=250), token=alice)
    assert s == 503 and "sam service is down" in r["error"], r
    proc, _, _ = spawn_service("sam", backend="classical", bind=sam.endpoint,
                               log_path=mesh.tmp / "sam2.log")  # fmt: skip
    mesh.extra.append(proc)
    s, r = jcall(mesh, "POST", "/api/episodes/0/prompts", point(x=310, y=250), token=alice)
    assert s == 200, r  # the session was rebuilt on the new sam with every stored prompt
    s, h = jcall(mesh, "GET", "/api/health")
    assert h["services"]["sam"] is True


def test_second_annotator_is_refused_the_held_episode(mesh, alice):
    s, bob = jcall(mesh, "POST", "/api/login", {"name": "bob"})
    s, r = jcall(mesh, "POST", "/api/episodes/0/prompts", point(), token=bob["token"])
    assert s == 409 and "held by alice" in r["error"]


def test_non_loopback_bind_without_tokens_is_refused(mesh):
    opts = {**mesh.options, "http": "0.0.0.0:0", "state": str(mesh.tmp / "fresh-state")}
    args = [sys.executable, "-m", "services.studio", "--bind", "tcp://127.0.0.1:0",
            "--backend", "http"]  # fmt: skip
    for k, v in opts.items():
        args += ["--option", f"{k}={v}"]
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "not a loopback address" in p.stderr and "open_registration: false" in p.stderr


def test_undo_and_clear_per_object_and_frame(mesh, alice):
    s, ep = jcall(mesh, "GET", "/api/episodes/0", token=alice)
    n = len([p for p in ep["prompts"] if p["frame"] == 0 and p["obj_id"] == 1])
    assert n >= 2
    s, r = jcall(mesh, "POST", "/api/episodes/0/undo", {"obj_id": 1, "frame": 0}, token=alice)
    assert s == 200 and r["removed"] == 1
    s, ep = jcall(mesh, "GET", "/api/episodes/0", token=alice)
    assert len([p for p in ep["prompts"] if p["frame"] == 0]) == n - 1
    s, r = jcall(mesh, "POST", "/api/episodes/0/clear", {"obj_id": 1, "frame": 0}, token=alice)
    assert s == 200 and r["removed"] == n - 1
    assert not any(base64.b64decode(r["masks"].get("1", "")))  # nothing left on that frame
    s, r = jcall(mesh, "POST", "/api/episodes/0/undo", {"obj_id": 9, "frame": 0}, token=alice)
    assert s == 400 and "obj_id: 9" in r["error"]


def _propagate(mesh, token: str, **body) -> list[dict]:
    s, raw = call(mesh, "POST", "/api/episodes/0/propagate", body, token=token)
    assert s == 200, raw
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def test_rounds_are_kept_and_approve_exports_once(mesh, alice):
    box = {"obj_id": 1, "frame": 0, "kind": "box", "data": {"box": mesh.target_box(0)}}
    assert jcall(mesh, "POST", "/api/episodes/0/prompts", box, token=alice)[0] == 200
    s, r0 = jcall(mesh, "POST", "/api/episodes/0/review", {"action": "save"}, token=alice)
    s, r1 = jcall(mesh, "POST", "/api/episodes/0/review",
                  {"action": "again", "note": "mug handle missing"}, token=alice)  # fmt: skip
    assert (r0["round"], r0["verdict"], r1["round"], r1["verdict"]) == (
        0,
        "saved",
        1,
        "needs_round",
    )
    s, eps = jcall(mesh, "GET", "/api/episodes", token=alice)
    row = eps["episodes"][0]
    assert row["status"] == "needs_round" and row["round"] == 1
    assert row["note"] == "mug handle missing" and row["holder"] == "alice"
    from protocol.prompts_file import load_prompts_file

    entry = load_prompts_file(r1["prompts_file"]).episode(0)
    assert entry.round == 1 and entry.approved is False and entry.annotator == "alice"
    events = _propagate(mesh, alice, direction="both")
    assert events[0]["type"] == "progress" and events[-1]["type"] == "done"
    done = events[-1]
    s, stale = jcall(mesh, "POST", "/api/episodes/0/review",
                     {"action": "approve", "version": done["version"] - 1}, token=alice)  # fmt: skip
    assert s == 400 and "version" in stale["error"]
    s, r2 = jcall(mesh, "POST", "/api/episodes/0/review",
                  {"action": "approve", "version": done["version"]}, token=alice)  # fmt: skip
    assert s == 200 and r2["round"] == 2 and r2["verdict"] == "approved", r2
    marker = json.loads((mesh.tmp / "out" / "done" / "0000.json").read_text())
    assert (
        marker["meta"]["round"] == 2 and marker["meta"]["prompts_fingerprint"] == r2["fingerprint"]
    )
    assert load_prompts_file(r2["prompts_file"]).episode(0).approved is True
    s, again = jcall(mesh, "POST", "/api/episodes/0/review",
                     {"action": "approve", "version": done["version"]}, token=alice)  # fmt: skip
    assert s == 409 and "already exported" in again["error"]
    s, ep = jcall(mesh, "GET", "/api/episodes/0", token=alice)
    assert [r["round"] for r in ep["rounds"]] == [0, 1, 2]  # the refused approve added none
    s, st = jcall(mesh, "GET", "/api/stats", token=alice)
    assert st["per_annotator"]["alice"]["approved"] == 1 and st["per_round"]["1"] == {
        "needs_round": 1
    }


def test_free_objects_and_the_mesh_status_op(mesh, alice):
    s, o = jcall(mesh, "POST", "/api/episodes/0/objects", {"name": "spoon"}, token=alice)
    assert s == 200 and o["role"] is None and o["obj_id"] == 2
    s, r = jcall(mesh, "POST", "/api/episodes/0/objects", {"name": "spoon"}, token=alice)
    assert s == 400 and "already has an object named 'spoon'" in r["error"]
    from protocol.client import Client
    from services.studio.api import CONTRACT

    info = Client(mesh.studio_endpoint, timeout=10, contract=CONTRACT)
    try:
        st = info.call("status", CONTRACT.request("status"))
    finally:
        info.close()
    assert st["url"] == mesh.url and st["services"] == {
        "reader": True,
        "sam": True,
        "exporter": True,
    }
    assert st["episodes"]["approved"] == 1
