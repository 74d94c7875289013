"""The sam2 backend on a real SAM2.1 hiera-tiny with random weights, saved as a checkpoint and
loaded through the normal path, on CPU. Random weights make arbitrary masks, so the tests
check that prompts reach the model (ids, frames, shapes) and use SAM2's mask-as-output path
(a mask prompt comes back as itself) to check which object and frame a result belongs to.

The model runs at image_size 128 (a hydra override) to keep CPU time small; the 1024 default
is covered by a slow test. Needs torch + sam2: run in the sam2 venv.
Usage: .venvs/sam-sam2/bin/python -m pytest tests/integration/test_sam2_backend.py -q
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: run in the sam2 venv")
pytest.importorskip("sam2", reason="needs sam2: run in the sam2 venv")

from services.sam.backends.base import Prompt  # noqa: E402
from services.sam.backends.sam2_backend import Sam2Backend  # noqa: E402
from services.sam.backends.sam2_state import (  # noqa: E402
    jpeg_inference_state,
    memory_inference_state,
)
from services.sam.merge import plan_propagation  # noqa: E402

pytestmark = pytest.mark.sam2
SMALL = ["++model.image_size=128"]  # 64x fewer pixels than 1024: ~0.5 s per frame on CPU
T, H, W = 3, 40, 56


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    """sam2.1_hiera_t with random weights, saved the way Meta's checkpoints are ({"model": sd})."""
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"  # name -> config inferred
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def backend(tiny_ckpt) -> Sam2Backend:
    torch.set_num_threads(2)
    b = Sam2Backend(checkpoint=tiny_ckpt, device="cpu", hydra_overrides=SMALL)
    b.setup()
    return b


