"""Minimum s-t cuts for the classical tracker's band (classical_cut.py): Boykov and
Kolmogorov's algorithm in C (maxflow.c, beside this file), or scipy's Dinic. Both return the
same cut: the nodes the source reaches in the residual graph of a maximum flow (the smallest
minimum cut's source side, the same set for every maximum flow).

Usage:
    side = mincut(tails, heads, caps, rcaps, terminal, solver="auto")  # (n,) bool
    name = resolve("auto")       # "bk" when maxflow.c builds here, else "scipy" (a warning)
    path = build()               # the shared library, compiled on first use, then cached

maxflow.c is plain C99 and needs no Python headers: it is compiled once per source version
with the system C compiler ($CC, else cc) into the cache folder ($MASKMESH_CACHE, else
$XDG_CACHE_HOME/maskmesh, else ~/.cache/maskmesh) and loaded with ctypes, like
torch.utils.cpp_extension's load(). Without a compiler, "auto" falls back to scipy's Dinic
(the same cuts, about 2x slower per cut on bench-vos's graphs), "bk" refuses with the fix.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("maxflow.c")
CFLAGS = ("-O2", "-std=c99", "-shared", "-fPIC")
SOLVERS = ("auto", "bk", "scipy")
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None  # why the C solver is not available (None: not tried yet / ok)
_warned = False  # the fallback to scipy has been logged


def cache_dir() -> Path:
    if os.environ.get("MASKMESH_CACHE"):
        return Path(os.environ["MASKMESH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "maskmesh"


def build() -> Path:
    """Compile maxflow.c into the cache folder unless this source version is there already;
    returns the library's path. Raises RuntimeError naming the compiler's complaint."""
    src = SOURCE.read_bytes()
    cc = os.environ.get("CC", "cc")
    tag = hashlib.sha256(src + " ".join((cc, *CFLAGS)).encode()).hexdigest()[:16]
    out = cache_dir() / f"maxflow-{tag}.so"
    if out.exists():
        return out
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler: {cc!r} not found (install gcc, or set CC)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)  # then renamed: atomic for
    os.close(fd)  # services that start together
    try:
        res = subprocess.run(
            [cc, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=120
        )
        if res.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE.name}: {res.stderr.strip()[-500:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _load() -> ctypes.CDLL | None:
    """The C solver, built and loaded once per process; None (and _error) when it cannot be."""
    global _lib, _error
    if _lib is not None:  # every cut asks: no lock once it is loaded
        return _lib
    with _lock:
        if _lib is not None or _error is not None:
            return _lib
        try:
            lib = ctypes.CDLL(str(build()))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _error = str(e)
            return None
        p = ctypes.c_void_p
        lib.mm_mincut.argtypes = [ctypes.c_int32, ctypes.c_int64, p, p, p, p, p, p]
        lib.mm_mincut.restype = ctypes.c_int64
        _lib = lib
        return lib


def resolve(solver: str) -> str:
    """The solver `solver` stands for here: "bk" or "scipy". "auto" is "bk" when maxflow.c
    builds (else "scipy", with a warning once); "bk" that cannot build raises RuntimeError."""
    if solver not in SOLVERS:
        raise ValueError(f"solver: {solver!r} is not one of {list(SOLVERS)}")
    if solver == "scipy":
        return "scipy"
    if _load() is not None:
        return "bk"
    if solver == "bk":
        raise RuntimeError(
            f"track.solver 'bk': the C max-flow (maxflow.c) is not available: {_error}; "
            "install a C compiler (apt install gcc), or set track: {solver: scipy}"
        )
    global _warned
    if not _warned:
        _warned = True
        log.warning("C max-flow not available (%s): scipy's Dinic cuts instead (same cuts, "
                    "about 2x slower per cut)", _error)  # fmt: skip
    return "scipy"


def mincut(
    tails: np.ndarray,  # (m,) int: node ids 0..n-1 of each pair
    heads: np.ndarray,  # (m,) int
    caps: np.ndarray,  # (m,) int32 >= 0: capacity tail -> head
    rcaps: np.ndarray,  # (m,) int32 >= 0: capacity head -> tail
    terminal: np.ndarray,  # (n,) int64: > 0 capacity from the source, < 0 to the sink
    solver: str = "auto",
) -> np.ndarray:
    """(n,) bool: the source side of the smallest minimum cut (module docstring)."""
    n = len(terminal)
    if resolve(solver) == "bk":
        t = np.ascontiguousarray(tails, np.int32)
        h = np.ascontiguousarray(heads, np.int32)
        c = np.ascontiguousarray(caps, np.int32)
        r = np.ascontiguousarray(rcaps, np.int32)
        tr = np.ascontiguousarray(terminal, np.int64)
        side = np.zeros(n, np.uint8)
        ptr = [a.ctypes.data for a in (t, h, c, r, tr, side)]
        if _lib.mm_mincut(n, len(t), *ptr) < 0:
            raise MemoryError(f"maxflow.c: out of memory for a graph of {n} nodes")
        return side.view(bool)  # 0 / 1 bytes
    return _scipy_mincut(tails, heads, caps, rcaps, terminal)


def _scipy_mincut(tails, heads, caps, rcaps, terminal) -> np.ndarray:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    n = len(terminal)
    s, t = n, n + 1
    node = np.arange(n)
    rows = np.concatenate([tails, heads, np.full(n, s), node])
    cols = np.concatenate([heads, tails, node, np.full(n, t)])
    cap = np.concatenate([caps, rcaps, np.maximum(terminal, 0), np.maximum(-terminal, 0)])
    cap = cap.astype(np.int32)
    keep = cap > 0
    g = csr_matrix((cap[keep], (rows[keep], cols[keep])), shape=(n + 2, n + 2))
    g.sum_duplicates()
    flow = maximum_flow(g, s, t, method="dinic").flow
    resid = g - flow
    resid.data = (resid.data > 0).astype(np.int8)
    resid.eliminate_zeros()
    side = np.zeros(n + 2, bool)  # what the source still reaches: the object side of the cut
    side[breadth_first_order(resid, s, directed=True, return_predecessors=False)] = True
    return side[:n]
