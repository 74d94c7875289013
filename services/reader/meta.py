"""Parse zarr format 2 and format 3 metadata (groups, arrays) straight from a store.

Usage: ``spec = read_array(store, "data/rgbm"); spec.chunk_key((3, 0, 0, 0))``

zarr 2.x / diffusion_policy write ``.zgroup``, ``.zarray``, ``.zattrs`` (format 2); zarr
3.x may write ``zarr.json`` (format 3). An array whose codec is not installed still gets a
spec (``decoder`` None, ``codec_error`` set) so that ``open`` can describe it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.reader.codecs import (
    ChunkDecoder,
    NeedsZarr,
    codec_ids_v3,
    decoder_v2,
    decoder_v3,
    describe_codec,
)
from services.reader.errors import CodecUnavailable, InvalidBuffer, ReaderError
from services.reader.store import Store


@dataclass
class ArraySpec:
    """One zarr array: geometry, dtype, codecs and how to find and decode its chunks."""

    path: str  # store key of the array, e.g. "data/rgbm"
    zarr_format: int
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    codec: str  # human-readable codec chain, e.g. "blosc(cname=lz4, clevel=5, shuffle=0)"
    codec_ids: list[str]
    fill_value: Any
    attrs: dict[str, Any] = field(default_factory=dict)
    decoder: ChunkDecoder | None = None  # None: codec unavailable, or read through zarr
    codec_error: str | None = None  # why the codec cannot be decoded here
    needs_zarr: bool = False  # e.g. sharded v3 arrays: read by zarr's own slicing
    separator: str = "."
    v3_prefix: bool = False  # v3 "default" chunk key encoding: "c/0/0"

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def native_dtype(self) -> np.dtype:
        """The dtype of decoded frames (native byte order)."""
        return self.dtype.newbyteorder("=")

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def frame_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def is_lowdim(self, max_frame_bytes: int) -> bool:
        """(T,) and (T, D) arrays, or ones with frames of at most ``max_frame_bytes``."""
        return len(self.shape) <= 2 or self.frame_bytes <= max_frame_bytes

    def grid(self) -> tuple[int, ...]:
        """Number of chunks along each axis."""
        return tuple(-(-s // c) for s, c in zip(self.shape, self.chunks, strict=True))

    def chunk_key(self, coords: tuple[int, ...]) -> str:
        """Store key of the chunk at grid coordinates ``coords``."""
        parts = [str(c) for c in coords]
        if self.v3_prefix:
            return self.path + "/" + self.separator.join(["c", *parts])
        return self.path + "/" + (self.separator.join(parts) if parts else "0")

    def fill_chunk(self) -> np.ndarray:
        """A chunk of fill value, for a chunk that was never written."""
        return np.full(self.chunks, self.fill_value, dtype=self.native_dtype)  # (*chunks)

    def describe(self) -> dict[str, Any]:
        """msgpack-safe description for the ``open`` reply."""
        out: dict[str, Any] = {
            "shape": list(self.shape),
            "dtype": self.dtype.str,
            "chunks": list(self.chunks),
            "codec": self.codec,
            "codec_ids": list(self.codec_ids),
            "zarr_format": self.zarr_format,
            "attrs": self.attrs,
            "available": self.codec_error is None,
        }
        if self.codec_error:
            out["error"] = self.codec_error
        return out


def read_json(store: Store, key: str) -> dict[str, Any] | None:
    raw = store.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as e:
        raise InvalidBuffer(
            f"{store.path}/{key} is not valid JSON ({e}); the store is damaged"
        ) from None


def node_kind(store: Store, path: str) -> tuple[str, int] | None:
    """('group'|'array', zarr_format) for the node at ``path``, None if there is none."""
    prefix = path + "/" if path else ""
    if store.get(prefix + ".zarray") is not None:
        return "array", 2
    if store.get(prefix + ".zgroup") is not None:
        return "group", 2
    doc = read_json(store, prefix + "zarr.json")
    if doc is not None:
        return str(doc.get("node_type", "group")), 3
    return None


def group_attrs(store: Store, path: str, zarr_format: int) -> dict[str, Any]:
    prefix = path + "/" if path else ""
    if zarr_format == 2:
        return read_json(store, prefix + ".zattrs") or {}
    return (read_json(store, prefix + "zarr.json") or {}).get("attributes") or {}


def list_arrays(store: Store, group: str) -> list[str]:
    """Names of the arrays directly under ``group`` (either format)."""
    names = []
    for name in store.list_dir(group):
        kind = node_kind(store, f"{group}/{name}")
        if kind is not None and kind[0] == "array":
            names.append(name)
    return names


def read_array(store: Store, path: str) -> ArraySpec:
    """Parse the array at ``path``; raises ReaderError for metadata we cannot use."""
    doc = read_json(store, path + "/.zarray")
    if doc is not None:
        return _array_v2(store, path, doc)
    doc = read_json(store, path + "/zarr.json")
    if doc is not None and doc.get("node_type") == "array":
        return _array_v3(path, doc)
    raise InvalidBuffer(f"{path!r} is not a zarr array (no .zarray or zarr.json)")


def _check_geometry(spec: ArraySpec) -> ArraySpec:
    if len(spec.chunks) != len(spec.shape) or any(c < 1 for c in spec.chunks):
        raise InvalidBuffer(
            f"{spec.path!r}: chunks {list(spec.chunks)} do not fit shape {list(spec.shape)}; "
            "every chunk size must be >= 1, one per dimension"
        )
    return spec


def _array_v2(store: Store, path: str, doc: dict[str, Any]) -> ArraySpec:
    dtype = _dtype_v2(path, doc.get("dtype"))
    spec = ArraySpec(
        path=path,
        zarr_format=2,
        shape=tuple(int(s) for s in doc["shape"]),
        dtype=dtype,
        chunks=tuple(int(c) for c in doc["chunks"]),
        codec=" | ".join(
            [describe_codec(doc.get("compressor"))]
            + [describe_codec(f) for f in doc.get("filters") or []]
        ),
        codec_ids=[c["id"] for c in [doc.get("compressor")] + (doc.get("filters") or []) if c],
        fill_value=_fill(doc.get("fill_value"), dtype),
        attrs=read_json(store, path + "/.zattrs") or {},
        separator=doc.get("dimension_separator") or ".",
    )
    _check_geometry(spec)
    try:
        spec.decoder = decoder_v2(doc, dtype)
    except CodecUnavailable as e:
        spec.codec_error = str(e)
    return spec


def _array_v3(path: str, doc: dict[str, Any]) -> ArraySpec:
    dtype = _dtype_v3(path, doc.get("data_type"))
    grid = doc.get("chunk_grid") or {}
    if grid.get("name") != "regular":
        raise InvalidBuffer(f"{path!r}: chunk grid {grid.get('name')!r} is not supported")
    encoding = doc.get("chunk_key_encoding") or {"name": "default"}
    enc_cfg = encoding.get("configuration") or {}
    default = encoding.get("name") == "default"
    codecs = doc.get("codecs") or []
    spec = ArraySpec(
        path=path,
        zarr_format=3,
        shape=tuple(int(s) for s in doc["shape"]),
        dtype=dtype,
        chunks=tuple(int(c) for c in grid["configuration"]["chunk_shape"]),
        codec=" | ".join(describe_codec(c) for c in codecs if isinstance(c, dict)),
        codec_ids=codec_ids_v3(codecs),
        fill_value=_fill(doc.get("fill_value"), dtype),
        attrs=doc.get("attributes") or {},
        separator=enc_cfg.get("separator", "/" if default else "."),
        v3_prefix=default,
    )
    _check_geometry(spec)
    try:
        spec.decoder = decoder_v3(codecs, dtype, spec.chunks)
    except CodecUnavailable as e:
        spec.codec_error = str(e)
    except NeedsZarr:
        spec.needs_zarr = True
    return spec


def _dtype_v2(path: str, value: Any) -> np.dtype:
    try:
        dtype = np.dtype(value if isinstance(value, str) else [tuple(f) for f in value])
    except (TypeError, ValueError) as e:
        raise InvalidBuffer(f"{path!r}: dtype {value!r} is not understood ({e})") from None
    if dtype.hasobject:
        raise ReaderError(
            f"{path!r}: object dtype arrays are not supported (their codecs unpickle); "
            "store numeric arrays"
        )
    return dtype


def _dtype_v3(path: str, value: Any) -> np.dtype:
    if not isinstance(value, str):
        raise InvalidBuffer(f"{path!r}: data_type {value!r} is not supported; use a numeric type")
    try:
        return np.dtype(value)
    except TypeError:
        raise InvalidBuffer(f"{path!r}: data_type {value!r} is not supported") from None


def _fill(value: Any, dtype: np.dtype) -> Any:
    """zarr fill_value encodings (null, numbers, 'NaN', 'Infinity', hex) -> a scalar."""
    if value is None:
        return 0
    if isinstance(value, str):
        special = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
        if value in special:
            return special[value]
        if value.startswith("0x"):
            return np.frombuffer(bytes.fromhex(value[2:]), dtype=dtype)[0]
        return 0
    if isinstance(value, list):  # complex numbers
        return complex(*value) if len(value) == 2 else 0
    return value
