"""An echo service: a real mesh service for protocol tests, benchmarks and other-language clients.

Ops: echo (returns its body, arrays included), sleep {seconds}, fail {code, message},
typed {n: int, name: str, tags: list[str] | None} (schema validation), count (side effect).
"""

from __future__ import annotations

import time

import numpy as np

from protocol.errors import ServiceError
from protocol.runner import service_main
from protocol.schema import message
from protocol.server import Service


@message
class Sleep:
    seconds: float


@message
class Fail:
    code: str = "internal"
    message: str = "asked to fail"


@message
class Typed:
    n: int
    name: str
    tags: list[str] | None = None
    arr: np.ndarray | None = None


def build(backend: str, options: dict) -> Service:
    unknown = set(options) - {"workers", "queue_size"}
    if unknown:
        raise ValueError(
            f"option {sorted(unknown)[0]!r}: unknown; valid options are ['queue_size', 'workers']"
        )
    svc = Service("echo", backend=backend, workers=int(options.get("workers", 1)),
                  queue_size=int(options.get("queue_size", 64)))  # fmt: skip
    counter = {"n": 0}

    @svc.op("echo")
    def echo(body: dict) -> dict:
        return body

    @svc.op("sleep", body=Sleep)
    def sleep(req: Sleep) -> dict:
        time.sleep(req.seconds)
        return {"slept": req.seconds}

    @svc.op("fail", body=Fail)
    def fail(req: Fail) -> dict:
        if req.code == "crash":
            raise RuntimeError(req.message)
        raise ServiceError(req.message, code=req.code)

    @svc.op("typed", body=Typed)
    def typed(req: Typed) -> dict:
        return {"n": req.n, "name": req.name, "tags": req.tags,
                "sum": None if req.arr is None else float(req.arr.sum())}  # fmt: skip

    @svc.op("count", idempotent=False)
    def count(body: dict) -> dict:
        counter["n"] += 1
        return {"n": counter["n"]}

    svc.add_info(lambda: {"count": counter["n"]})
    return svc


if __name__ == "__main__":
    service_main("echo", build)
