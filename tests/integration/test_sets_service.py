"""The sam3 and grounding outputs through the exporter as a real process on a real socket.

Run: python3 -m pytest tests/integration/test_sets_service.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from protocol.masks import pack
from services.exporter.synthetic import CAMERA_KEY, make_replay_buffer
from tests.helpers import start_service
from tests.unit.test_sam3_sets import LENGTHS, H, W, episode_masks, meta_for

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_sam3_and_grounding_over_the_wire(tmp_path: Path) -> None:
    src = make_replay_buffer(tmp_path / "src.zarr", LENGTHS, H, W)
    opts = {"sam3_every": 4, "sam3_negatives": 0.1, "eval_fraction": 0.2, "split_seed": 5,
            "grounding_frames": 3, "sam3_roles": "target", "fsync": False}  # fmt: skip
    with start_service("exporter", backend="local", retries=0) as svc:
        c = svc.client
        opened = c.call("open_export", {"output": str(tmp_path / "out"), "source": str(src),
                                        "camera_key": CAMERA_KEY, "outputs": ["sam3", "grounding"],
                                        "options": opts})  # fmt: skip
        exp = opened["export"]
        for ep, n in enumerate(LENGTHS):
            c.call("put_masks", {"export": exp, "episode": ep, "start": 0, "obj_ids": [1, 2],
                                 "masks": pack(episode_masks(ep, n)), "width": W})  # fmt: skip
            rep = c.call("finish_episode", {"export": exp, "episode": ep,
                                            "roles": {"target": 1, "arm_left": 2},
                                            "meta": meta_for(ep)}, timeout=60)  # fmt: skip
            assert {"sam3_part", "sam3_stage1", "sam3_stage2", "grounding"} <= set(rep["outputs"])
        c.call("close_export", {"export": exp})
    root = tmp_path / "out" / "sam3"
    n_videos = 0
    for s1, s2 in (("train", "train"), ("test", "val")):
        coco = COCO(str(root / "stage1" / s1 / "_annotations.coco.json"))
        assert coco.getImgIds() and coco.getAnnIds()
        n_videos += len(
            json.loads((root / "stage2" / s2 / "annotations.json").read_text())["videos"]
        )
    assert n_videos == len(LENGTHS)
    g = json.loads((tmp_path / "out" / "grounding" / "split.json").read_text())
    assert sorted(g["included"]["train"] + g["included"]["val"]) == list(range(len(LENGTHS)))
    assert len(list((tmp_path / "out" / "grounding").glob("*/*/uid_1/*_original.png"))) == 3 * 5
