"""SAM2 corrections after a propagation, and a second SAM2-API family entry, on CPU with random
weights (the sam2 tests' approach: check what the model received, not mask quality).

A correction is a prompt on a frame SAM2 already tracked. With SAM2's defaults it is stored as
a non-conditioning output that the next propagation recomputes without the clicks, and the
frames re-propagated around it read the stale (drifted) memory of the earlier run. The
backend turns corrections into conditioning frames and drops the object's non-conditioning
memory around them; the session layer re-propagates only the frames nearer to it.

Usage: .venvs/test-sam2/bin/python -m pytest tests/integration/test_sam2_corrections.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: run in the sam2 venv")
pytest.importorskip("sam2", reason="needs sam2: run in the sam2 venv")

from protocol.masks import unpack  # noqa: E402
from services.sam.backends import sam2_build  # noqa: E402
from services.sam.backends.sam2_backend import Sam2Backend  # noqa: E402
from services.sam.sessions import SessionManager  # noqa: E402
from tests.integration.test_sam2_backend import SMALL, _frames, _rect  # noqa: E402

pytestmark = pytest.mark.sam2
T, H, W = 8, 40, 56


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def backend(tiny_ckpt) -> Sam2Backend:
    torch.set_num_threads(2)
    b = Sam2Backend(checkpoint=tiny_ckpt, device="cpu", hydra_overrides=SMALL)
    b.setup()
    return b


@pytest.fixture()
def sam2_defaults(backend, monkeypatch) -> Sam2Backend:
    """The same model with SAM2's defaults for corrections (the backend's fix off)."""
    monkeypatch.setattr(backend, "corrections", False)
    monkeypatch.setattr(backend.model, "add_all_frames_to_correct_as_cond", False)
    return backend


def record_inference(monkeypatch, model) -> list[dict]:
    """Every single-frame inference SAM2 runs: frame, whether clicks/masks went in, and the
    memory it could read (cond / non-cond frames of that object's output dict)."""
    calls: list[dict] = []
    inner = model._run_single_frame_inference

    def spy(**kw):
        out = kw["output_dict"]
        calls.append(
            {
                "frame": kw["frame_idx"],
                "init": kw["is_init_cond_frame"],
                "points": kw["point_inputs"] is not None,
                "cond": sorted(out["cond_frame_outputs"]),
                "non_cond": sorted(out["non_cond_frame_outputs"]),
            }
        )
        return inner(**kw)

    monkeypatch.setattr(model, "_run_single_frame_inference", spy)
    return calls


def tracked_session(b: Sam2Backend) -> tuple[SessionManager, str, np.ndarray]:
    mgr = SessionManager(b)
    sid = mgr.start(H, W, T)
    frames = np.concatenate([_frames(3)] * 3)[:T]
    mgr.put_frames(sid, 0, frames)
    mgr.add_prompt(sid, 0, 1, mask=_rect(4, 24, 3, 25))
    mgr.propagate(sid, "forward")  # frames 1-7 tracked as non-conditioning outputs
    _, _, corr = mgr.add_prompt(sid, 5, 1, points=[[40.0, 30.0]], labels=[1])  # the correction
    return mgr, sid, corr[0]


def test_a_correction_takes_effect_and_only_its_span_is_recomputed(backend, monkeypatch):
    b = backend
    assert b.model.add_all_frames_to_correct_as_cond  # set up by the backend
    calls = record_inference(monkeypatch, b.model)
    mgr, sid, corr = tracked_session(b)
    (click,) = [c for c in calls if c["points"]]
    assert (click["frame"], click["init"]) == (5, False)  # a correction, with memory
    inf = mgr.get(sid).state.inference
    assert 5 in inf["temp_output_dict_per_obj"][0]["cond_frame_outputs"]  # a conditioning frame
    assert mgr.get(sid).state.cleared[(1, 5)] == list(range(1, 8))  # stale memory dropped
    calls.clear()
    r = mgr.propagate(sid, "both", bounded=True)
    # keyframes 0 and 5: frames 3-4 are nearer to 5 (backward), 6-7 follow it (forward)
    assert (r.recomputed, r.spans) == (4, [[1, 3, 5], [1, 6, 8]])
    assert [c["frame"] for c in calls] == [6, 7, 4, 3]
    assert not any(c["points"] or c["init"] for c in calls)
    by_frame = {c["frame"]: c for c in calls}
    assert by_frame[6]["cond"] == [0, 5] and by_frame[6]["non_cond"] == []  # no stale memory
    assert by_frame[4]["non_cond"] == [6, 7]  # only what this call recomputed
    kept = unpack(mgr.masks(sid)[3], W)[0]  # (T, H, W)
    assert np.array_equal(kept[5], corr)  # the corrected frame keeps the correction
    calls.clear()
    mgr.propagate(sid, "forward")  # a full pass afterwards: frame 5 stays a keyframe
    assert 5 not in [c["frame"] for c in calls] and 0 not in [c["frame"] for c in calls]
    assert np.array_equal(unpack(mgr.masks(sid)[3], W)[0][5], corr)


def test_without_the_fix_sam2_recomputes_the_corrected_frame(sam2_defaults, monkeypatch):
    """The pitfall itself (corrections=False: SAM2's defaults): the clicked frame is a
    non-conditioning output, and the next propagation re-runs it without the clicks."""
    b = sam2_defaults
    calls = record_inference(monkeypatch, b.model)
    mgr, sid, _ = tracked_session(b)
    assert mgr.get(sid).state.cleared == {}
    inf = mgr.get(sid).state.inference
    assert 5 in inf["temp_output_dict_per_obj"][0]["non_cond_frame_outputs"]
    calls.clear()
    mgr.propagate(sid, "forward")
    redo = [c for c in calls if c["frame"] == 5]
    assert redo and not redo[0]["points"]  # the correction's clicks are gone
    assert 7 in redo[0]["non_cond"]  # the old run's outputs around it are all still there


def build_test_family(config_file, ckpt_path, device, mode, hydra_overrides_extra, **kw):
    """The builder of the second SAM2-API entry: any module:function with sam2's builder
    signature. Here sam2's own builder, recording the call (the tiny config keeps CPU time
    small; another size is only another config name)."""
    from sam2.build_sam import build_sam2_video_predictor

    BUILT.append(config_file)
    return build_sam2_video_predictor(
        config_file, ckpt_path, device, mode, hydra_overrides_extra, **kw
    )


BUILT: list[str] = []


def test_a_second_sam2_api_entry_is_one_family_entry(tmp_path, monkeypatch):
    from sam2.build_sam import build_sam2

    torch.manual_seed(1)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    ckpt = tmp_path / "robotam_tiny.pt"  # the entry's own checkpoint naming
    torch.save({"model": model.state_dict()}, ckpt)
    entry = sam2_build.Sam2Family(
        name="robotam",
        package="sam2",
        builder=f"{__name__}:build_test_family",
        image_predictor="sam2.sam2_image_predictor:SAM2ImagePredictor",
        config_dirs=("sam2.1",),
        short_config=lambda text: (
            "configs/sam2.1/sam2.1_hiera_t.yaml" if "robotam_tiny" in text else None
        ),
        dists=("sam2",),
    )
    monkeypatch.setitem(sam2_build.FAMILIES, "robotam", entry)
    BUILT.clear()
    torch.set_num_threads(2)
    b = Sam2Backend(checkpoint=str(ckpt), family="robotam", device="cpu", hydra_overrides=SMALL)
    b.setup()
    assert BUILT == ["configs/sam2.1/sam2.1_hiera_t.yaml"]  # built by the entry's builder
    info = b.info()
    assert (info["family"], info["model"]) == ("robotam", "configs/sam2.1/sam2.1_hiera_t.yaml")
    name = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(b.model.state_dict()[name], model.state_dict()[name])  # from the file
    mgr = SessionManager(b)
    sid = mgr.start(H, W, 3)
    mgr.put_frames(sid, 0, _frames(3))
    m = _rect(4, 24, 3, 25)
    _, ids, out = mgr.add_prompt(sid, 0, 7, mask=m)
    assert ids == [7] and out.shape == (1, H, W)
    r = mgr.propagate(sid, "forward")
    assert (r.frames, r.obj_ids, r.recomputed) == (3, [7], 3)
    img = b.segment_image(_frames(1)[0], np.array([[2, 2, 30, 30]], np.float32), None, None)
    assert img.shape == (1, H, W) and img.dtype == bool
    with pytest.raises(ValueError, match="family: unknown 'nope'"):
        Sam2Backend(checkpoint=str(ckpt), family="nope")
    b2 = Sam2Backend(checkpoint=str(ckpt), family="efficienttam", device="cpu")
    with pytest.raises(RuntimeError, match="efficient_track_anything"):
        b2.setup()  # not installed here: the error names the package to install
