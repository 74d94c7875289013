"""Edge-aware decision of the classical tracker's band (classical_track.py, option
`track.cut_weight`): a minimum cut of a two-label Markov random field, solved exactly with
scipy's maximum flow (Dinic). numpy + scipy (imported when the cut is used).

Usage:
    out = band_cut(prob, inband, fixed, feat, weight=3.0)   # (h, w) bool

Energy: over the band's pixels, -log P(their label) from the tracker's object probability
`prob`; for each pair of 4-neighbours with different labels, weight x exp(-beta |f_p - f_q|^2)
with beta = 1 / (2 mean |f_p - f_q|^2) over the region (GrabCut's contrast term): a label
change is cheap across an image edge and dear inside a uniform region, so the boundary
follows the edges and no isolated speckles survive. Pixels outside the band keep their label
`fixed` and pull their band neighbours towards it.

Measured with bench-vos (services/sam/README.md): mask J&F 0.629 -> 0.660 with cut_weight 3
and sigma 4, at about half the speed; so it is off by default.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-3
SCALE = 64.0  # capacities are integers: energy units x SCALE, rounded


def pair_weights(feat: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Contrast-sensitive weights of the horizontal (h, w-1) and vertical (h-1, w) pairs of
    features (h, w, c) or (h, w)."""
    f = feat.astype(np.float32)
    if f.ndim == 2:
        f = f[..., None]
    dr = ((f[:, 1:] - f[:, :-1]) ** 2).sum(-1)
    dd = ((f[1:] - f[:-1]) ** 2).sum(-1)
    mean = 0.5 * (float(dr.mean()) if dr.size else 0.0) + 0.5 * (float(dd.mean()) if dd.size else 0.0)  # fmt: skip
    beta = 1.0 / (2.0 * max(mean, 1e-6))
    return weight * np.exp(-beta * dr), weight * np.exp(-beta * dd)


def band_cut(
    prob: np.ndarray,  # (h, w) float: P(object) per pixel
    inband: np.ndarray,  # (h, w) bool: the pixels to decide
    fixed: np.ndarray,  # (h, w) bool: the labels of the other pixels
    feat: np.ndarray,  # (h, w, c) or (h, w): the image features the contrast is taken on
    weight: float,
) -> np.ndarray:
    """(h, w) bool: the band's labels of least energy (see the module docstring); outside the
    band, `fixed`. weight <= 0: prob thresholded at 0.5."""
    if weight <= 0:  # the default: no work beyond the threshold
        return np.where(inband, prob > 0.5, fixed)
    ys, xs = np.nonzero(inband)
    n = len(ys)
    if n == 0:
        return fixed.copy()
    try:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import breadth_first_order, maximum_flow
    except ImportError as e:  # pragma: no cover - scipy is in services/sam/requirements.txt
        raise ImportError("track.cut_weight > 0 needs scipy: pip install scipy "
                          "(or set cut_weight: 0)") from e  # fmt: skip
    p = np.clip(prob[ys, xs].astype(np.float64), EPS, 1 - EPS)
    cost_bg, cost_fg = -np.log1p(-p), -np.log(p)  # paid when labelled background / object
    idx = np.full(prob.shape, -1, np.int64)
    idx[ys, xs] = np.arange(n)
    wr, wd = pair_weights(feat, weight)
    rows, cols, caps = [], [], []
    for wgt, ia, ib, fa, fb in (
        (wr, idx[:, :-1], idx[:, 1:], fixed[:, :-1], fixed[:, 1:]),
        (wd, idx[:-1], idx[1:], fixed[:-1], fixed[1:]),
    ):
        both = (ia >= 0) & (ib >= 0)  # band-band pairs: edges both ways
        rows += [ia[both], ib[both]]
        cols += [ib[both], ia[both]]
        caps += [wgt[both], wgt[both]]
        for mine, other, f_other in ((ia, ib, fb), (ib, ia, fa)):
            # band pixel next to a fixed one: disagreeing with it costs the pair's weight
            sel = (mine >= 0) & (other < 0)
            np.add.at(cost_bg, mine[sel & f_other], wgt[sel & f_other])
            np.add.at(cost_fg, mine[sel & ~f_other], wgt[sel & ~f_other])
    m = np.minimum(cost_bg, cost_fg)  # paid whatever the label: leaves the cut unchanged
    s, t = n, n + 1  # source side = object
    node = np.arange(n)
    rows += [np.full(n, s), node]
    cols += [node, np.full(n, t)]
    caps += [cost_bg - m, cost_fg - m]
    cap = np.round(np.concatenate(caps) * SCALE).astype(np.int32)
    keep = cap > 0
    g = csr_matrix(
        (cap[keep], (np.concatenate(rows)[keep], np.concatenate(cols)[keep])), shape=(n + 2, n + 2)
    )
    g.sum_duplicates()
    flow = maximum_flow(g, s, t, method="dinic").flow
    resid = g - flow
    resid.data = (resid.data > 0).astype(np.int8)
    resid.eliminate_zeros()
    obj = np.zeros(n + 2, bool)  # what the source still reaches: the object side of the cut
    obj[breadth_first_order(resid, s, directed=True, return_predecessors=False)] = True
    out = fixed.copy()
    out[ys, xs] = obj[:n]
    return out
