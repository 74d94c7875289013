"""The rgbm buffer keeps what it copies as the source has it (issue 14 items 6-10): root attrs,
chunk files byte for byte with their own codec (a UMI-style JpegXl .zarr.zip), diffusion_policy
chunking for large frames, empty episodes, a .zarr.zip output, and reopening a done episode.

Run: python3 -m pytest tests/unit/test_exporter_copies.py -q
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from services.exporter.buffer import optimal_chunks
from services.exporter.errors import ExportError
from services.exporter.export import Export, MemoryBudget, read_status
from services.exporter.synthetic import CAMERA_KEY, export_episodes, make_replay_buffer

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
ROOT = Path(__file__).resolve().parents[2]


def _open(out: Path, src: Path, **opts) -> Export:
    return Export.open(str(out), str(src), CAMERA_KEY, ["rgbm"], {"fsync": False, **opts},
                       MemoryBudget(1 << 30))  # fmt: skip


def _umi_zip(d: Path, lengths: list[int], h: int, w: int) -> Path:
    """A UMI-style source: zarr format 2 in a .zarr.zip, camera JpegXl per frame, root attrs."""
    from imagecodecs.numcodecs import Jpegxl, register_codecs

    register_codecs(verbose=False)
    folder = make_replay_buffer(d / "plain.zarr", lengths, h, w)
    rgb = np.asarray(zarr.open_group(str(folder), mode="r")[f"data/{CAMERA_KEY}"][:])
    g = zarr.open_group(zarr.storage.LocalStore(folder), mode="r+")
    del g[f"data/{CAMERA_KEY}"]
    arr = g["data"].create_array(CAMERA_KEY, shape=rgb.shape, dtype=np.uint8,
                                 chunks=(1, h, w, 3), compressors=Jpegxl(level=80))  # fmt: skip
    arr[...] = rgb
    g.attrs.put({"robot": "umi", "fps": 60, "nested": {"b": [1, 2], "a": "x"}})
    path = d / "umi.zarr.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    shutil.rmtree(folder)
    return path


def test_optimal_chunks_follow_diffusion_policy():
    """The values diffusion_policy's get_optimal_chunks gives (worked by hand from its rule)."""
    assert optimal_chunks((600, 480, 640, 4), np.uint8, 2_000_000) == (2, 480, 640, 4)
    assert optimal_chunks((600, 720, 1280, 4), np.uint8, 2_000_000) == (1, 391, 1280, 4)
    assert optimal_chunks((100_000, 13), np.float32, 2_000_000) == (38462, 13)
    assert optimal_chunks((500, 13), np.float32, 2_000_000) == (500, 13)  # capped at T
    assert optimal_chunks((4, 10_000_000), np.uint8, 2_000_000) == (1, 2_000_000)
    assert optimal_chunks((9, 96, 96, 4), np.uint8, 2_000_000) == (9, 96, 96, 4)
    readme = (ROOT / "services/exporter/README.md").read_text()
    assert "(1, 391, 1280, 4)" in readme  # code and README agree


def test_large_frames_are_chunked_inside_the_frame(tmp_path):
    h, w = 720, 1280
    src = make_replay_buffer(tmp_path / "src.zarr", [2, 1], h, w, camera_chunk=1)
    exp = _open(tmp_path / "out", src, fsync=True)  # fsync every chunk file of a frame
    export_episodes(exp, [2, 1], h, w)
    exp.close()
    meta = json.loads((tmp_path / "out/rgbm.zarr/data/rgbm/.zarray").read_text())
    assert meta["chunks"] == [1, 391, 1280, 4]
    out = zarr.open_group(str(tmp_path / "out/rgbm.zarr"), mode="r")
    rgb = np.asarray(zarr.open_group(str(src), mode="r")[f"data/{CAMERA_KEY}"][:])
    np.testing.assert_array_equal(np.asarray(out["data/rgbm"][..., :3]), rgb)


def test_untouched_keys_are_copied_byte_for_byte_with_their_codec(tmp_path):
    h, w = 40, 56
    src = _umi_zip(tmp_path, [5, 4], h, w)
    exp = _open(tmp_path / "out", src)
    export_episodes(exp, [5, 4], h, w)
    exp.close()
    out = tmp_path / "out/rgbm.zarr"
    with zipfile.ZipFile(src) as zf:
        for name in zf.namelist():
            if name.startswith("data/"):  # .zarray, .zattrs and every chunk of every key
                assert (out / name).read_bytes() == zf.read(name), name
    zarray = json.loads((out / "data" / CAMERA_KEY / ".zarray").read_text())
    assert zarray["compressor"]["id"] == "imagecodecs_jpegxl" and zarray["chunks"] == [1, h, w, 3]
    # root attributes are the source's (issue 14 item 7)
    assert zarr.open_group(str(out), mode="r").attrs.asdict() == {
        "fps": 60, "nested": {"a": "x", "b": [1, 2]}, "robot": "umi"}  # fmt: skip
    # the rgbm RGB is the decoded camera, the mask channel 0/1
    with zarr.storage.ZipStore(src, mode="r") as store:
        rgb = np.asarray(zarr.open_group(store, mode="r")[f"data/{CAMERA_KEY}"][:])
    rgbm = np.asarray(zarr.open_group(str(out), mode="r")["data/rgbm"][:])
    np.testing.assert_array_equal(rgbm[..., :3], rgb)


