"""Benchmark: stream frames through the reader service vs reading them with zarr directly.

Usage: python bench/bench_reader.py [--frames 600] [--jxl-frames 300] [--rounds 5]
       (make bench-reader)

Writes two buffers under --workdir (a temporary folder by default, removed at the end):
  blosc: data/rgbm (T,480,640,4) uint8, Blosc(lz4, clevel=5, NOSHUFFLE), chunks (2,480,640,4)
  jpegxl: data/camera0_rgb (T,480,640,3) uint8, imagecodecs_jpegxl (lossy), chunks (1,480,640,3)
then, with the page cache warm and one untimed pass of each, alternates per round:
  direct:  zarr.open_array(...)[s:s+n] in this process, n = the frames of one service reply
           (the reference); chunk-aligned slices (n = chunk length) are reported too
  service: `python -m services.reader` as a separate process, this process a client over
           tcp loopback, every episode streamed with pipelined `frames` requests
  zarr_decode: the same service with the option decode=zarr: zarr's store, metadata and
           codec pipeline fill the same cached blocks (same cache, prefetch, threads)
The services' block caches are dropped (`close`) before each round. fps figures are the best
round of each; ratio_median compares the medians; zarr_decode_vs_native compares the two
decode paths (>= 0.9 would let the reader drop its own store/metadata/codec layer).
CPU ms/frame (service + client processes vs the direct reader) is printed too: on a busy
machine it is steadier than frames/s. The last line printed is one JSON object with
service_fps, direct_fps, ratio, zarr_decode_* and the same figures prefixed jpegxl_ for the
JpegXl buffer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protocol.client import Client  # noqa: E402
from protocol.spawn import ServiceProcess, service_args, start  # noqa: E402
from services.reader.client import stream_frames  # noqa: E402
from services.reader.synth import DP_BLOSC, Key, jpegxl, write_buffer  # noqa: E402

READY_TIMEOUT_S = 60.0  # how long the service may take to print READY


def start_service(options: dict, log_path: Path) -> ServiceProcess:
    args = service_args("reader", bind="tcp://127.0.0.1:0", backend="zarr", options=options,
                        extra_args=["--log-level", "WARNING"])  # fmt: skip
    return start(args, name="reader", log_path=log_path, ready_timeout=READY_TIMEOUT_S,
                 setting="bench/bench_reader.py READY_TIMEOUT_S")  # fmt: skip


def warm(path: str) -> None:
    """Read every file once so both contenders start from a warm page cache."""
    for dirpath, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process, or of process ``pid`` (Linux /proc)."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def direct_fps(path: str, key: str, ends: np.ndarray, batch: int) -> tuple[float, float]:
    """(frames/s, CPU ms/frame) reading every episode with zarr in slices of ``batch``."""
    arr = zarr.open_array(os.path.join(path, "data", key), mode="r")
    n = 0
    c0, t0 = cpu_seconds(), time.perf_counter()
    s = 0
    for e in ends:
        for i in range(s, int(e), batch):
            n += len(arr[i : min(i + batch, int(e))])  # (n, H, W, C) uint8
        s = int(e)
    return n / (time.perf_counter() - t0), (cpu_seconds() - c0) / n * 1e3


def service_fps(client: Client, pid: int, path: str, key: str, depth: int) -> tuple:
    """(frames/s, CPU ms/frame of service + client, frames per reply) streaming every episode."""
    client.call("close", {"dataset": path})  # drop the block cache between rounds
    info = client.call("open", {"path": path})
    n = 0
    batch = 0
    c0, s0, t0 = cpu_seconds(), cpu_seconds(pid), time.perf_counter()
    for ep in range(info["n_episodes"]):
        for _, frames in stream_frames(client, info["dataset"], ep, key, depth=depth):
            n += len(frames)
            batch = max(batch, len(frames))
    fps = n / (time.perf_counter() - t0)
    return fps, (cpu_seconds() - c0 + cpu_seconds(pid) - s0) / n * 1e3, batch


def verify(client: Client, path: str, key: str) -> None:
    """The frames the service sends equal zarr's, byte for byte (outside the timed runs)."""
    arr = zarr.open_array(os.path.join(path, "data", key), mode="r")
    out = client.call("frames", {"dataset": path, "episode": 0, "key": key, "start": 3})
    if not np.array_equal(out["frames"], arr[3 : 3 + len(out["frames"])]):
        raise SystemExit(f"service frames of {key} differ from zarr's")


