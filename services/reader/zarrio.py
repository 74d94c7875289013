"""zarr's own store, metadata and codec pipeline as the reader's chunk decoder.

Usage::

    z = ZarrArrays(buf.path, zip_prefix="")          # one per opened buffer
    z.read_into(spec, first=0, dst=block)            # block: (n, *frame_shape), C-contiguous

Two users: the reader option ``decode: zarr`` (every block of every array is filled by one
zarr read, feeding the same block cache and prefetch as the native decoders), and the arrays
the native decoders do not handle (sharded zarr v3 arrays), whatever the option says.
bench/bench_reader.py measures both paths on the same buffers in one run.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from services.reader.meta import ArraySpec


class ZarrArrays:
    """Lazily opened ``zarr.Array`` objects of one buffer, shared by the decode threads."""

    def __init__(self, path: str, zip_prefix: str | None = None) -> None:
        self.path = path
        self.zip_prefix = zip_prefix  # None: a directory store; else the zip's folder prefix
        self._lock = threading.Lock()
        self._arrays: dict[str, Any] = {}
        self._store: Any = None

    def array(self, spec: ArraySpec) -> Any:
        with self._lock:
            arr = self._arrays.get(spec.path)
            if arr is None:
                import zarr

                if self._store is None:
                    if self.zip_prefix is None:
                        self._store = zarr.storage.LocalStore(self.path, read_only=True)
                    else:
                        self._store = zarr.storage.ZipStore(self.path, mode="r")
                arr = zarr.open_array(
                    self._store, path=(self.zip_prefix or "") + spec.path, mode="r"
                )
                self._arrays[spec.path] = arr
        return arr

    def read_into(self, spec: ArraySpec, first: int, dst: np.ndarray) -> None:
        """Frames [first, first + len(dst)) of ``spec`` into ``dst`` with one zarr read."""
        arr = self.array(spec)
        sel = slice(first, first + len(dst))
        if dst.flags.c_contiguous and arr.dtype == dst.dtype:
            from zarr.core.buffer.cpu import NDBuffer

            arr.get_basic_selection(sel, out=NDBuffer.from_numpy_array(dst))  # no extra copy
        else:  # e.g. big-endian data into the native-order block
            dst[...] = arr[sel]

    def close(self) -> None:
        with self._lock:
            store, self._store, self._arrays = self._store, None, {}
        if store is not None and hasattr(store, "close"):
            store.close()
