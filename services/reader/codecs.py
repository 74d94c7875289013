"""Chunk decoders built from zarr v2 / v3 codec metadata, on top of the numcodecs registry.

Usage: ``dec = decoder_v2(zarray_json, chunk_shape, dtype); block = dec.decode(raw_bytes)``

Decoding a chunk ourselves (instead of zarr's array slicing) lets the reader cache decoded
chunks, decode in a thread pool (Blosc, Zstd and the imagecodecs codecs release the GIL)
and prefetch. The imagecodecs numcodecs codecs (``imagecodecs_jpegxl``,
``imagecodecs_jpeg2k``, ...) that diffusion_policy / UMI register are registered here on
import when imagecodecs is installed. A codec id that nothing provides raises
``CodecUnavailable`` naming the id and the package to install.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numcodecs
import numpy as np
from numcodecs.compat import ensure_ndarray_like

from services.reader.errors import CodecUnavailable

log = logging.getLogger(__name__)

try:  # registers imagecodecs_jpegxl, imagecodecs_jpeg2k, ... with numcodecs
    from imagecodecs.numcodecs import register_codecs as _register_imagecodecs

    _register_imagecodecs(verbose=False)
    IMAGECODECS = True
except ImportError:  # pragma: no cover - depends on the environment
    IMAGECODECS = False

# Codec ids whose providing package is not obvious from the id (the rest: see package_for).
_PACKAGES = {
    "zfpy": "zfpy",
    "pcodec": "pcodec",
    "blosc2": "numcodecs (a version with blosc2) or hdf5plugin",
    "jpeg": "imagecodecs (id 'imagecodecs_jpeg')",
}
REFUSED = {"pickle"}  # executes code on decode; never read from untrusted data
# zarr v3 codec names that map to a numcodecs codec with the same decoder.
_V3_BYTES_CODECS = {
    "blosc": lambda cfg: numcodecs.Blosc(),  # Blosc headers carry cname/shuffle/typesize
    "zstd": lambda cfg: numcodecs.Zstd(),
    "gzip": lambda cfg: numcodecs.GZip(),
    "crc32c": lambda cfg: numcodecs.get_codec({"id": "crc32c"}),
}


_OUT_CODECS = (numcodecs.Blosc, numcodecs.Zstd, numcodecs.LZ4)  # decode(buf, out=ndarray) works


class NeedsZarr(Exception):
    """A layout this decoder does not handle (e.g. sharding): read through zarr instead."""


def package_for(codec_id: str) -> str:
    """The pip package that provides a numcodecs codec id (best knowledge)."""
    if codec_id.startswith("imagecodecs_"):
        return "imagecodecs"
    if codec_id.startswith("numcodecs."):
        return "numcodecs"
    return _PACKAGES.get(codec_id, "numcodecs or the package that registers this codec id")


def get_codec(config: dict[str, Any]) -> numcodecs.abc.Codec:
    """numcodecs.get_codec with errors that name the codec id and its package."""
    codec_id = str(config.get("id"))
    if codec_id in REFUSED:
        raise CodecUnavailable(
            f"codec {codec_id!r} is refused: it runs arbitrary code when decoding; "
            "re-save the array with a numeric dtype and a plain compressor"
        )
    try:
        return numcodecs.get_codec(dict(config))
    except (ValueError, KeyError) as e:
        pkg = package_for(codec_id)
        raise CodecUnavailable(
            f"codec {codec_id!r} is not installed: install package {pkg!r} in the reader's "
            f"environment (pip install {pkg.split()[0]}) ({e})"
        ) from None
    except TypeError as e:  # registered, but the stored config does not fit this version
        raise CodecUnavailable(
            f"codec {codec_id!r} is installed but rejects the stored configuration {config}: "
            f"{e}; install the {package_for(codec_id)!r} version that wrote the data"
        ) from None


def describe_codec(config: dict[str, Any] | None) -> str:
    """Short text such as 'blosc(cname=lz4, clevel=5, shuffle=0)' or 'none'."""
    if not config:
        return "none"
    name = config.get("id") or config.get("name")
    params = config.get("configuration", config)
    args = ", ".join(
        f"{k}={v}" for k, v in params.items() if k not in ("id", "name") and v is not None
    )
    return f"{name}({args})"


class ChunkDecoder:
    """Decode the stored bytes of one chunk into an array of the chunk's shape."""

    def __init__(
        self,
        steps: Sequence[numcodecs.abc.Codec],
        dtype: np.dtype,
        chunk_shape: tuple[int, ...],
        order: str = "C",
        transposes: Sequence[tuple[int, ...]] = (),
    ) -> None:
        self.steps = list(steps)  # in decode order
        self.dtype = dtype
        self.chunk_shape = chunk_shape
        self.order = order
        self.transposes = list(transposes)  # v3 transpose orders, in encode order
        shape = chunk_shape
        for perm in self.transposes:
            shape = tuple(shape[i] for i in perm)
        self.stored_shape = shape
        self.nbytes = int(np.prod(chunk_shape, dtype=np.int64)) * dtype.itemsize
        # Codecs that can write straight into a slice of the block (no intermediate copy).
        self.direct = (
            len(self.steps) == 1
            and isinstance(self.steps[0], _OUT_CODECS)
            and order == "C"
            and not self.transposes
            and dtype.isnative
        )

    def decode_into(self, raw: bytes, dst: np.ndarray) -> None:
        """Decode into ``dst`` (rows x frame dims, possibly fewer than the chunk's)."""
        if self.direct and dst.nbytes == self.nbytes and dst.flags.c_contiguous:
            self.steps[0].decode(raw, out=dst)
            return
        arr = self.decode(raw)
        dst[...] = arr[tuple(slice(0, n) for n in dst.shape)]

    def decode(self, raw: bytes) -> np.ndarray:
        buf: Any = raw
        for codec in self.steps:
            buf = codec.decode(buf)
        arr = ensure_ndarray_like(buf)
        if arr.nbytes != self.nbytes:
            raise ValueError(
                f"decoded chunk has {arr.nbytes} bytes, expected {self.nbytes} for chunk shape "
                f"{self.chunk_shape} {self.dtype}; the array metadata does not match its chunks"
            )
        if arr.dtype != self.dtype:
            arr = np.ascontiguousarray(arr).reshape(-1).view(self.dtype)
        arr = arr.reshape(self.stored_shape, order=self.order)  # (*chunk_shape) dtype
        for perm in reversed(self.transposes):
            arr = arr.transpose(np.argsort(perm))
        if not arr.dtype.isnative:  # big-endian data: native order once, at decode
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr


