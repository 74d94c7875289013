"""Exporter atomicity and resumability: skip done episodes, identical bytes, clear refusals,
disk full and permission denied leave nothing corrupted or falsely marked done.

Run: python3 -m pytest tests/unit/test_exporter_atomic.py -q
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zarr

from protocol.masks import pack
from services.exporter import export as export_mod
from services.exporter.errors import ExportError
from services.exporter.export import Export, MemoryBudget, read_status
from services.exporter.synthetic import (
    CAMERA_KEY,
    ROLE_IDS,
    export_episodes,
    make_replay_buffer,
    synthetic_masks,
    tree_digest,
)

ROOT = Path(__file__).resolve().parents[2]
LENGTHS = [7, 10, 6]
H, W = 20, 27
ALL = ["rgbm", "arm_only", "npz", "preview", "ytvis"]
OPTS = {"chunk_bytes": 5000, "arm_only_zarr": True, "dilation_radius": 1, "fsync": False}
IDS = list(ROLE_IDS.values())


def _open(out: Path, src: Path, opts: dict | None = None, outputs: list[str] | None = None,
          budget: MemoryBudget | None = None) -> Export:  # fmt: skip
    return Export.open(str(out), str(src), CAMERA_KEY, outputs or ALL, opts or OPTS,
                       budget or MemoryBudget(1 << 30))  # fmt: skip


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_replay_buffer(tmp_path / "src.zarr", LENGTHS, H, W)


def test_resume_skips_done_episodes_and_gives_identical_bytes(tmp_path: Path, src: Path) -> None:
    exp = _open(tmp_path / "a", src)
    export_episodes(exp, LENGTHS, H, W)
    exp.close()

    exp = _open(tmp_path / "b", src, {**OPTS, "fsync": True})  # fsync does not change bytes
    export_episodes(exp, LENGTHS, H, W, order=[2])
    exp.close()
    exp = _open(tmp_path / "b", src)  # a re-run: resumes
    assert sorted(exp.done) == [2] and read_status(str(tmp_path / "b"))["done"] == [2]
    with pytest.raises(ExportError, match="episode: 2 is already exported"):
        exp.put_masks(2, 0, IDS, pack(np.zeros((5, 1, H, W), bool)), W)
    again = exp.finish_episode(2, dict(ROLE_IDS), {})  # idempotent: the stored outputs
    assert again["outputs"]["npz"] == str(tmp_path / "b" / "npz" / "0002.npz")
    export_episodes(exp, LENGTHS, H, W, order=[1, 0])  # out of order, chunks shared
    exp.close()
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert a.keys() == b.keys() and a == b
    assert any(k.startswith("rgbm.zarr/data/rgbm/") for k in a)


def test_other_source_or_settings_are_refused(tmp_path: Path, src: Path) -> None:
    exp = _open(tmp_path / "out", src)
    export_episodes(exp, LENGTHS, H, W, order=[0])
    exp.close()
    other = make_replay_buffer(tmp_path / "other.zarr", [7, 10, 5], H, W)
    with pytest.raises(ExportError, match="exported from another source") as err:
        _open(tmp_path / "out", other)
    assert err.value.code == "bad_request" and "use a new output folder" in err.value.message
    copy = tmp_path / "copy.zarr"
    shutil.copytree(src, copy)  # same fingerprint, another path: still another source
    with pytest.raises(ExportError, match="exported from another source"):
        _open(tmp_path / "out", copy)
    with pytest.raises(ExportError, match=r"options.dilation_radius: was 1, now 4"):
        _open(tmp_path / "out", src, {**OPTS, "dilation_radius": 4})
    with pytest.raises(ExportError, match="outputs: was"):
        _open(tmp_path / "out", src, outputs=["rgbm"])
    exp = _open(tmp_path / "out", src)  # the right settings still resume
    assert sorted(exp.done) == [0]
    with pytest.raises(ExportError, match="another exporter process"):
        _open(tmp_path / "out", src)  # the folder is locked while open
    exp.close()


def test_non_export_folder_and_bad_inputs_are_refused(tmp_path: Path, src: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not empty .notes.txt. and has no export.json"):
        _open(tmp_path / "used", src)
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="camera_key: 'nope' is not in data/"):
        Export.open(str(tmp_path / "o"), str(src), "nope", ALL, OPTS, MemoryBudget(1 << 30))
    with pytest.raises(ExportError, match="camera_key: data/action is"):
        Export.open(str(tmp_path / "o"), str(src), "action", ALL, OPTS, MemoryBudget(1 << 30))
    with pytest.raises(ExportError) as err:
        _open(tmp_path / "o", tmp_path / "missing.zarr")
    assert err.value.code == "not_found"
    with pytest.raises(ExportError, match="source already has data/action"):
        _open(tmp_path / "o", src, {**OPTS, "rgbm_key": "action"})
    assert not (tmp_path / "o" / "export.json").exists()


def test_finish_validates_roles_frames_and_grippers(tmp_path: Path, src: Path) -> None:
    exp = _open(tmp_path / "out", src)
    masks = synthetic_masks(LENGTHS[0], H, W, IDS)
    with pytest.raises(ExportError, match="episode: 0 has no masks; send put_masks"):
        exp.finish_episode(0, dict(ROLE_IDS), {})
    exp.put_masks(0, 0, IDS, pack(masks[:, :5]), W)
    with pytest.raises(ExportError, match="obj_id 1 of episode 0 has no mask for frame 5"):
        exp.finish_episode(0, dict(ROLE_IDS), {})
    exp.put_masks(0, 5, IDS, pack(masks[:, 5:]), W)
    cases = [
        ({**ROLE_IDS, "elbow": 1}, "roles: unknown role 'elbow'"),
        ({**ROLE_IDS, "target": 9}, "roles.target: obj_id 9 has no masks"),
        ({k: v for k, v in ROLE_IDS.items() if k != "target"}, "roles.target: missing"),
        ({"target": 1, "arm_left": 2}, "roles.gripper_left/gripper_right: missing"),
    ]
    for roles, needle in cases:
        with pytest.raises(ExportError, match=needle.replace(".", r"\.")):
            exp.finish_episode(0, roles, {})
    empty = np.zeros((2, LENGTHS[0], H, W), bool)
    exp.put_masks(0, 0, [4, 5], pack(empty), W)  # grippers now empty everywhere
    with pytest.raises(ExportError, match="stage B produced no gripper mask"):
        exp.finish_episode(0, dict(ROLE_IDS), {})
    with pytest.raises(ExportError, match="meta: must be JSON-serialisable"):
        exp.finish_episode(0, dict(ROLE_IDS) | {"gripper_left": 2}, {"x": object()})
    assert read_status(str(tmp_path / "out"))["done"] == []
    assert exp.discard(0) and not exp.discard(0)
    exp.close()


def test_memory_budget_answers_overloaded(tmp_path: Path, src: Path) -> None:
    per_object = LENGTHS[0] * H * ((W + 7) // 8)
    budget = MemoryBudget(3 * per_object)
    exp = _open(tmp_path / "out", src, budget=budget)
    exp.put_masks(0, 0, [1, 2, 3], pack(np.zeros((3, 1, H, W), bool)), W)
    with pytest.raises(ExportError) as err:
        exp.put_masks(0, 0, [4], pack(np.zeros((1, 1, H, W), bool)), W)
    assert err.value.code == "overloaded" and "max_held_mb" in err.value.message
    exp.put_masks(0, 1, [1, 2, 3], pack(np.zeros((3, 1, H, W), bool)), W)  # known ids: no growth
    exp.close()
    assert budget.used == 0


DISK_FULL_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from services.exporter.errors import ExportError
    from services.exporter.export import Export, MemoryBudget
    from services.exporter.synthetic import export_episodes
    out, src, h, w = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    opts = {"chunk_bytes": 1 << 20, "fsync": False}
    exp = Export.open(out, src, "camera0_rgb", ["rgbm", "npz"], opts, MemoryBudget(1 << 30))
    export_episodes(exp, [4, 40], h, w, order=[0])
    try:
        export_episodes(exp, [4, 40], h, w, order=[1])
        print(json.dumps({"code": None}))
    except ExportError as e:
        print(json.dumps({"code": e.code, "message": e.message}))
    """
)