def compare(services: dict[str, tuple[Client, int]], path: str, key: str, ends, chunk: int,
            args) -> dict:  # fmt: skip
    """Alternating rounds of every service (native, zarr decode) and direct zarr reads."""
    warm(path)
    for client, pid in services.values():
        verify(client, path, key)
        service_fps(client, pid, path, key, args.depth)  # warm-up pass, not counted
    direct_fps(path, key, ends, chunk)
    runs: dict[str, list] = {k: [] for k in [*services, "direct", "direct_chunk"]}
    batch = chunk
    for r in range(args.rounds):
        got = {}
        for name, (client, pid) in services.items():
            fps, cpu, batch = service_fps(client, pid, path, key, args.depth)
            got[name] = (fps, cpu)
        got.update(
            direct=direct_fps(path, key, ends, batch),
            direct_chunk=direct_fps(path, key, ends, chunk),
        )
        for k, v in got.items():
            runs[k].append(v)
        print(f"  round {r}: " + ", ".join(f"{k} {v[0]:.0f} fps {v[1]:.2f} CPU ms/frame"
                                           for k, v in got.items()) + f" ({batch} frames/reply)",
              flush=True)  # fmt: skip
    best = {k: max(v) for k, v in runs.items()}
    med = {k: float(np.median([x[0] for x in v])) for k, v in runs.items()}
    cpu = {k: float(np.median([x[1] for x in v])) for k, v in runs.items()}
    return {
        "service_fps": round(best["service"][0], 1),
        "direct_fps": round(best["direct"][0], 1),  # zarr, same frames per call as a reply
        "ratio": round(best["service"][0] / best["direct"][0], 3),
        "ratio_median": round(med["service"] / med["direct"], 3),
        "direct_chunk_fps": round(best["direct_chunk"][0], 1),  # zarr, one chunk per call
        "ratio_vs_chunk": round(best["service"][0] / best["direct_chunk"][0], 3),
        "service_cpu_ms_per_frame": round(cpu["service"], 3),
        "direct_cpu_ms_per_frame": round(cpu["direct"], 3),
        # the same service with decode=zarr (zarr's codec pipeline fills the cached blocks)
        "zarr_decode_fps": round(best["zarr_decode"][0], 1),
        "zarr_decode_vs_native": round(best["zarr_decode"][0] / best["service"][0], 3),
        "zarr_decode_vs_native_median": round(med["zarr_decode"] / med["service"], 3),
        "zarr_decode_cpu_ms_per_frame": round(cpu["zarr_decode"], 3),
        "zarr_decode_cpu_vs_native": round(cpu["zarr_decode"] / cpu["service"], 3),
        "batch": batch,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=600, help="frames of the Blosc buffer (>= 600)")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--jxl-frames", type=int, default=300, help="frames of the JpegXl buffer")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds; the best counts")
    p.add_argument("--depth", type=int, default=3, help="frames requests in flight")
    p.add_argument("--max-chunk-bytes", type=int, default=8 << 20)
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1),
                   help="service decode threads")  # fmt: skip
    p.add_argument("--workdir", help="where to write the buffers (default: a temp folder)")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-reader-"))
    work.mkdir(parents=True, exist_ok=True)
    lengths = [args.frames // args.episodes] * args.episodes
    lengths[-1] += args.frames - sum(lengths)
    jxl_lengths = [args.jxl_frames // 2, args.jxl_frames - args.jxl_frames // 2]
    h, w = 480, 640
    t0 = time.perf_counter()
    blosc = write_buffer(work / "blosc.zarr", lengths,
                         {"rgbm": Key((h, w, 4), chunks=(2, h, w, 4), compressor=DP_BLOSC)})  # fmt: skip
    jxl = write_buffer(work / "jpegxl.zarr", jxl_lengths,
                       {"camera0_rgb": Key((h, w, 3), chunks=(1, h, w, 3),
                                           compressor=jpegxl(lossless=False))})  # fmt: skip
    print(f"wrote buffers in {time.perf_counter() - t0:.1f}s under {work}", flush=True)
    options = {"max_chunk_bytes": args.max_chunk_bytes, "threads": args.threads,
               "cache_bytes": 8 * args.max_chunk_bytes}  # fmt: skip
    procs = {"service": start_service({**options, "decode": "native"}, work / "reader.log"),
             "zarr_decode": start_service({**options, "decode": "zarr"}, work / "reader-zarr.log")}  # fmt: skip
    services = {k: (Client(p.endpoint, timeout=120.0, retries=0), p.pid) for k, p in procs.items()}
    try:
        print(f"blosc lz4 (2,{h},{w},4) chunks, {args.frames} frames:", flush=True)
        res = compare(services, os.path.realpath(blosc), "rgbm", np.cumsum(lengths), 2, args)
        print(f"jpegxl (1,{h},{w},3) chunks, {args.jxl_frames} frames:", flush=True)
        jres = compare(services, os.path.realpath(jxl), "camera0_rgb", np.cumsum(jxl_lengths), 1,
                       args)  # fmt: skip
    finally:
        for client, _ in services.values():
            client.close()
        for p in procs.values():
            p.stop(30)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    out = {**res, "frames": args.frames, "frame_shape": [h, w, 4], "threads": args.threads,
           "max_chunk_bytes": args.max_chunk_bytes, "depth": args.depth,
           "cpus": os.cpu_count()}  # fmt: skip
    out.update({f"jpegxl_{k}": v for k, v in jres.items()})
    out["jpegxl_frames"] = args.jxl_frames
    print(json.dumps(out))


if __name__ == "__main__":
    main()
