"""classical_geodesic: the min-plus scan geodesic distance against Dijkstra, and the box
prompt's background-connectivity prior on a synthetic scene with a known answer."""

from __future__ import annotations

import heapq

import numpy as np

from services.sam.backends.classical_geodesic import box_core, geodesic_distance


def dijkstra(seeds, feat, tau, eps):
    h, w = seeds.shape
    f = feat.astype(np.float32)
    d = np.full((h, w), np.inf)
    heap = [(0.0, y, x) for y, x in zip(*np.nonzero(seeds), strict=True)]
    for _, y, x in heap:
        d[y, x] = 0.0
    heapq.heapify(heap)
    while heap:
        c, y, x = heapq.heappop(heap)
        if c > d[y, x]:
            continue
        for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
            if 0 <= yy < h and 0 <= xx < w:
                step = max(0.0, float(np.linalg.norm(f[yy, xx] - f[y, x])) - tau) + eps
                if c + step < d[yy, xx]:
                    d[yy, xx] = c + step
                    heapq.heappush(heap, (c + step, yy, xx))
    return d


def test_geodesic_distance_converges_to_dijkstra():
    rng = np.random.default_rng(0)
    feat = rng.integers(0, 40, (24, 30, 3)).astype(np.uint8)
    feat[8:16, 5:25] += 100  # a bright bar: crossing its edge costs
    seeds = np.zeros((24, 30), bool)
    seeds[0, 0] = seeds[20, 28] = True
    got = geodesic_distance(seeds, feat, tau=3.0, eps=0.5, iters=20)  # enough turns
    want = dijkstra(seeds, feat, 3.0, 0.5)
    assert np.all(got >= want - 1e-2)  # never shorter than the true shortest path
    assert np.allclose(got, want, rtol=1e-4, atol=1e-2)
    few = geodesic_distance(seeds, feat, tau=3.0, eps=0.5, iters=2)  # over-estimates only
    assert np.all(few >= want - 1e-2) and few.mean() > want.mean()


def test_box_core_leaves_out_the_background_the_outside_reaches():
    rng = np.random.default_rng(1)
    img = np.zeros((120, 160, 3), np.uint8)
    img[...] = (40, 120, 200)  # sky
    img += rng.integers(0, 6, img.shape).astype(np.uint8)
    obj = np.zeros((120, 160), bool)
    obj[60:100, 60:100] = True  # the object: the lower part of the box
    obj[40:60, 75:85] = True  # a thin mast up to the box's top side
    img[obj] = (200, 60, 30)
    box = (60, 40, 100, 100)  # tight
    core = box_core(img, box, (30, 10, 130, 120), bg_frac=0.25)
    assert not core[:, :60].any() and not core[:, 100:].any() and not core[:40].any()
    sky_in_box = np.zeros_like(obj)
    sky_in_box[40:60, 60:100] = True
    sky_in_box &= ~obj
    assert core[70:90, 70:90].all()  # the object's inside
    assert np.count_nonzero(core & sky_in_box) < 0.1 * np.count_nonzero(sky_in_box)
