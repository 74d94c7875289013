"""bench_vos with the sam2 backend: a random-weight sam2.1_hiera_t checkpoint built and loaded
through the normal path, on two short DAVIS sequences, every protocol. Only shows that the
benchmark runs for sam2 (random weights: the quality figures mean nothing, and the output
says so). Needs torch + sam2 (make test-sam2) and the DAVIS folder (skips without either).
Usage: .venvs/test-sam2/bin/python -m pytest -q -m sam2 tests/integration/test_sam2_vos.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs torch: run in the sam2 venv")
pytest.importorskip("sam2", reason="needs sam2: run in the sam2 venv")

from bench import bench_vos  # noqa: E402
from bench.davis import default_davis, list_sequences  # noqa: E402

pytestmark = pytest.mark.sam2
ROOT = Path(os.environ.get("DAVIS") or default_davis())
SEQS = ["blackswan", "dog"]


@pytest.mark.skipif(not set(SEQS) <= set(list_sequences(ROOT)), reason=f"no DAVIS {SEQS} in {ROOT}")
def test_bench_vos_runs_sam2_random_weights(capsys):
    import torch

    torch.set_num_threads(2)
    rc = bench_vos.main(["--davis", str(ROOT), "--sam2-random", "--sequences", *SEQS,
                         "--max-frames", "3", "--rounds", "1"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert bench_vos.RANDOM_NOTE in out  # said before the figures
    res = json.loads(out[-1])
    assert res["backend"] == "sam2" and res["note"] == bench_vos.RANDOM_NOTE
    assert res["sequences"] == SEQS
    for kind in ("mask", "box"):
        assert set(res[kind]["per_sequence"]) == set(SEQS)
        assert 0.0 <= res[kind]["JF"] <= 1.0
    assert len(res["interactive"]["JF_after"]) == 2
    assert res["options"]["hydra_overrides"] == ["++model.image_size=128"]
