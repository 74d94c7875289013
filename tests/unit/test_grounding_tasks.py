"""Spatial-grounding task builder and evaluator (seed 003), against hand-computed answers.

Run: python3 -m pytest tests/unit/test_grounding_tasks.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tools.grounding_eval import evaluate, hit_at_mask, mask_path_for, metrics, parse_answer, score
from tools.grounding_tasks import NOT_VISIBLE, build_tasks, gt_point, mark


def test_gt_point_is_the_tight_bbox_centre_when_inside() -> None:
    m = np.zeros((10, 20), bool)
    m[2:6, 3:9] = True  # rows 2..5, cols 3..8: centre (3+8+1)/2 = 6, (2+5+1)/2 = 4
    assert gt_point(m, 0, "k") == (6 / 20, 4 / 10)


def test_gt_point_falls_back_to_a_seeded_random_mask_pixel() -> None:
    m = np.zeros((11, 11), bool)
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True  # a ring: the centre (5.5, 5.5) is outside
    p = gt_point(m, 7, "ring")
    j, i = p[0] * 11 - 0.5, p[1] * 11 - 0.5  # back to the pixel index
    assert j == round(j) and i == round(i) and m[int(i), int(j)]
    assert gt_point(m, 7, "ring") == p  # seeded: the same again
    others = {gt_point(m, s, "ring") for s in range(20)}
    assert len(others) > 1  # the seed matters


def test_empty_mask_has_no_point() -> None:
    assert gt_point(np.zeros((4, 4), bool), 0, "k") is None


def test_point_on_the_mask_edge() -> None:
    m = np.zeros((10, 40), bool)
    m[:, 10:20] = True  # columns 10..19, i.e. x in [0.25, 0.5)
    assert hit_at_mask((0.25, 0.5), m, concat=False)  # left edge: pixel 10, inside
    assert not hit_at_mask((0.2499, 0.5), m, concat=False)  # pixel 9
    assert hit_at_mask((0.4999, 0.5), m, concat=False)  # pixel 19, the last inside
    assert not hit_at_mask((0.5, 0.5), m, concat=False)  # pixel 20: the right edge is outside
    assert not hit_at_mask((0.3, 1.0), np.zeros((10, 40), bool), concat=False)
    assert hit_at_mask((0.3, 1.0), m, concat=False)  # y = 1 clamps to the last row


def test_concat_point_at_exactly_one_half() -> None:
    m = np.zeros((8, 16), bool)
    m[:, 0] = True  # the query image's first column
    assert hit_at_mask((0.5, 0.5), m, concat=True)  # x = 0.5 -> xR = 0 -> column 0
    assert not hit_at_mask((0.4999, 0.5), m, concat=True)  # the left (reference) half: miss
    m2 = np.zeros((8, 16), bool)
    m2[:, 8] = True  # xR in [0.5, 0.5625) -> x in [0.75, 0.78125)
    assert hit_at_mask((0.75, 0.1), m2, concat=True)
    assert not hit_at_mask((0.7499, 0.1), m2, concat=True)


def test_parse_answer() -> None:
    assert parse_answer("[(0.25, 0.75)]") == ("point", (0.25, 0.75))
    assert parse_answer("I think it is at [( .5 ,1e-1 )] and [(0.9, 0.9)]") == ("point", (0.5, 0.1))
    assert parse_answer("NOT_VISIBLE") == ("not_visible", None)
    assert parse_answer("The object is NOT_VISIBLE in view B [(0.1, 0.2)]")[0] == "not_visible"
    assert parse_answer("the cup is on the left") == ("unparsed", None)
    assert parse_answer("(0.2, 0.3)") == ("unparsed", None)  # no brackets: not the form
    assert parse_answer(None) == ("unparsed", None)


def _sample(tmp: Path, name: str, mask: np.ndarray, answer: str, **kw) -> dict:
    path = tmp / f"{name}_mask.png"
    cv2.imwrite(str(path), mask.astype(np.uint8) * 255)
    return {"id": name, "query_mask": str(path), "image": ["a.png", "b.png"],
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": answer}],
            **kw}  # fmt: skip


def test_metrics_by_hand(tmp_path: Path) -> None:
    m = np.zeros((10, 10), bool)
    m[4:6, 4:6] = True  # pixels 4..5: x, y in [0.4, 0.6)
    empty = np.zeros((10, 10), bool)
    samples = [
        _sample(tmp_path, "v1", m, "[(0.500, 0.500)]"),
        _sample(tmp_path, "v2", m, "[(0.500, 0.500)]"),
        _sample(tmp_path, "v3", m, "[(0.500, 0.500)]"),
        _sample(tmp_path, "n1", empty, NOT_VISIBLE),
        _sample(tmp_path, "n2", empty, NOT_VISIBLE),
    ]
    preds = {
        "v1": "[(0.5, 0.54)]",  # l2 = 0.04, inside the mask -> hit
        "v2": "[(0.1, 0.5)]",  # l2 = 0.4, outside -> miss
        "v3": "somewhere in the middle",  # unparsed -> miss, no l2
        "n1": "NOT_VISIBLE",  # right
        "n2": "[(0.5, 0.5)]",  # wrong
    }
    out = evaluate(samples, preds)
    mt = out["metrics"]
    assert (mt["total"], mt["gt_not_visible"], mt["visible_gt"]) == (5, 2, 3)
    assert mt["not_visible_accuracy"] == 0.5 and mt["unparsed"] == 1
    assert (mt["hit_at_mask_count"], mt["hit_at_mask_total"]) == (1, 3)
    assert mt["hit_at_mask"] == pytest.approx(1 / 3)
    assert mt["mean_l2_error"] == pytest.approx((0.04 + 0.4) / 2)
    assert mt["median_l2_error"] == pytest.approx(0.22)
    assert mt["std_l2_error"] == pytest.approx(0.18)
    assert mt["success_002"] == 0.0
    assert mt["success_005"] == pytest.approx(1 / 3)  # 0.04 <= 0.05 (of 3 visible ground truths)
    assert mt["success_010"] == pytest.approx(1 / 3)
    res = {r["id"]: r for r in out["results"]}
    assert res["v3"]["parse_ok"] is False and res["v3"]["hit"] is False and res["v3"]["l2"] is None
    assert res["n2"]["hit"] is None and res["n1"]["pred_not_visible"]
    with pytest.raises(KeyError, match="no answer for 1 sample"):
        evaluate(samples, {k: v for k, v in preds.items() if k != "n2"})


def test_metrics_with_no_samples_are_none() -> None:
    mt = metrics([])
    assert mt["hit_at_mask"] is None and mt["mean_l2_error"] is None and mt["total"] == 0


def test_mask_inferred_as_the_seed_does(tmp_path: Path) -> None:
    q = tmp_path / "01_00003_original.png"
    (tmp_path / "01_00003_mask.png").write_bytes(b"x")
    assert mask_path_for({"query_original": str(q)}) == tmp_path / "01_00003_mask.png"
    (tmp_path / "01_00003_mask_dialated.png").write_bytes(b"x")
    assert mask_path_for({"image": ["a", str(q)]}) == tmp_path / "01_00003_mask_dialated.png"


def grounding_folder(root: Path) -> dict[str, np.ndarray]:
    """val/0002/uid_5 with three views: 01 and 02 show the object, 03 does not; 01 inpainted."""
    folder = root / "val" / "0002" / "uid_5"
    folder.mkdir(parents=True)
    h, w = 12, 16
    masks = {}
    for nn, t, box in (("01", 0, (2, 6, 3, 9)), ("02", 4, (5, 9, 8, 14)), ("03", 8, None)):
        img = np.full((h, w, 3), 40 * int(nn), np.uint8)
        m = np.zeros((h, w), bool)
        if box:
            m[box[0] : box[1], box[2] : box[3]] = True
        stem = folder / f"{nn}_{t:05d}"
        cv2.imwrite(f"{stem}_original.png", img)
        cv2.imwrite(f"{stem}_mask.png", m.astype(np.uint8) * 255)
        cv2.imwrite(f"{stem}_mask_dialated.png", m.astype(np.uint8) * 255)
        if nn == "01":
            cv2.imwrite(f"{stem}_inpainted.png", img // 2)
        masks[nn] = m
    return masks


def test_builder_by_hand(tmp_path: Path) -> None:
    masks = grounding_folder(tmp_path / "grounding")
    out = tmp_path / "tasks"
    summary = build_tasks(tmp_path / "grounding", out, seed=0)
    assert summary["files"] == {"t1_val_multi.json": 2, "t1_val_concat.json": 2,
                                "t2a_val_multi.json": 1, "t2b_val_multi.json": 1}  # fmt: skip
    t1 = json.loads((out / "t1_val_multi.json").read_text())
    by_id = {s["id"]: s for s in t1}
    s12 = by_id["val/0002/uid_5/01-02"]
    # view 02: rows 5..8, cols 8..13 -> centre ((8+13+1)/2, (5+8+1)/2) = (11, 7) of 16x12
    assert s12["conversations"][1]["value"] == f"[({11 / 16:.3f}, {7 / 12:.3f})]"
    assert by_id["val/0002/uid_5/01-03"]["conversations"][1]["value"] == NOT_VISIBLE
    for s in t1:
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in s["image"])
        assert "<image>" not in s["conversations"][0]["value"]
        assert s["image"][1] == s["query_original"]
    marked = cv2.imread(s12["image"][0])
    orig = np.full(3, 40, np.float32)
    assert np.array_equal(marked[3, 4], np.rint(0.55 * orig + 0.45 * np.array([0, 0, 255])))
    assert np.array_equal(marked[0, 0], [40, 40, 40])  # outside the mask: untouched
    concat = {s["id"]: s for s in json.loads((out / "t1_val_concat.json").read_text())}
    c12 = concat["val/0002/uid_5/01-02"]
    assert c12["conversations"][1]["value"] == f"[({0.5 + 11 / 32:.3f}, {7 / 12:.3f})]"
    # reference point of view 01: rows 2..5, cols 3..8 -> (6/16, 4/12); concat x = 6/16 * 0.5
    assert f"({6 / 32:.3f}, {4 / 12:.3f})" in c12["conversations"][0]["value"]
    assert cv2.imread(c12["image"]).shape == (12, 32, 3)
    t2a = json.loads((out / "t2a_val_multi.json").read_text())
    assert [s["id"] for s in t2a] == ["val/0002/uid_5/01-03"]
    t2b = json.loads((out / "t2b_val_multi.json").read_text())
    assert t2b[0]["query_original"].endswith("01_00000_inpainted.png")
    assert t2b[0]["conversations"][1]["value"] == f"[({6 / 16:.3f}, {4 / 12:.3f})]"
    # the ground truth answers score perfectly against their own masks
    for name in ("t1_val_multi.json", "t1_val_concat.json", "t2a_val_multi.json",
                 "t2b_val_multi.json"):  # fmt: skip
        samples = json.loads((out / name).read_text())
        rep = evaluate(samples, {s["id"]: s["conversations"][1]["value"] for s in samples})
        assert rep["metrics"]["hit_at_mask"] in (1.0, None)
        assert rep["metrics"]["not_visible_accuracy"] in (1.0, None)
    assert masks["03"].sum() == 0


def test_score_concat_left_half_is_a_miss(tmp_path: Path) -> None:
    m = np.ones((4, 4), bool)
    s = _sample(tmp_path, "c", m, "[(0.750, 0.500)]", concat=True)
    assert score(s, "[(0.25, 0.5)]")["hit"] is False
    assert score(s, "[(0.5, 0.5)]")["hit"] is True


def test_mark_blends_red() -> None:
    img = np.full((2, 2, 3), 100, np.uint8)
    m = np.array([[True, False], [False, False]])
    out = mark(img, m, 0.45)
    assert out[0, 0].tolist() == [55, 55, round(0.55 * 100 + 0.45 * 255)]
    assert out[1, 1].tolist() == [100, 100, 100]
