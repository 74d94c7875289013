"""bench_vos end to end on a few real DAVIS frames through the sam session layer (classical
backend): every protocol runs, the figures are sane, the last line is JSON. Skips when the
DAVIS folder (../shared/data/davis2016-dev from the repo root, or $DAVIS) is absent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import bench_vos
from bench.davis import default_davis, gt_box, list_sequences, load_sequence

ROOT = Path(os.environ.get("DAVIS") or default_davis())
SEQS = ["blackswan", "dog"]
needs_davis = pytest.mark.skipif(
    not set(SEQS) <= set(list_sequences(ROOT)), reason=f"DAVIS sequences {SEQS} not in {ROOT}"
)


@needs_davis
def test_loader_reads_frames_and_masks():
    frames, gts = load_sequence(ROOT, "dog", max_frames=3)
    assert frames.shape == (3, 480, 854, 3) and frames.dtype.name == "uint8"
    assert gts.shape == (3, 480, 854) and gts.dtype == bool and gts[0].any()
    x0, y0, x1, y1 = gt_box(gts[0])
    assert 0 <= x0 < x1 < 854 and 0 <= y0 < y1 < 480


@needs_davis
def test_bench_vos_short_run(capsys):
    rc = bench_vos.main(["--davis", str(ROOT), "--sequences", *SEQS, "--max-frames", "5",
                         "--rounds", "1", "--threads", "1"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    res = json.loads(out[-1])
    assert res["sequences"] == SEQS and res["max_frames"] == 5
    for kind in ("mask", "box"):
        assert set(res[kind]["per_sequence"]) == set(SEQS)
        for k in ("J", "F", "JF"):
            assert 0.0 <= res[kind][k] <= 1.0
    # 5 frames from the ground-truth mask: the tracker cannot be far off on these two
    assert res["mask"]["J"] > 0.6, res["mask"]
    assert res["fps"] > 0 and 0.0 <= res["image_iou"] <= 1.0
    it = res["interactive"]
    assert len(it["JF_after"]) == 2 and it["JF_after"][0] == pytest.approx(
        res["box"]["JF"], abs=1e-3
    )
    assert set(it["to_j85"]) == set(SEQS)


def test_bench_vos_skips_without_data(tmp_path, capsys):
    assert bench_vos.main(["--davis", str(tmp_path / "absent")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["skipped"] is True
    assert "skipped" in captured.err