def test_disk_full_gives_a_clear_error_and_corrupts_nothing(tmp_path: Path) -> None:
    h, w = 64, 64  # 12 KiB per frame: episode 0 fits under the limit, episode 1 does not
    src = make_replay_buffer(tmp_path / "src.zarr", [4, 40], h, w)

    def limit() -> None:  # CPython ignores SIGXFSZ, so a write past the limit is EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, resource.RLIM_INFINITY))

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", DISK_FULL_SCRIPT, str(out), str(src), str(h), str(w)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=limit,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reply["code"] == "internal"
    assert "no space left on device or file too large" in reply["message"]
    assert "nothing incomplete was marked done" in reply["message"]
    assert read_status(str(out))["done"] == [0]
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-") or p.suffix == ".partial"]
    # episode 0 is intact; a retry without the limit finishes episode 1
    exp = Export.open(str(out), str(src), CAMERA_KEY, ["rgbm", "npz"],
                      {"chunk_bytes": 1 << 20, "fsync": False},
                      MemoryBudget(1 << 30))  # fmt: skip
    sent = export_episodes(exp, [4, 40], h, w, order=[1])
    exp.close()
    rgbm = zarr.open_group(str(out / "rgbm.zarr"), mode="r")["data/rgbm"][:]
    np.testing.assert_array_equal(rgbm[:4, ..., 3], synthetic_masks(4, h, w, IDS, 0)[0])
    np.testing.assert_array_equal(rgbm[4:, ..., 3], sent[1][0])
    assert read_status(str(out))["done"] == [0, 1]


