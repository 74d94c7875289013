"""Ask one service for `ping` over a raw DEALER socket, with or without CURVE keys.

Usage (run where the client lives, e.g. inside a network namespace):
    python -m tests.reliability.probe tcp://10.77.0.2:5552 --timeout 3 \
        --attempt 'right={"server_key": "keys/sam.key", "client_secret": "keys/me.key_secret"}' \
        --attempt 'plain={}'
Attempts run at once, each on its own socket; prints one JSON line
{NAME: {"answered": bool, "reply": {...} | null, "seconds": float}}.
No retries and no Lazy Pirate: it reports exactly what one request sees.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import zmq
import zmq.auth

from protocol.wire import decode, encode


def probe(endpoint: str, *, timeout: float, server_key: str | None = None,
          client_secret: str | None = None) -> dict:  # fmt: skip
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if server_key:
        s.curve_serverkey = zmq.auth.load_certificate(server_key)[0]
        if client_secret:
            s.curve_publickey, s.curve_secretkey = zmq.auth.load_certificate(client_secret)
        else:
            s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
    s.connect(endpoint)
    t0 = time.monotonic()
    s.send_multipart([b"", *encode({"op": "ping", "id": 1, "body": {}})])
    reply = None
    if s.poll(int(timeout * 1000)):
        frames = s.recv_multipart()
        head = decode(frames[1:] if frames and not frames[0] else frames)
        reply = {"ok": head.get("ok"), "body": head.get("body"), "error": head.get("error")}
    s.close(0)
    return {
        "answered": reply is not None,
        "reply": reply,
        "seconds": round(time.monotonic() - t0, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.probe")
    p.add_argument("endpoint")
    p.add_argument("--attempt", action="append", default=[], metavar='NAME={"server_key": ...}')
    p.add_argument("--timeout", type=float, default=3.0)
    a = p.parse_args(argv)
    attempts = dict(x.split("=", 1) for x in a.attempt)
    with ThreadPoolExecutor(max(1, len(attempts))) as pool:
        futs = {name: pool.submit(probe, a.endpoint, timeout=a.timeout, **json.loads(spec))
                for name, spec in attempts.items()}  # fmt: skip
        print(json.dumps({name: f.result() for name, f in futs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
