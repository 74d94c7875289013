"""The exporter's sam3 output (SAM3 fine-tuning stages 1 and 2), read back with pycocotools.

Run: python3 -m pytest tests/unit/test_sam3_sets.py -q
(The SAM3 package's own loaders read the same files in tests/unit/test_sam3_loaders.py.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from protocol.masks import pack
from services.exporter.errors import ExportError
from services.exporter.export import Export, MemoryBudget
from services.exporter.sets import episode_split, is_studio_approved
from services.exporter.synthetic import CAMERA_KEY, make_replay_buffer

LENGTHS = [20, 16, 24, 12, 18]
H, W = 40, 52
EVERY, NEG, FRACTION, SEED = 2, 0.2, 0.4, 3
OPTIONS = {"sam3_every": EVERY, "sam3_negatives": NEG, "eval_fraction": FRACTION,
           "split_seed": SEED, "sam3_roles": "target", "fsync": False}  # fmt: skip
PHRASE = "the red mug"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def episode_masks(ep: int, n: int) -> np.ndarray:
    """(2, T, H, W) bool: obj 1 (target) a square present in frames t < 2n/3 only (later
    frames are negatives), obj 2 (arm_left) a bar present in every frame."""
    out = np.zeros((2, n, H, W), bool)
    for t in range(n):
        if t < 2 * n // 3:
            y, x = 5 + (t % 7), 4 + t + ep
            out[0, t, y : y + 9, x : x + 11] = True
        out[1, t, 30:34, 2 : 20 + t] = True
    return out


def meta_for(ep: int, approved: bool | None = None) -> dict:
    meta: dict = {"stages": [{"stage": "A", "prompts": [
        {"role": "target", "obj_id": 1, "frame": 0, "vlm": "mug",
         "vlm_answer": {"box": [0, 0, 1, 1], "label": "mug", "description": PHRASE}}]}]}  # fmt: skip
    if approved is not None:
        meta.update({"source": "studio", "approved": approved})
    return meta


def run_export(out: Path, src: Path, options: dict, approved: dict[int, bool] | None = None
               ) -> dict[int, np.ndarray]:  # fmt: skip
    exp = Export.open(str(out), str(src), CAMERA_KEY, ["sam3"], options, MemoryBudget(1 << 30))
    sent = {}
    for ep in (3, 0, 4, 1, 2):  # out of order on purpose
        masks = episode_masks(ep, LENGTHS[ep])
        exp.put_masks(ep, 0, [1, 2], pack(masks), W)
        exp.finish_episode(ep, {"target": 1, "arm_left": 2},
                           meta_for(ep, None if approved is None else approved[ep]))  # fmt: skip
        sent[ep] = masks
    exp.close()
    return sent


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, np.ndarray]]:
    d = tmp_path_factory.mktemp("sam3")
    src = make_replay_buffer(d / "src.zarr", LENGTHS, H, W)
    sent = run_export(d / "out", src, OPTIONS)
    return d / "out" / "sam3", sent


def expected_frames(ep: int) -> tuple[list[int], int]:
    """Sampled frames where the target is present, and how many negatives are kept."""
    n = LENGTHS[ep]
    sampled = list(range(0, n, EVERY))
    pos = [t for t in sampled if t < 2 * n // 3]
    n_neg = len(sampled) - len(pos)
    return pos, min(n_neg, math.floor(NEG * len(pos) / (1 - NEG)))


def test_split_is_by_episode_seeded_and_recorded(exported) -> None:
    root, _ = exported
    rec = json.loads((root / "split.json").read_text())
    train, held = rec["included"]["train"], rec["included"]["test (stage1) / val (stage2)"]
    assert sorted(train + held) == list(range(5)) and not set(train) & set(held)
    assert len(held) == 2  # round(0.4 * 5)
    assert rec["split_seed"] == SEED and rec["eval_fraction"] == FRACTION
    split = episode_split(5, FRACTION, SEED)
    assert held == sorted(e for e, s in split.items() if s == "eval")
    for ep in train:
        assert (root / "stage1" / "train" / f"{ep:04d}").is_dir()
        assert (root / "stage2" / "train" / f"{ep:04d}").is_dir()
        assert not (root / "stage2" / "val" / f"{ep:04d}").exists()
    for ep in held:
        assert (root / "stage1" / "test" / f"{ep:04d}").is_dir()
        assert (root / "stage2" / "val" / f"{ep:04d}").is_dir()


def test_split_edge_cases() -> None:
    assert episode_split(1, 0.2, 0) == {0: "train"}  # one episode cannot be split
    assert list(episode_split(4, 0.0, 0).values()) == ["train"] * 4
    assert list(episode_split(3, 0.9, 0).values()).count("eval") == 2  # at most n - 1
    assert list(episode_split(10, 0.01, 0).values()).count("eval") == 1  # at least 1


def test_stage1_coco_counts_masks_and_negatives(exported) -> None:
    root, sent = exported
    rec = json.loads((root / "split.json").read_text())
    for folder, eps in (("train", rec["included"]["train"]),
                        ("test", rec["included"]["test (stage1) / val (stage2)"])):  # fmt: skip
        path = root / "stage1" / folder / "_annotations.coco.json"
        coco = COCO(str(path))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [PHRASE]
        want_pos = sum(len(expected_frames(e)[0]) for e in eps)
        want_neg = sum(expected_frames(e)[1] for e in eps)
        assert len(coco.getAnnIds()) == want_pos  # one target annotation per positive image
        assert len(coco.getImgIds()) == want_pos + want_neg
        empty = [i for i in coco.getImgIds() if not coco.getAnnIds(imgIds=[i])]
        assert len(empty) == want_neg and len(empty) <= NEG * len(coco.getImgIds())
        for img in coco.loadImgs(coco.getImgIds()):
            jpg = cv2.imread(str(root / "stage1" / folder / img["file_name"]))
            assert jpg.shape == (H, W, 3) and (img["width"], img["height"]) == (W, H)
            assert img["frame"] % EVERY == 0
        for ann in coco.loadAnns(coco.getAnnIds()):
            img = coco.loadImgs([ann["image_id"]])[0]
            want = sent[img["episode"]][0, img["frame"]]
            got = coco.annToMask(ann).astype(bool)
            assert np.array_equal(got, want)
            ys, xs = np.nonzero(want)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                   ys.max() - ys.min() + 1]  # fmt: skip
            assert ann["area"] == int(want.sum()) and ann["iscrowd"] == 0
            assert isinstance(ann["segmentation"]["counts"], str)


def test_stage2_ytvis_lengths_nulls_and_phrase(exported) -> None:
    root, sent = exported
    for folder in ("train", "val"):
        doc = json.loads((root / "stage2" / folder / "annotations.json").read_text())
        for video in doc["videos"]:
            ep = video["episode"]
            assert video["id"] == ep + 1 and video["length"] == LENGTHS[ep]
            assert video["file_names"] == [f"{ep:04d}/{t:05d}.jpg" for t in range(LENGTHS[ep])]
            assert all((root / "stage2" / folder / f).is_file() for f in video["file_names"])
        assert len(doc["annotations"]) == len(doc["videos"])  # sam3_roles=target: one track
        for ann in doc["annotations"]:
            ep = ann["video_id"] - 1
            masks = sent[ep][0]
            assert ann["noun_phrase"] == PHRASE
            for t, seg in enumerate(ann["segmentations"]):
                if not masks[t].any():
                    assert seg is None and ann["bboxes"][t] is None and ann["areas"][t] is None
                else:
                    rle = {"size": seg["size"], "counts": seg["counts"].encode()}
                    assert np.array_equal(mask_utils.decode(rle).astype(bool), masks[t])
                    assert ann["areas"][t] == int(masks[t].sum())
        pairs = {(p["video_id"], p["noun_phrase"]) for p in doc["video_np_pairs"]}
        assert pairs == {(v["id"], PHRASE) for v in doc["videos"]}


def test_stage1_frames_are_links_of_stage2_frames(exported) -> None:
    root, _ = exported
    one = next((root / "stage1" / "train").glob("*/*.jpg"))
    two = root / "stage2" / "train" / one.parent.name / one.name
    assert one.read_bytes() == two.read_bytes()


def test_approved_only_keeps_studio_approved_episodes(tmp_path: Path) -> None:
    src = make_replay_buffer(tmp_path / "src.zarr", LENGTHS, H, W)
    approved = {0: True, 1: False, 2: True, 3: True, 4: False}
    run_export(tmp_path / "out", src, {**OPTIONS, "approved_only": True}, approved)
    root = tmp_path / "out" / "sam3"
    rec = json.loads((root / "split.json").read_text())
    kept = sorted(e for v in rec["included"].values() for e in v)
    assert kept == [0, 2, 3] and rec["excluded_not_approved"] == [1, 4]
    written = {p.name for p in (root / "stage2").glob("*/*") if p.is_dir()}
    assert written == {"0000", "0002", "0003"}
    n_videos = sum(len(json.loads((root / "stage2" / f / "annotations.json").read_text())["videos"])
                   for f in ("train", "val"))  # fmt: skip
    assert n_videos == 3


def test_is_studio_approved_reads_top_level_or_meta() -> None:
    assert is_studio_approved({"source": "studio", "approved": True})
    assert is_studio_approved({"meta": {"source": "studio", "approved": True}})
    assert not is_studio_approved({"meta": {"source": "studio", "approved": False}})
    assert not is_studio_approved({"meta": {"source": "orchestrator", "approved": True}})
    assert not is_studio_approved({"meta": {"approved": "yes", "source": "studio"}})


def test_bad_options_are_refused_by_name(tmp_path: Path) -> None:
    src = make_replay_buffer(tmp_path / "src.zarr", [4], 8, 8)
    for opts, field in (({"sam3_roles": "cup"}, "sam3_roles"), ({"sam3_negatives": 1.0},
                        "sam3_negatives"), ({"sam3_phrases": "x"}, "sam3_phrases"),
                        ({"eval_fraction": -0.1}, "eval_fraction")):  # fmt: skip
        with pytest.raises(ExportError, match=f"options.{field}"):
            Export.open(str(tmp_path / "o"), str(src), CAMERA_KEY, ["sam3"], opts,
                        MemoryBudget(1 << 20))  # fmt: skip


def test_stage2_every_k_th_frame(tmp_path: Path) -> None:
    src = make_replay_buffer(tmp_path / "src.zarr", LENGTHS, H, W)
    sent = run_export(tmp_path / "out", src, {**OPTIONS, "sam3_video_every": 3})
    root = tmp_path / "out" / "sam3"
    for folder in ("train", "val"):
        doc = json.loads((root / "stage2" / folder / "annotations.json").read_text())
        for video, ann in zip(doc["videos"], doc["annotations"], strict=True):
            ep, n = video["episode"], LENGTHS[video["episode"]]
            assert video["frame_indices"] == list(range(0, n, 3)) and video["length"] == -(-n // 3)
            assert video["file_names"] == [f"{ep:04d}/{t:05d}.jpg" for t in range(0, n, 3)]
            files = sorted(p.name for p in (root / "stage2" / folder / f"{ep:04d}").iterdir())
            assert files == [f"{t:05d}.jpg" for t in range(0, n, 3)]
            for k, t in enumerate(video["frame_indices"]):
                assert (ann["segmentations"][k] is None) == (not sent[ep][0, t].any())
    for folder in ("train", "test"):  # stage 1 still has its every-2nd frames (not only 0, 6, ...)
        coco = COCO(str(root / "stage1" / folder / "_annotations.coco.json"))
        for img in coco.loadImgs(coco.getImgIds()):
            assert (root / "stage1" / folder / img["file_name"]).is_file()
        frames = {img["frame"] for img in coco.loadImgs(coco.getImgIds())}
        assert any(t % 3 for t in frames)
        on_disk = list((root / "stage1" / folder).glob("*/*.jpg"))
        assert len(on_disk) == len(coco.getImgIds())  # dropped negatives are not left behind


def test_keep_negatives_share() -> None:
    from services.exporter.sam3_out import keep_negatives

    pos, neg = list(range(0, 17)), list(range(100, 110))
    kept = keep_negatives(pos, neg, 0.15, 0, 3)
    assert len(kept) == 3  # floor(0.15 * 17 / 0.85) = 3: 3 / 20 = 15%
    assert set(kept) <= set(neg) and kept == keep_negatives(pos, neg, 0.15, 0, 3)
    assert keep_negatives([], neg, 0.15, 0, 3) == []  # no positives: no negatives either
    assert keep_negatives(pos, neg, 0.0, 0, 3) == []
    assert len(keep_negatives(pos, neg[:2], 0.5, 0, 3)) == 2  # fewer negatives than the share