@contextmanager
def _unprivileged() -> Iterator[None]:
    """Run the block without write permission on root-owned 0755 folders (as `nobody` if root)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_permission_denied_is_a_clear_error(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="exporter-perm-"))  # /tmp, traversable by `nobody`
    try:
        os.chmod(base, 0o755)
        src = make_replay_buffer(base / "src.zarr", [5, 6], H, W)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        with _unprivileged(), pytest.raises(ExportError) as err:
            _open(locked / "out", src)
        assert err.value.code == "bad_request" and "permission denied" in err.value.message
        assert "choose a writable output" in err.value.message

        out = base / "out"
        exp = _open(out, src, outputs=["rgbm", "npz"])
        export_episodes(exp, [5, 6], H, W, order=[0])
        before = tree_digest(out)
        os.chmod(out / "npz", 0o555)
        masks = synthetic_masks(6, H, W, IDS, episode=1)
        exp.put_masks(1, 0, IDS, pack(masks), W)
        try:
            with _unprivileged(), pytest.raises(ExportError) as err:
                exp.finish_episode(1, dict(ROLE_IDS), {})
        finally:
            os.chmod(out / "npz", 0o755)
        assert err.value.code == "bad_request" and "permission denied" in err.value.message
        assert read_status(str(out))["done"] == [0]
        after = tree_digest(out)
        assert {k: after[k] for k in before if not k.startswith("rgbm.zarr/")} == {
            k: v for k, v in before.items() if not k.startswith("rgbm.zarr/")
        }
        rgbm = zarr.open_group(str(out / "rgbm.zarr"), mode="r")["data/rgbm"][:5]
        np.testing.assert_array_equal(rgbm[..., 3], synthetic_masks(5, H, W, IDS, 0)[0])
        assert exp.finish_episode(1, dict(ROLE_IDS), {})["episode"] == 1  # masks still held
        exp.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_concurrent_finishes_sharing_chunks_match_a_sequential_run(
    tmp_path: Path, src: Path
) -> None:
    opts = {**OPTS, "chunk_bytes": 40_000}  # ~24 frames per rgbm chunk: all episodes share one
    seq = _open(tmp_path / "seq", src, opts)
    export_episodes(seq, LENGTHS, H, W)
    seq.close()
    par = _open(tmp_path / "par", src, opts)
    for ep, n in enumerate(LENGTHS):
        par.put_masks(ep, 0, IDS, pack(synthetic_masks(n, H, W, IDS, episode=ep)), W)
    with ThreadPoolExecutor(3) as pool:
        futs = [pool.submit(par.finish_episode, ep, dict(ROLE_IDS), {"ep": ep}) for ep in (2, 1, 0)]
        assert sorted(f.result()["episode"] for f in futs) == [0, 1, 2]
    par.close()
    assert tree_digest(tmp_path / "par") == tree_digest(tmp_path / "seq")


@contextmanager
def _held_finish(exp: Export, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    """finish_episode(0) running on a thread, paused inside its writers until `go` is set."""
    exp.put_masks(0, 0, IDS, pack(synthetic_masks(LENGTHS[0], H, W, IDS, episode=0)), W)
    entered, go = threading.Event(), threading.Event()
    real = export_mod.run_episode

    def slow(*args, **kw):  # the writers of a long episode
        entered.set()
        go.wait(10)
        return real(*args, **kw)

    monkeypatch.setattr(export_mod, "run_episode", slow)
    with ThreadPoolExecutor(2) as pool:
        finish = pool.submit(exp.finish_episode, 0, dict(ROLE_IDS), {})
        assert entered.wait(10)
        try:
            yield pool, finish, go
        finally:
            go.set()


def test_close_waits_for_a_finish_in_progress(
    tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = _open(tmp_path / "out", src)
    with _held_finish(exp, monkeypatch) as (pool, finish, go):
        closing = pool.submit(exp.close)
        time.sleep(0.3)
        assert not closing.done()  # the source and the folder lock stay while it writes
        go.set()
        assert finish.result(10)["episode"] == 0
        closing.result(10)
    assert read_status(str(tmp_path / "out"))["done"] == [0]
    _open(tmp_path / "out", src).close()  # the lock was released


def test_close_gives_up_waiting_and_the_finish_releases_the_folder(
    tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = _open(tmp_path / "out", src)
    with _held_finish(exp, monkeypatch) as (_pool, finish, go):
        t0 = time.monotonic()
        exp.close(wait_s=0.2)  # bounded: returns while the finish still runs
        assert time.monotonic() - t0 < 2.0
        with pytest.raises(ExportError, match="being written by another exporter"):
            _open(tmp_path / "out", src)  # the running finish still holds the folder
        with pytest.raises(ExportError, match="was closed; call open_export again"):
            exp.finish_episode(1, dict(ROLE_IDS), {})
        go.set()
        assert finish.result(10)["episode"] == 0  # it finished with its source open
    assert read_status(str(tmp_path / "out"))["done"] == [0]
    _open(tmp_path / "out", src).close()  # released by the finish when it ended
