"""The classical tracker's max-flow (services/sam/backends/classical_maxflow.py + maxflow.c):
the C Boykov-Kolmogorov solver gives the same cuts as scipy's Dinic, it is built once and
cached, and without a compiler "auto" falls back to scipy while "bk" refuses with the fix.

Usage: python3 -m pytest tests/unit/test_sam_classical_maxflow.py -q
"""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

from services.sam.backends import classical_maxflow as mf
from services.sam.backends.classical_cut import band_cut

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler to build maxflow.c"
)


def random_graph(rng, n: int, m: int):
    tails, heads = rng.integers(0, n, m), rng.integers(0, n, m)
    ok = tails != heads  # parallel pairs stay: they add up
    tails, heads = tails[ok], heads[ok]
    caps = rng.integers(0, 20, len(tails)).astype(np.int32)
    rcaps = rng.integers(0, 20, len(tails)).astype(np.int32)
    terminal = rng.integers(-30, 31, n).astype(np.int64) * (rng.random(n) < 0.5)
    return tails, heads, caps, rcaps, terminal


def test_bk_and_dinic_give_the_same_cut_on_random_graphs():
    rng = np.random.default_rng(0)
    sides = 0
    for _ in range(300):
        n = int(rng.integers(1, 80))
        g = random_graph(rng, n, int(rng.integers(0, 5 * n + 1)))
        bk, dinic = mf.mincut(*g, solver="bk"), mf.mincut(*g, solver="scipy")
        assert bk.dtype == bool and bk.shape == (n,)
        assert np.array_equal(bk, dinic)
        sides += int(0 < bk.sum() < n)
    assert sides > 100  # most graphs are cut somewhere in between, not all one side


def test_bk_finds_the_smallest_minimum_cut_by_brute_force():
    """On graphs small enough to try every source side: the cut's value is the least, and its
    source side is the smallest one (the intersection of all the sides of least value)."""
    rng = np.random.default_rng(7)

    def value(g, side):
        tails, heads, caps, rcaps, terminal = g
        c = caps[side[tails] & ~side[heads]].sum() + rcaps[side[heads] & ~side[tails]].sum()
        return c + np.maximum(terminal, 0)[~side].sum() + np.maximum(-terminal, 0)[side].sum()

    for _ in range(60):
        n = int(rng.integers(1, 10))
        g = random_graph(rng, n, int(rng.integers(0, 3 * n)))
        sides = (np.arange(2**n)[:, None] >> np.arange(n)) & 1 == 1  # (2^n, n) bool
        values = np.array([value(g, sd) for sd in sides])
        smallest = sides[values == values.min()].all(axis=0)
        got = mf.mincut(*g, solver="bk")
        assert value(g, got) == values.min()
        assert np.array_equal(got, smallest)


def test_band_cut_is_the_same_with_either_solver():
    rng = np.random.default_rng(3)
    h, w = 80, 96
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 40) ** 2 + (xx - 48) ** 2 < 24**2
    prob = np.clip(np.where(disc, 0.7, 0.3) + rng.normal(0, 0.25, (h, w)), 0.01, 0.99)
    feat = (disc[..., None] * 60 + rng.normal(0, 12, (h, w, 3))).astype(np.float32)
    ring = (yy - 40) ** 2 + (xx - 48) ** 2
    inband = (ring > 16**2) & (ring < 32**2)
    fixed = ring <= 16**2
    for reach in (4, None):
        bk = band_cut(prob, inband, fixed, feat, 3.0, reach=reach, solver="bk")
        dinic = band_cut(prob, inband, fixed, feat, 3.0, reach=reach, solver="scipy")
        assert np.array_equal(bk, dinic)
        assert not np.array_equal(bk, np.where(inband, prob > 0.5, fixed))  # the cut did work


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The module as in a new process, with its cache in tmp_path."""
    monkeypatch.setenv("MASKMESH_CACHE", str(tmp_path))
    monkeypatch.setattr(mf, "_lib", None)
    monkeypatch.setattr(mf, "_error", None)
    monkeypatch.setattr(mf, "_warned", False)
    return tmp_path


def test_built_once_into_the_cache(fresh):
    path = mf.build()
    assert path.parent == fresh and path.suffix == ".so"
    stamp = path.stat().st_mtime_ns
    assert mf.build() == path and path.stat().st_mtime_ns == stamp  # cached, not rebuilt
    assert [p.name for p in fresh.iterdir()] == [path.name]  # no temporary left behind
    assert mf.resolve("auto") == "bk"


def test_without_a_compiler_auto_falls_back_and_bk_refuses(fresh, monkeypatch, caplog):
    monkeypatch.setenv("CC", "no-such-cc")
    with caplog.at_level(logging.WARNING):
        assert mf.resolve("auto") == "scipy"
    assert "no-such-cc" in caplog.text and "scipy" in caplog.text
    with pytest.raises(RuntimeError, match=r"install a C compiler.*solver: scipy"):
        mf.resolve("bk")
    g = random_graph(np.random.default_rng(1), 30, 90)
    assert mf.mincut(*g, solver="auto").shape == (30,)  # cut by scipy
    with pytest.raises(ValueError, match="solver"):
        mf.resolve("fast")
