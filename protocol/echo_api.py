"""The echo service's contract (protocol/echo.py): structs and op table for protocol tests.

Usage:
    from protocol.echo_api import CONTRACT as ECHO
    c = Client(endpoint, contract=ECHO)
    c.call("typed", ECHO.request("typed", n=1, name="a"))
"""

from __future__ import annotations

import numpy as np

from .contract import Contract, Op
from .schema import message


@message
class Sleep:
    seconds: float
    steps: int = 0  # > 0: report progress this many times while sleeping (long ops)


@message
class Fail:
    code: str = "internal"
    message: str = "asked to fail"


@message
class Count:
    seconds: float = 0.0  # sleep first (a slow op with a side effect)


@message
class Typed:
    n: int
    name: str
    tags: list[str] | None = None
    arr: np.ndarray | None = None


CONTRACT = Contract(
    "echo",
    [
        Op("echo", None, None, idempotent=True),  # returns its body, arrays included
        Op("sleep", Sleep, None, idempotent=True),
        Op("work", Sleep, None, idempotent=True, long_running=True),  # sleep with progress
        Op("fail", Fail, None, idempotent=True),
        Op("typed", Typed, None, idempotent=True),
        Op("count", Count, None, idempotent=False),  # a side effect: never re-sent
    ],
)
ECHO = CONTRACT
