"""Protocol benchmark: mesh vs raw pyzmq vs HTTP+base64 JSON, between two processes on loopback.

Usage:
    python -m bench.bench_protocol [--seconds 2]      (or: make bench-protocol)

Measures, in one run: round trip of a 480x640x4 uint8 frame (raw pyzmq REQ-REP copy=False,
this protocol's client and server, an HTTP server taking and returning base64 JSON as
Flask-style annotation servers do), small-message `ping` vs a raw small echo, and pipelined
small ops (8 in flight) vs sync. Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing as mp
import statistics
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import zmq

from protocol.client import Client

FRAME_SHAPE = (480, 640, 4)


def _raw_server(port_q: mp.Queue) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.REP)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    port_q.put(port)
    while True:
        msg = s.recv_multipart(copy=False)
        if msg[0].bytes == b"STOP":
            s.send(b"bye")
            return
        s.send_multipart(msg, copy=False)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - http.server's naming
        n = int(self.headers["Content-Length"])
        req = json.loads(self.rfile.read(n))
        arr = np.frombuffer(base64.b64decode(req["frame"]), dtype=req["dtype"]).reshape(
            req["shape"]
        )
        body = json.dumps({"frame": base64.b64encode(arr.tobytes()).decode(), "dtype": req["dtype"],
                           "shape": req["shape"]}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def _http_server(port_q: mp.Queue) -> None:
    srv = HTTPServer(("127.0.0.1", 0), _Handler)
    port_q.put(srv.server_address[1])
    srv.serve_forever()


def _mesh_server(port_q: mp.Queue) -> None:
    from protocol.echo import build

    svc = build("echo", {})
    svc.serve("tcp://127.0.0.1:0", ready=lambda ep: port_q.put(int(ep.rsplit(":", 1)[1])))


def _timed(fn, seconds: float, min_iters: int = 20) -> float:
    """Median per-call microseconds over batches run for about `seconds`."""
    for _ in range(5):
        fn()  # warm-up
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 5:
        t = time.perf_counter()
        for _ in range(min_iters):
            fn()
        samples.append((time.perf_counter() - t) / min_iters * 1e6)
    return statistics.median(samples)


def _start(target) -> tuple[mp.Process, int]:
    q: mp.Queue = mp.Queue()
    p = mp.Process(target=target, args=(q,), daemon=True)
    p.start()
    return p, q.get(timeout=30)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = ap.parse_args(argv)
    frame = np.random.default_rng(0).integers(0, 255, FRAME_SHAPE, dtype=np.uint8)
    small = b"x" * 32
    procs = []

    p, port = _start(_raw_server)
    procs.append(p)
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.REQ)
    raw.connect(f"tcp://127.0.0.1:{port}")

    def raw_frame():
        raw.send(frame, copy=False)
        out = raw.recv(copy=False)
        np.frombuffer(out.buffer, np.uint8).reshape(FRAME_SHAPE)

    def raw_small():
        raw.send(small)
        raw.recv()

    p, port = _start(_mesh_server)
    procs.append(p)
    mesh = Client(f"tcp://127.0.0.1:{port}", timeout=30)
    check = mesh.call("echo", {"frame": frame})["frame"]
    if not np.array_equal(check, frame):
        sys.exit("mesh echo returned a different frame")

    def mesh_frame():
        mesh.call("echo", {"frame": frame})

    def mesh_ping():
        mesh.call("ping")

    def mesh_small():
        mesh.call("echo", {"x": 1})

    def mesh_pipelined():
        futs = [mesh.submit("echo", {"x": i}) for i in range(8)]
        for f in futs:
            f.result()

    p, port = _start(_http_server)
    procs.append(p)
    conn = http.client.HTTPConnection("127.0.0.1", port)

    def http_frame():
        body = json.dumps({"frame": base64.b64encode(frame.tobytes()).decode(), "dtype": "|u1",
                           "shape": list(FRAME_SHAPE)})  # fmt: skip
        conn.request("POST", "/echo", body, {"Content-Type": "application/json"})
        out = json.loads(conn.getresponse().read())
        np.frombuffer(base64.b64decode(out["frame"]), np.uint8).reshape(out["shape"])

    s = args.seconds
    # Interleave raw and mesh measurements so machine noise hits both alike.
    raw_rt, mesh_rt = [], []
    for _ in range(3):
        raw_rt.append(_timed(raw_frame, s / 3))
        mesh_rt.append(_timed(mesh_frame, s / 3))
    raw_rt_us, mesh_rt_us = statistics.median(raw_rt), statistics.median(mesh_rt)
    http_rt_us = _timed(http_frame, s, min_iters=3)
    raw_p, mesh_p = [], []
    for _ in range(3):
        raw_p.append(_timed(raw_small, s / 3, 200))
        mesh_p.append(_timed(mesh_ping, s / 3, 200))
    raw_ping_us, ping_us = statistics.median(raw_p), statistics.median(mesh_p)
    sync_us = _timed(mesh_small, s, 100)
    pipe_us = _timed(mesh_pipelined, s, 20) / 8

    raw.send(b"STOP")
    raw.recv()
    mesh.close()
    conn.close()
    for p in procs:
        p.terminate()
        p.join(5)

    mb = frame.nbytes / 1e6
    res = {
        "frame_bytes": frame.nbytes,
        "mesh_rt_us": round(mesh_rt_us, 1),
        "raw_rt_us": round(raw_rt_us, 1),
        "http_rt_us": round(http_rt_us, 1),
        "ratio_vs_raw": round(raw_rt_us / mesh_rt_us, 3),
        "speedup_vs_http": round(http_rt_us / mesh_rt_us, 1),
        "ping_us": round(ping_us, 1),
        "raw_ping_us": round(raw_ping_us, 1),
        "ping_ratio": round(ping_us / raw_ping_us, 3),
        "sync_small_us": round(sync_us, 1),
        "pipelined_small_us": round(pipe_us, 1),
        "pipelined_speedup": round(sync_us / pipe_us, 2),
    }
    print(f"{'measurement':<44}{'per call':>12}{'throughput':>14}")
    for name, us in (("raw pyzmq REQ-REP, 480x640x4 frame echo", raw_rt_us),
                     ("mesh client+server, 480x640x4 frame echo", mesh_rt_us),
                     ("HTTP + base64 JSON, 480x640x4 frame echo", http_rt_us)):  # fmt: skip
        print(f"{name:<44}{us:>9.1f} us{2 * mb / (us / 1e6):>9.0f} MB/s")
    for name, us in (("raw pyzmq small echo", raw_ping_us), ("mesh ping", ping_us),
                     ("mesh small op, sync", sync_us), ("mesh small op, 8 in flight", pipe_us)):  # fmt: skip
        print(f"{name:<44}{us:>9.1f} us{1e6 / us:>10.0f} op/s")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
