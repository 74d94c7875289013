"""An echo service: a real mesh service for protocol tests, benchmarks and other-language clients.

Usage:
    python -m protocol.echo                                   # tcp://127.0.0.1:<free port>
    python -m protocol.echo --bind tcp://127.0.0.1:5600 --option workers=2

Ops (contract: protocol/echo_api.py; protocol/README.md "The echo service"): echo (returns
its body, arrays included), sleep {seconds}, work {seconds, steps} (long-running, reports
progress), fail {code, message}, typed {n: int, name: str, tags: list[str] | None, arr: array
| None} (schema validation), count (not idempotent: a side effect).
"""

from __future__ import annotations

import time

from protocol.echo_api import CONTRACT, Count, Fail, Sleep, Typed
from protocol.errors import ServiceError
from protocol.runner import service_main
from protocol.server import Service


def build(backend: str, options: dict) -> Service:
    unknown = set(options) - {"workers", "queue_size"}
    if unknown:
        raise ValueError(
            f"option {sorted(unknown)[0]!r}: unknown; valid options are ['queue_size', 'workers']"
        )
    svc = Service("echo", backend=backend, workers=int(options.get("workers", 1)),
                  queue_size=int(options.get("queue_size", 64)), contract=CONTRACT)  # fmt: skip
    counter = {"n": 0}

    @svc.op("echo")
    def echo(body: dict) -> dict:
        return body

    @svc.op("sleep")
    def sleep(req: Sleep) -> dict:
        time.sleep(req.seconds)
        return {"slept": req.seconds}

    @svc.op("work")
    def work(req: Sleep, progress) -> dict:
        steps = max(1, req.steps)
        for i in range(steps):
            time.sleep(req.seconds / steps)
            progress(i + 1, steps)
        return {"slept": req.seconds, "steps": steps}

    @svc.op("fail")
    def fail(req: Fail) -> dict:
        if req.code == "crash":
            raise RuntimeError(req.message)
        raise ServiceError(req.message, code=req.code)

    @svc.op("typed")
    def typed(req: Typed) -> dict:
        return {"n": req.n, "name": req.name, "tags": req.tags,
                "sum": None if req.arr is None else float(req.arr.sum())}  # fmt: skip

    @svc.op("count")
    def count(req: Count) -> dict:
        if req.seconds:
            time.sleep(req.seconds)
        counter["n"] += 1
        return {"n": counter["n"]}

    svc.add_info(lambda: {"count": counter["n"]})
    return svc


if __name__ == "__main__":
    service_main("echo", build, module="protocol.echo", default_backend="echo")