def _frames(n: int = T) -> np.ndarray:
    """Smooth random frames (camera-like; pure noise is a worst case for the JPEG route)."""
    import cv2

    rng = np.random.default_rng(1)
    small = (rng.random((n, H // 8, W // 8, 3)) * 255).astype(np.uint8)
    return np.stack([cv2.resize(f, (W, H), interpolation=cv2.INTER_CUBIC) for f in small])


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def plan(keys: dict[int, set[int]], n: int, direction: str, start=None, max_frames=None):
    """The session layer's windows for these keyframes (obj_id -> frames), nothing stored."""
    return plan_propagation(keys, {}, n, direction, start, max_frames).windows


def test_checkpoint_loads_through_the_normal_path(backend, tiny_ckpt) -> None:
    info = backend.info()
    assert info["model"] == "configs/sam2.1/sam2.1_hiera_t.yaml"  # inferred from the name
    assert (info["device"], info["image_size"], info["video_source"]) == ("cpu", 128, "memory")
    assert info["sam2_version"].startswith("sam2 ")
    saved = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)["model"]
    name = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(backend.model.state_dict()[name], saved[name])  # weights came from disk


def test_mask_prompts_on_two_keyframes_track_both_ways(backend) -> None:
    store = np.zeros((T, H, W, 3), np.uint8)  # start_session allocates, frames arrive later
    state = backend.init_state(store)
    store[:] = _frames()  # put_frames fills the store in place after init_state
    m1, m2 = _rect(4, 24, 3, 25), _rect(14, 36, 30, 52)
    out1 = backend.add_prompt(state, Prompt(0, 1, mask=m1))
    out2 = backend.add_prompt(state, Prompt(2, 2, mask=m2))
    assert list(out1) == [1] and list(out2) == [2]
    assert out1[1].shape == (H, W) and out1[1].dtype == bool
    assert _iou(out1[1], m1) > 0.8 and _iou(out2[2], m2) > 0.8  # each prompt hit its object
    seen = []
    for t, per in backend.propagate(state, plan({1: {0}, 2: {2}}, T, "both")):
        seen.append((t, sorted(per)))
        assert all(m.shape == (H, W) and m.dtype == bool for m in per.values())
        if t == 0:
            assert _iou(per[1], m1) > 0.8 and _iou(per[1], m2) < 0.3
        if t == 2:
            assert _iou(per[2], m2) > 0.8 and _iou(per[2], m1) < 0.3
    # forward from the first keyframe, then backward from the last one
    assert seen == [(0, [1, 2]), (1, [1, 2]), (2, [1, 2]), (2, [1, 2]), (1, [1, 2]), (0, [1, 2])]
    backend.close(state)
    assert state.inference is None


class RecordingBackend:
    """The real sam2 backend, recording what each pass yields before the session layer
    chooses (re-yields the same tagged dicts, as any wrapper may)."""

    def __init__(self, inner: Sam2Backend) -> None:
        self.inner = inner
        self.seen: dict[tuple[str, int, int], np.ndarray] = {}  # (pass, frame, obj) -> (H, W)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def propagate(self, state, windows):
        for t, masks in self.inner.propagate(state, windows):
            for oid, m in masks.items():
                self.seen[(masks.direction, t, oid)] = m.copy()
            yield t, masks


def test_session_keeps_the_pass_of_the_nearest_keyframe(backend) -> None:
    """Mask prompts on frames 0 and 3 of one object, tracked both ways through the session
    layer: frame 1 (nearer 0) keeps the forward pass's mask, frame 2 (nearer 3) the backward
    pass's, keyframes (a tie) the forward pass's."""
    from protocol.masks import unpack
    from services.sam.sessions import SessionManager

    n = 4
    rec = RecordingBackend(backend)
    mgr = SessionManager(rec)
    sid = mgr.start(H, W, n)
    mgr.put_frames(sid, 0, _frames(n))
    mgr.add_prompt(sid, 0, 1, mask=_rect(4, 24, 3, 25))
    mgr.add_prompt(sid, 3, 1, mask=_rect(14, 36, 30, 52))
    r = mgr.propagate(sid, "both")
    assert (r.frames, r.obj_ids) == (n, [1])
    _, _, _, packed = mgr.masks(sid)
    kept = unpack(packed, W)[0]  # (n, H, W) bool
    fwd = {t: rec.seen[("forward", t, 1)] for t in range(n)}
    bwd = {t: rec.seen[("backward", t, 1)] for t in range(n)}
    assert not np.array_equal(fwd[1], bwd[1]) and not np.array_equal(fwd[2], bwd[2])
    for t, want in {0: fwd[0], 1: fwd[1], 2: bwd[2], 3: fwd[3]}.items():
        assert np.array_equal(kept[t], want), t
    mgr.close(sid)


def test_points_box_new_objects_after_propagation_and_removal(backend) -> None:
    state = backend.init_state(_frames())
    pts = np.array([[20.0, 15.0], [40.0, 30.0]], np.float32)
    box = np.array([5, 5, 45, 35], np.float32)
    out = backend.add_prompt(state, Prompt(1, 5, pts, np.array([1, 0], np.int32), box))
    assert list(out) == [5] and out[5].shape == (H, W)
    out = backend.add_prompt(state, Prompt(1, 6, pts[:1], np.array([1], np.int32)))
    assert list(out) == [6]
    backend.remove_object(state, 6)
    keys = {5: {1}}
    got = [(t, sorted(p)) for t, p in backend.propagate(state, plan(keys, T, "forward", 1, 1))]
    assert got == [(1, [5])]  # start=1, max_frames=1: exactly frame 1, object 6 gone
    got = [(t, sorted(p)) for t, p in backend.propagate(state, plan(keys, T, "backward", 1))]
    assert got == [(1, [5]), (0, [5])]
    out = backend.add_prompt(state, Prompt(2, 7, pts[1:], np.array([1], np.int32)))
    assert list(out) == [7]  # a new object after tracking started (SAM2.1 allows it)
    keys[7] = {2}
    got = [(t, sorted(p)) for t, p in backend.propagate(state, plan(keys, T, "forward"))]
    assert got == [(1, [5, 7]), (2, [5, 7])]  # from the earliest keyframe (1) to the end
    backend.reset(state)
    assert state.inference["obj_ids"] == []  # SAM2 forgot every object
    with pytest.raises(ValueError, match="text"):
        backend.add_prompt(state, Prompt(0, 1, text="robot arm"))
    backend.close(state)


def test_memory_state_matches_the_jpeg_folder_state(backend, tmp_path) -> None:
    frames = _frames()
    mem = memory_inference_state(backend.model, frames, True, True)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        jpg = jpeg_inference_state(backend.model, frames, str(tmp_path / "jpg"))
    assert set(mem) == set(jpg)  # same layout as the installed sam2's init_state
    for k in ("num_frames", "video_height", "video_width", "device"):
        assert mem[k] == jpg[k], k
    assert sorted(os.listdir(tmp_path / "jpg")) == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert mem["storage_device"] == torch.device("cpu") and mem["offload_state_to_cpu"]
    assert jpg["cached_features"] and not mem["cached_features"]  # no frame-0 encode at start
    for t in range(T):
        gap = (mem["images"][t] - jpg["images"][t]).abs().mean().item()
        # ~0.04 (JPEG noise + bilinear vs PIL bicubic); an RGB/BGR mix-up gives ~0.8
        assert mem["images"][t].shape == jpg["images"][t].shape and gap < 0.1, (t, gap)


def test_jpeg_route_with_offloading(tiny_ckpt, tmp_path) -> None:
    b = Sam2Backend(
        checkpoint=tiny_ckpt,
        device="cpu",
        hydra_overrides=SMALL,
        video_source="jpeg",
        jpeg_dir=str(tmp_path),
        offload_video_to_cpu=True,
        offload_state_to_cpu=True,
    )
    b.setup()
    state = b.init_state(_frames())
    assert state.inference is None  # built at the first prompt, once the frames are in
    m1 = _rect(4, 24, 3, 25)
    out = b.add_prompt(state, Prompt(0, 3, mask=m1))
    assert _iou(out[3], m1) > 0.8
    (folder,) = os.listdir(tmp_path)
    assert len(os.listdir(tmp_path / folder)) == T
    assert [t for t, _ in b.propagate(state, plan({3: {0}}, T, "forward", None, 2))] == [0, 1]
    b.close(state)
    assert not os.listdir(tmp_path)  # the temp JPEG folder is gone


def test_segment_image_boxes_points(backend) -> None:
    img = _frames()[0]
    boxes = np.array([[2, 2, 30, 30], [20, 10, 50, 38]], np.float32)
    out = backend.segment_image(img, boxes, None, None)
    assert out.shape == (2, H, W) and out.dtype == bool
    pts, lab = np.array([[10.0, 10.0]], np.float32), np.array([1], np.int32)
    assert backend.segment_image(img, None, pts, lab).shape == (1, H, W)
    assert backend.segment_image(img, boxes[:1], pts, lab).shape == (1, H, W)
    with pytest.raises(ValueError, match="boxes and/or points"):
        backend.segment_image(img, None, None, None)


def test_config_from_a_yaml_file_and_mismatches(tiny_ckpt, tmp_path) -> None:
    from importlib import resources

    src = resources.files("sam2") / "configs" / "sam2.1" / "sam2.1_hiera_t.yaml"
    own = tmp_path / "my_robot_sam.yaml"
    shutil.copyfile(str(src), own)
    b = Sam2Backend(checkpoint=tiny_ckpt, config=str(own), device="cpu", hydra_overrides=SMALL)
    b.setup()
    assert b.info()["model"] == "my_robot_sam.yaml"
    with pytest.raises(ValueError, match="does not fit config configs/sam2.1/sam2.1_hiera_s"):
        Sam2Backend(checkpoint=tiny_ckpt, config="sam2.1_hiera_s", device="cpu").setup()
    with pytest.raises(ValueError, match="config: 'hiera_xl'.*sam2.1_hiera_l.yaml"):
        Sam2Backend(checkpoint=tiny_ckpt, config="hiera_xl", device="cpu").setup()
    with pytest.raises(ValueError, match="checkpoint: file"):
        Sam2Backend(checkpoint=str(tmp_path / "none.pt"), device="cpu").setup()


@pytest.mark.slow
def test_default_1024_config_box_prompt(tiny_ckpt) -> None:
    b = Sam2Backend(checkpoint=tiny_ckpt, device="cpu")
    b.setup()
    assert b.model.image_size == 1024
    state = b.init_state(_frames()[:1])
    out = b.add_prompt(state, Prompt(0, 1, box=np.array([5, 5, 40, 30], np.float32)))
    assert list(out) == [1] and out[1].shape == (H, W)
