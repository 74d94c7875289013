"""The command-line entry points of the training sets: tools.sam3_sets, tools.grounding, from_run.

Run: python3 -m pytest tests/unit/test_sets_cli.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protocol.masks import pack
from services.exporter.export import Export, MemoryBudget
from services.exporter.synthetic import CAMERA_KEY, make_replay_buffer
from tests.unit.test_sam3_sets import LENGTHS, H, W, episode_masks, meta_for
from tools import grounding, sam3_sets
from tools.from_run import replay_run

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished 'run' (exporter folder with npz) over a synthetic buffer."""
    d = tmp_path_factory.mktemp("run")
    src = make_replay_buffer(d / "src.zarr", LENGTHS, H, W)
    exp = Export.open(str(d / "run"), str(src), CAMERA_KEY, ["npz"], {"fsync": False},
                      MemoryBudget(1 << 28))  # fmt: skip
    for ep, n in enumerate(LENGTHS):
        exp.put_masks(ep, 0, [1, 2], pack(episode_masks(ep, n)), W)
        exp.finish_episode(ep, {"target": 1, "arm_left": 2}, meta_for(ep, approved=ep % 2 == 0))
    exp.close()
    return d / "run", src


def test_sam3_sets_cli_from_a_run(run, tmp_path: Path, capsys) -> None:
    rc = sam3_sets.main(["--run", str(run[0]), "--output", str(tmp_path / "s"), "--every", "3",
                         "--roles", "target", "--approved-only", "--episodes", "0-3"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["written"] == [0, 1, 2, 3]
    kept = sorted(e for v in out["split"].values() for e in v)
    assert kept == [0, 2] and out["excluded_not_approved"] == [1, 3]  # approved: even episodes
    want_frames = sum(LENGTHS[e] for e in kept)
    assert out["stage2_train"]["frames"] + out["stage2_val"]["frames"] == want_frames
    masks = {e: episode_masks(e, LENGTHS[e]) for e in kept}
    pos = sum(int(masks[e][0, ::3].any(axis=(1, 2)).sum()) for e in kept)
    assert out["stage1_train"]["annotations"] + out["stage1_test"]["annotations"] == pos


def test_replay_refuses_another_source_and_a_run_without_npz(run, tmp_path: Path) -> None:
    other = make_replay_buffer(tmp_path / "other.zarr", [5, 5], H, W)
    with pytest.raises(ValueError, match="--source: .* is not the buffer the run was made from"):
        replay_run(run[0], tmp_path / "o", ["sam3"], {}, source=str(other))
    exp = Export.open(str(tmp_path / "nonpz"), str(other), CAMERA_KEY, ["ytvis"], {"fsync": False},
                      MemoryBudget(1 << 26))  # fmt: skip
    exp.close()
    with pytest.raises(ValueError, match="without the npz output"):
        replay_run(tmp_path / "nonpz", tmp_path / "o2", ["sam3"], {})
    with pytest.raises(FileNotFoundError, match="has no export.json"):
        replay_run(tmp_path, tmp_path / "o3", ["sam3"], {})


def test_grounding_cli_export_build_eval(run, tmp_path: Path, capsys) -> None:
    assert grounding.main(["export", "--run", str(run[0]), "--output", str(tmp_path / "g"),
                           "--frames", "4", "--eval-fraction", "0.4"]) == 0  # fmt: skip
    capsys.readouterr()
    assert grounding.main(["build", "--data-root", str(tmp_path / "g" / "grounding"),
                           "--out-dir", str(tmp_path / "t")]) == 0  # fmt: skip
    built = json.loads(capsys.readouterr().out)
    # 4 frames over each episode, the target absent in the last third: the last view is empty
    assert built["files"]["t1_val_multi.json"] == 2 * 3  # 2 val episodes, anchor 01 vs 3 views
    assert built["files"]["t2a_val_multi.json"] == 2
    samples = json.loads((tmp_path / "t" / "t1_val_multi.json").read_text())
    assert {s["description"] for s in samples} == {"the red mug"}
    preds = {s["id"]: ("NOT_VISIBLE" if i % 2 else "no idea") for i, s in enumerate(samples)}
    (tmp_path / "p.json").write_text(json.dumps(preds))
    assert grounding.main(["eval", "--data-json", str(tmp_path / "t" / "t1_val_multi.json"),
                           "--predictions", str(tmp_path / "p.json"),
                           "--output-json", str(tmp_path / "e.json")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "e.json").read_text())
    assert set(report) >= {"metrics", "results"} and len(report["results"]) == 6
    nv = [r for r in report["results"] if r["gt_not_visible"]]
    want = np.mean([r["pred_not_visible"] for r in nv])
    assert report["metrics"]["not_visible_accuracy"] == want
    assert report["metrics"]["unparsed"] == 3


def test_grounding_eval_refuses_partial_predictions(run, tmp_path: Path, capsys) -> None:
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"id": "a", "image": ["x", "y"], "query_mask": "m.png",
                                 "conversations": [{"value": "q"}, {"value": "NOT_VISIBLE"}]}]))  # fmt: skip
    (tmp_path / "p.json").write_text("{}")
    rc = grounding.main(["eval", "--data-json", str(data), "--predictions", str(tmp_path / "p.json"),
                         "--output-json", str(tmp_path / "e.json")])  # fmt: skip
    assert rc == 2 and "no answer for 1 sample" in capsys.readouterr().err
