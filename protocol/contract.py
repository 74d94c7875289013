"""A service's contract: its ops, their request and reply structs, which may be re-sent.

Usage:
    from protocol.contract import Contract, Op
    SAM = Contract("sam", [
        Op("add_prompt", AddPromptReq, AddPromptReply, idempotent=False),
        Op("propagate", PropagateReq, PropagateReply, idempotent=True, long_running=True),
    ])
    body = SAM.request("propagate", session="s1", direction="both")   # dict, validated
    req = SAM.decode("propagate", body)                                # PropagateReq
    Client(endpoints, contract=SAM)     # idempotency comes from the table, never the caller
    Service("sam", contract=SAM)        # the server registers handlers for these ops only

One table per service, in `services/<name>/api.py` (numpy + protocol only), imported by the
server and by every client. `idempotent`: the op may run twice with the same effect, so a
client re-sends it after silence or a lost connection. `long_running`: the handler reports
progress (frames done); the client judges liveness by that progress (protocol/README.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from .schema import describe, parse

BUILTIN_OPS = ("ping", "info", "inflight")  # answered by the socket thread of every service


@dataclass(frozen=True)
class Op:
    name: str
    request: type | None  # a @message class (None: any map, handed over unchecked)
    reply: type | None  # a @message class (None: any map)
    idempotent: bool
    long_running: bool = False

    def describe(self) -> dict:
        return {
            "idempotent": self.idempotent,
            "long_running": self.long_running,
            "body": describe(self.request) if self.request else None,
            "reply": describe(self.reply) if self.reply else None,
        }


class Contract:
    """The op table of one service."""

    def __init__(self, service: str, ops: Iterable[Op]):
        self.service = service
        self.ops: dict[str, Op] = {}
        for op in ops:
            if op.name in BUILTIN_OPS or op.name in self.ops:
                raise ValueError(f"{service}: op {op.name!r} is built in or listed twice")
            self.ops[op.name] = op

    def __repr__(self) -> str:
        return f"Contract({self.service!r}, ops={list(self.ops)})"

    def op(self, name: str) -> Op:
        try:
            return self.ops[name]
        except KeyError:
            known = ", ".join(sorted(self.ops))
            raise KeyError(f"{self.service}: no op {name!r}; ops: {known}") from None

    def idempotent(self, name: str) -> bool:
        """Whether a client may re-send `name`; built-in health checks always may. An op the
        contract does not list is sent once (the service answers `unsupported`)."""
        if name in BUILTIN_OPS:
            return True
        op = self.ops.get(name)
        return op is not None and op.idempotent

    def long_running(self, name: str) -> bool:
        op = self.ops.get(name)
        return op is not None and op.long_running

    def request(self, op_name: str, **body: Any) -> dict:
        """A validated request body for `op_name` (only the given fields travel)."""
        op = self.op(op_name)
        if op.request is not None:
            parse(op.request, body, where=f"{self.service}.{op_name}")
        return body

    def decode(self, op_name: str, body: Any) -> Any:
        """The op's request struct from a received body (BadRequest naming the field)."""
        op = self.op(op_name)
        return parse(op.request, body) if op.request is not None else (body or {})

    def decode_reply(self, op_name: str, body: Any) -> Any:
        """The op's reply struct from a reply body (BadRequest naming the field)."""
        op = self.op(op_name)
        return parse(op.reply, body, where=f"{self.service}.{op_name} reply") if op.reply else body


def asdict(msg: Any) -> dict:
    """A @message instance as a request body: every field, defaults included."""
    return {f.name: getattr(msg, f.name) for f in fields(msg)}


def contract_for(service: str) -> Contract:
    """The contract of a mesh service by name (services/<name>/api.py: numpy + protocol)."""
    if not service.isidentifier():
        raise ValueError(f"service {service!r}: not a service name")
    name = "protocol.echo_api" if service == "echo" else f"services.{service}.api"
    mod = importlib.import_module(name)
    return mod.CONTRACT


__all__ = ["BUILTIN_OPS", "Contract", "Op", "asdict", "contract_for"]