def test_format_3_source_still_copies_values(tmp_path):
    src = make_replay_buffer(tmp_path / "v3.zarr", [3, 4], 16, 24, zarr_format=3)
    exp = _open(tmp_path / "out", src)
    export_episodes(exp, [3, 4], 16, 24)
    exp.close()
    a = zarr.open_group(str(src), mode="r")
    b = zarr.open_group(str(tmp_path / "out/rgbm.zarr"), mode="r")
    for key in ("action", "robot_eef_pos", "step", CAMERA_KEY):
        np.testing.assert_array_equal(
            np.asarray(b[f"data/{key}"][:]), np.asarray(a[f"data/{key}"][:])
        )
    assert b.attrs["robot"] == "synthetic"


def test_empty_episodes_are_accepted_and_the_rest_exports(tmp_path):
    src = make_replay_buffer(tmp_path / "src.zarr", [5, 4], 16, 24)
    ends = zarr.open_array(str(src / "meta/episode_ends"), mode="r+")
    g = zarr.open_group(str(src), mode="r+")
    del g["meta/episode_ends"]
    g["meta"].create_array("episode_ends", data=np.array([5, 5, 9], np.int64))
    del ends
    exp = _open(tmp_path / "out", src, rgbm_zip=True)
    with pytest.raises(ExportError, match="episode: 1 has no frames"):
        exp.put_masks(1, 0, [1], np.zeros((1, 0, 16, 3), np.uint8), 24)
    export_episodes(exp, [5, 0, 4], 16, 24, order=[0, 2])
    assert read_status(str(tmp_path / "out"))["done"] == [0, 2]
    # every non-empty episode done: the zip exists and opens as a replay buffer
    with zarr.storage.ZipStore(tmp_path / "out/rgbm.zarr.zip", mode="r") as store:
        z = zarr.open_group(store, mode="r")
        assert list(z["meta/episode_ends"][:]) == [5, 5, 9] and z["data/rgbm"].shape[0] == 9
    exp.close()


def test_zip_output_is_deterministic_and_matches_the_folder(tmp_path):
    src = make_replay_buffer(tmp_path / "src.zarr", [3, 2], 16, 24)
    digests = []
    for name in ("a", "b"):
        exp = _open(tmp_path / name, src, rgbm_zip=True)
        export_episodes(exp, [3, 2], 16, 24, order=[1, 0] if name == "b" else None)
        exp.close()
        digests.append((tmp_path / name / "rgbm.zarr.zip").read_bytes())
    assert digests[0] == digests[1]
    with zarr.storage.ZipStore(tmp_path / "a/rgbm.zarr.zip", mode="r") as store:
        z = np.asarray(zarr.open_group(store, mode="r")["data/rgbm"][:])
    np.testing.assert_array_equal(
        z, np.asarray(zarr.open_group(str(tmp_path / "a/rgbm.zarr"), mode="r")["data/rgbm"][:])
    )


def test_reopen_a_done_episode_unless_approved_in_the_studio(tmp_path):
    src = make_replay_buffer(tmp_path / "src.zarr", [3, 2], 16, 24)
    exp = _open(tmp_path / "out", src)
    export_episodes(exp, [3, 2], 16, 24, order=[0])
    approved = {"source": "studio", "approved": True, "round": 2, "prompts_fingerprint": "f"}
    export_episodes(exp, [3, 2], 16, 24, order=[1], meta=approved)
    st = read_status(str(tmp_path / "out"))
    assert st["records"]["1"] == approved and st["records"]["0"]["source"] is None
    assert exp.reopen(0) is True and 0 not in exp.done
    assert not (tmp_path / "out/done/0000.json").exists() and exp.reopen(0) is False
    with pytest.raises(ExportError, match="approved in the studio"):
        exp.reopen(1)
    export_episodes(exp, [3, 2], 16, 24, order=[0])  # exported again
    assert read_status(str(tmp_path / "out"))["done"] == [0, 1]
    exp.close()


def test_imagecodecs_is_pinned_alike_for_reader_and_exporter():
    def pin(path: str) -> str:
        lines = (ROOT / path).read_text().splitlines()
        return next(line.split("#")[0].strip() for line in lines if line.startswith("imagecodecs"))

    reader, exporter = (
        pin("services/reader/requirements.txt"),
        pin("services/exporter/requirements.txt"),
    )
    assert reader == exporter and "==" in reader
    assert numcodecs.__version__  # the codec registry both use
