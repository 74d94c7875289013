"""The sam service with the sam2 backend as a real process: frames arrive by put_frames after
start_session (the in-memory inference state reads them lazily), prompts and masks travel
over tcp loopback, bit-packed.

Needs torch + sam2 (the service runs with this interpreter): run in the sam2 venv.
Usage: .venvs/sam-sam2/bin/python -m pytest tests/integration/test_sam2_service.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: run in the sam2 venv")
pytest.importorskip("sam2", reason="needs sam2: run in the sam2 venv")

from protocol.client import RemoteError  # noqa: E402
from protocol.masks import unpack  # noqa: E402
from tests.helpers import start_service  # noqa: E402

pytestmark = pytest.mark.sam2
T, H, W = 3, 40, 56


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_session_over_the_wire(tiny_ckpt) -> None:
    opts = {"checkpoint": tiny_ckpt, "device": "cpu", "hydra_overrides": ["++model.image_size=128"]}
    with start_service(
        "sam", backend="sam2", options=opts, timeout=120.0, ready_timeout=240.0
    ) as svc:
        c = svc.client
        info = c.call("info", {})
        assert info["backend"] == "sam2"
        assert info["backend_info"]["model"] == "configs/sam2.1/sam2.1_hiera_t.yaml"
        assert sorted(info["prompt_kinds"]) == ["box", "mask", "points"]
        sid = c.call("start_session", {"height": H, "width": W, "n_frames": T})["session"]
        rng = np.random.default_rng(2)
        frames = (rng.random((T, H, W, 3)) * 255).astype(np.uint8)  # (T, H, W, 3) RGB
        assert c.call("put_frames", {"session": sid, "start": 0, "frames": frames[:2]}) == {
            "received": 2
        }
        m1 = np.zeros((H, W), bool)
        m1[5:30, 4:28] = True
        out = c.call("add_prompt", {"session": sid, "frame": 1, "obj_id": 4, "mask": m1})
        assert out["obj_ids"] == [4] and out["frame"] == 1
        got = unpack(out["masks"], out["width"])  # (n_obj, H, W) bool
        assert got.shape == (1, H, W) and _iou(got[0], m1) > 0.8
        with pytest.raises(RemoteError) as e:  # frame 2 not sent yet: the session says so
            c.call("propagate", {"session": sid, "direction": "forward"})
        assert e.value.code == "bad_request" and "put_frames" in e.value.message
        c.call("put_frames", {"session": sid, "start": 2, "frames": frames[2:]})
        box = {"session": sid, "frame": 0, "obj_id": 9, "box": [0.1, 0.1, 0.6, 0.9], "rel": True}
        assert c.call("add_prompt", box)["obj_ids"] == [4, 9]
        res = c.call("propagate", {"session": sid, "direction": "both"})
        assert (res["frames"], res["obj_ids"]) == (T, [4, 9])
        m = c.call("masks", {"session": sid, "start": 0, "stop": T})
        allm = unpack(m["masks"], m["width"])  # (n_obj, T, H, W)
        assert m["obj_ids"] == [4, 9] and allm.shape == (2, T, H, W)
        assert _iou(allm[0, 1], m1) > 0.8  # object 4's keyframe kept its mask
        with pytest.raises(RemoteError) as e:
            c.call("add_prompt", {"session": sid, "frame": 0, "obj_id": 1, "text": "robot arm"})
        assert e.value.code == "unsupported"
        img = c.call("segment_image", {"image": frames[0], "boxes": [[2, 2, 30, 30]]})
        assert unpack(img["masks"], img["width"]).shape == (1, H, W)
        assert c.call("close_session", {"session": sid}) == {"closed": True}
