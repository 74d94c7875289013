"""Protocol benchmark: mesh vs raw pyzmq vs HTTP+base64 JSON, between two processes on loopback.

Usage:
    python -m bench.bench_protocol [--seconds 2]      (or: make bench-protocol)

Measures, in one run: round trip of a 480x640x4 uint8 frame (raw pyzmq REQ-REP copy=False,
this protocol's client and server, and HTTP servers taking and returning base64 JSON: a Flask
app on werkzeug's threaded server, which is what annotation servers run, and stdlib
http.server), small-message `ping` vs a raw small echo, and pipelined small ops (8 in flight)
vs sync. The machine is shared, so every comparison is interleaved call by call (contenders
take turns, each call timed on its own) and reported as medians: drifting load hits both
sides of a ratio alike, and a preempted call moves a median far less than a mean.
The two HTTP servers take turns in 0.1 s blocks (a call is 20x slower). Speedups are
http_rt_us / mesh_rt_us as printed (interleaving the mesh with HTTP instead would time mesh
calls made cache-cold by 5 MB of base64 churn, which is not the mesh's cost). Prints a
table; the last line is one JSON object. `speedup_vs_http` is against Flask when it is
installed (`http_baseline` says which); `speedup_vs_stdlib_http` is always printed.
Then the request decode cost of protocol.schema.parse against msgspec (bench/bench_decode.py).
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
from collections.abc import Callable
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


def _echo_json(raw: bytes) -> bytes:
    """What an annotation server does with an image: decode it, then encode a reply."""
    req = json.loads(raw)
    arr = np.frombuffer(base64.b64decode(req["frame"]), dtype=req["dtype"]).reshape(req["shape"])
    return json.dumps({"frame": base64.b64encode(arr.tobytes()).decode(), "dtype": req["dtype"],
                       "shape": req["shape"]}).encode()  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = _echo_json(self.rfile.read(int(self.headers["Content-Length"])))
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


def _flask_server(port_q: mp.Queue) -> None:
    import logging

    from flask import Flask, Response, request
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = Flask("bench")

    @app.post("/echo")
    def echo():
        return Response(_echo_json(request.get_data()), mimetype="application/json")

    srv = make_server("127.0.0.1", 0, app, threaded=True)  # as app.run() serves
    port_q.put(srv.server_port)
    srv.serve_forever()


def _mesh_server(port_q: mp.Queue) -> None:
    from protocol.echo import build

    svc = build("echo", {})
    svc.serve("tcp://127.0.0.1:0", ready=lambda ep: port_q.put(int(ep.rsplit(":", 1)[1])))


def _interleaved(
    fns: dict[str, Callable], seconds: float, min_samples: int, block_s: float = 0.0
) -> dict:
    """Per contender, the microseconds of each call, the contenders taking turns.

    Alternating exposes every contender to the same moment-to-moment load of the shared
    machine; the median of many such samples is stable where means of batches are not (one
    preempted call can double a batch). With `block_s`, each turn lasts that long and its
    first call is not counted: a 25 ms HTTP call that churns 5 MB of base64 through the
    caches would otherwise slow the call right after it.
    """
    for fn in fns.values():
        for _ in range(3):
            fn()  # warm-up
    out: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    clock = time.perf_counter
    end = clock() + seconds
    while clock() < end or min(len(v) for v in out.values()) < min_samples:
        for k, fn in items:
            turn_end, first = clock() + block_s, block_s > 0
            while True:
                t = clock()
                fn()
                now = clock()
                if not first:
                    out[k].append((now - t) * 1e6)
                first = False
                if now >= turn_end:
                    break
    return out


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _start(target) -> tuple[mp.Process, int]:
    q: mp.Queue = mp.Queue()
    p = mp.Process(target=target, args=(q,), daemon=True)
    p.start()
    return p, q.get(timeout=60)


def _http_caller(port: int, frame: np.ndarray) -> tuple[http.client.HTTPConnection, Callable]:
    conn = http.client.HTTPConnection("127.0.0.1", port)

    def call():
        body = json.dumps({"frame": base64.b64encode(frame.tobytes()).decode(), "dtype": "|u1",
                           "shape": list(frame.shape)})  # fmt: skip
        conn.request("POST", "/echo", body, {"Content-Type": "application/json"})
        out = json.loads(conn.getresponse().read())
        np.frombuffer(base64.b64decode(out["frame"]), np.uint8).reshape(out["shape"])

    return conn, call


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per contender")
    args = ap.parse_args(argv)
    frame = np.random.default_rng(0).integers(0, 255, FRAME_SHAPE, dtype=np.uint8)
    small = b"x" * 32
    procs = []

    p, port = _start(_raw_server)
    procs.append(p)
    raw = zmq.Context.instance().socket(zmq.REQ)
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
    if not np.array_equal(mesh.call("echo", {"frame": frame})["frame"], frame):
        sys.exit("mesh echo returned a different frame")

    def mesh_frame():
        mesh.call("echo", {"frame": frame})

    def mesh_pipelined():
        futs = [mesh.submit("echo", {"x": i}) for i in range(8)]
        for f in futs:
            f.result()

    p, port = _start(_http_server)
    procs.append(p)
    conns = []
    conn, stdlib_frame = _http_caller(port, frame)
    conns.append(conn)
    http_fns = {"stdlib": stdlib_frame}
    try:
        import flask  # noqa: F401

        p, port = _start(_flask_server)
        procs.append(p)
        conn, flask_frame = _http_caller(port, frame)
        conns.append(conn)
        http_fns["flask"] = flask_frame
    except ImportError:
        pass

    s = args.seconds
    fr = _interleaved({"raw": raw_frame, "mesh": mesh_frame}, 2 * s, 20)
    hp = _interleaved(http_fns, len(http_fns) * s, 10, block_s=0.1)
    pg = _interleaved({"raw": raw_small, "mesh": lambda: mesh.call("ping")}, 2 * s, 100)
    pl = _interleaved({"sync": lambda: mesh.call("echo", {"x": 1}), "pipe": mesh_pipelined},
                      2 * s, 50)  # fmt: skip
    pl["pipe"] = [t / 8 for t in pl["pipe"]]  # per op

    raw.send(b"STOP")
    raw.recv()
    mesh.close()
    for c in conns:
        c.close()
    for p in procs:
        p.terminate()
        p.join(5)

    base = "flask" if "flask" in hp else "stdlib"
    mb = frame.nbytes / 1e6
    res = {
        "frame_bytes": frame.nbytes,
        "mesh_rt_us": round(_med(fr["mesh"]), 1),
        "raw_rt_us": round(_med(fr["raw"]), 1),
        "http_rt_us": round(_med(hp[base]), 1),
        "ratio_vs_raw": round(_med(fr["raw"]) / _med(fr["mesh"]), 3),
        "speedup_vs_http": round(_med(hp[base]) / _med(fr["mesh"]), 1),
        "http_baseline": base,
        "stdlib_http_rt_us": round(_med(hp["stdlib"]), 1),
        "speedup_vs_stdlib_http": round(_med(hp["stdlib"]) / _med(fr["mesh"]), 1),
        "ping_us": round(_med(pg["mesh"]), 1),
        "raw_ping_us": round(_med(pg["raw"]), 1),
        "ping_ratio": round(_med(pg["mesh"]) / _med(pg["raw"]), 3),
        "sync_small_us": round(_med(pl["sync"]), 1),
        "pipelined_small_us": round(_med(pl["pipe"]), 1),
        "pipelined_speedup": round(_med(pl["sync"]) / _med(pl["pipe"]), 2),
        "samples": len(fr["mesh"]),
    }
    rows = [("raw pyzmq REQ-REP, 480x640x4 frame echo", res["raw_rt_us"]),
            ("mesh client+server, 480x640x4 frame echo", res["mesh_rt_us"]),
            ("HTTP + base64 JSON (stdlib), frame echo", res["stdlib_http_rt_us"])]  # fmt: skip
    if "flask" in hp:
        rows.append(("HTTP + base64 JSON (Flask), frame echo", res["http_rt_us"]))
    print(f"{'measurement':<44}{'per call':>12}{'throughput':>14}")
    for name, us in rows:
        print(f"{name:<44}{us:>9.1f} us{2 * mb / (us / 1e6):>9.0f} MB/s")
    for name, us in (("raw pyzmq small echo", res["raw_ping_us"]), ("mesh ping", res["ping_us"]),
                     ("mesh small op, sync", res["sync_small_us"]),
                     ("mesh small op, 8 in flight", res["pipelined_small_us"])):  # fmt: skip
        print(f"{name:<44}{us:>9.1f} us{1e6 / us:>10.0f} op/s")
    try:  # decode cost of today's schema.parse vs msgspec, same run (bench/bench_decode.py)
        from bench import bench_decode
    except ImportError as e:  # msgspec is a bench-only dependency (tests/requirements.txt)
        print(f"decode: skipped ({e}); pip install msgspec to compare")
    else:
        dec = bench_decode.run(max(0.5, s / 2))
        bench_decode.print_table(dec)
        res["decode_us"] = dec
        share = dec["sam add_prompt (3 points)"]["wire_decode_parse_bytes"] / res["sync_small_us"]
        res["decode_share_of_small_op"] = round(share, 3)
        print(f"add_prompt decode (wire + schema.parse) = {share:.0%} of a small op's round trip")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