def decoder_v2(meta: dict[str, Any], dtype: np.dtype) -> ChunkDecoder:
    """From a ``.zarray`` document: compressor, then filters in reverse."""
    steps = []
    if meta.get("compressor"):
        steps.append(get_codec(meta["compressor"]))
    for flt in reversed(meta.get("filters") or []):
        steps.append(get_codec(flt))
    return ChunkDecoder(steps, dtype, tuple(meta["chunks"]), meta.get("order", "C"))


def decoder_v3(codecs: list[dict[str, Any]], dtype: np.dtype, chunk_shape: tuple) -> ChunkDecoder:
    """From a v3 ``codecs`` list: array->array*, array->bytes, bytes->bytes* (decode reversed)."""
    transposes: list[tuple[int, ...]] = []
    array_codec = None
    seen_array_to_bytes = False
    bytes_codecs = []
    for spec in codecs:
        name, cfg = _v3_name_config(spec)
        if name == "transpose":
            transposes.append(tuple(cfg["order"]))
        elif name == "bytes":
            seen_array_to_bytes = True
            endian = cfg.get("endian", "little")
            dtype = dtype.newbyteorder("<" if endian == "little" else ">")
        elif name == "sharding_indexed":
            raise NeedsZarr("sharding_indexed")
        elif name in _V3_BYTES_CODECS:
            bytes_codecs.append(_V3_BYTES_CODECS[name](cfg))
        else:
            codec_id = name.removeprefix("numcodecs.")
            codec = get_codec({"id": codec_id, **cfg})
            if not seen_array_to_bytes and not bytes_codecs:
                array_codec = codec  # e.g. imagecodecs_jpegxl in place of the 'bytes' codec
                seen_array_to_bytes = True
            else:
                bytes_codecs.append(codec)
    steps = list(reversed(bytes_codecs)) + ([array_codec] if array_codec else [])
    return ChunkDecoder(steps, dtype, chunk_shape, "C", transposes)


def _v3_name_config(spec: dict[str, Any] | str) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    return str(spec["name"]), dict(spec.get("configuration") or {})


def codec_ids_v3(codecs: list[dict[str, Any]]) -> list[str]:
    return [_v3_name_config(c)[0] for c in codecs]
