"""Every request the studio sends to reader, sam and exporter, built in this one place.

Usage:
    mesh = Mesh.from_config("configs/services.yaml")
    info = mesh.call("reader", *calls.reader_open("/data/demo.zarr"))

Each helper returns (op, body): the body is built and validated by the service's contract
(services/<name>/api.py), and the client takes each op's idempotency from that contract; a
field the contract does not list is refused before anything is sent. Ops and fields an older
running service may lack (sam's `progress`, `drift`, `propagate.bounded`) are sent only when it
offers them (Mesh.has_op reads its `info`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from protocol.config import ServicesConfig, load_services
from protocol.errors import RemoteError, ServiceUnavailable
from services.exporter.api import CONTRACT as EXPORTER
from services.reader.api import CONTRACT as READER
from services.sam.api import CONTRACT as SAM

Call = tuple[str, dict]


def _req(contract, op: str, **body: Any) -> Call:
    """(op, body), the body checked by the contract before anything is sent: a misspelt or
    mistyped field is a BadRequest here, never a silently ignored or passed-through key."""
    return op, contract.request(op, **body)


# -- reader ----------------------------------------------------------------------------------
def reader_open(path: str) -> Call:
    return _req(READER, "open", path=path)


def reader_frames(dataset: str, episode: int, key: str, start: int, stop: int | None) -> Call:
    return _req(READER, "frames", dataset=dataset, episode=episode, key=key, start=start, stop=stop)


# -- sam -------------------------------------------------------------------------------------
def sam_start(height: int, width: int, n_frames: int, session: str) -> Call:
    return _req(
        SAM, "start_session", height=height, width=width, n_frames=n_frames, session=session
    )


def sam_put_frames(session: str, start: int, frames: np.ndarray) -> Call:
    return _req(SAM, "put_frames", session=session, start=start, frames=frames)


def sam_add_prompt(session: str, frame: int, obj_id: int, *, points=None, labels=None,
                   box=None, text=None) -> Call:  # fmt: skip
    body: dict[str, Any] = {"session": session, "frame": frame, "obj_id": obj_id}
    if points is not None:
        body["points"], body["labels"] = points, labels
    if box is not None:
        body["box"] = box
    if text is not None:
        body["text"] = text
    return _req(SAM, "add_prompt", **body)  # not idempotent: clicks accumulate


def sam_propagate(session: str, direction: str, bounded: bool, with_bounded: bool) -> Call:
    body: dict[str, Any] = {"session": session, "direction": direction}
    if with_bounded:  # only a sam that knows the field gets it (older ones refuse unknown keys)
        body["bounded"] = bounded
    return _req(SAM, "propagate", **body)


def sam_masks(session: str, start: int, stop: int | None, obj_ids: list[int] | None) -> Call:
    return _req(SAM, "masks", session=session, start=start, stop=stop, obj_ids=obj_ids)


def sam_progress(session: str) -> Call:
    return _req(SAM, "progress", session=session)


def sam_drift(session: str) -> Call:
    return _req(SAM, "drift", session=session)


def sam_remove_object(session: str, obj_id: int) -> Call:
    return _req(SAM, "remove_object", session=session, obj_id=obj_id)


def sam_close(session: str) -> Call:
    return _req(SAM, "close_session", session=session)


# -- exporter --------------------------------------------------------------------------------
def exporter_open(output: str, source: str, camera_key: str, outputs: list[str],
                  options: dict) -> Call:  # fmt: skip
    return _req(EXPORTER, "open_export", output=output, source=source, camera_key=camera_key,
                outputs=outputs, options=options)  # fmt: skip


def exporter_put(export: str, episode: int, start: int, obj_ids: list[int],
                 masks: np.ndarray, width: int) -> Call:  # fmt: skip
    return _req(EXPORTER, "put_masks", export=export, episode=episode, start=start,
                obj_ids=obj_ids, masks=masks, width=width)  # fmt: skip


def exporter_finish(export: str, episode: int, roles: dict, meta: dict) -> Call:
    return _req(EXPORTER, "finish_episode", export=export, episode=episode, roles=roles, meta=meta)


def exporter_discard(export: str, episode: int) -> Call:
    return _req(EXPORTER, "discard_episode", export=export, episode=episode)


def exporter_status(output: str) -> Call:
    return _req(EXPORTER, "status", output=output)


class ServiceDown(Exception):
    """A mesh service did not answer (HTTP 503); the page shows it and retries."""

    def __init__(self, service: str, detail: str):
        super().__init__(f"{service} service is down or not answering ({detail}); "
                         f"start it with `make up` - the studio reconnects by itself")  # fmt: skip
        self.service = service


class Mesh:
    """Pools of protocol.client.Client per service: a client is not thread-safe, so each call
    borrows one (the HTTP server runs a thread per request) and gives it back."""

    SERVICES = ("reader", "sam", "exporter")

    def __init__(self, cfg: ServicesConfig):
        missing = [s for s in self.SERVICES if s not in cfg.services]
        if missing:
            raise ValueError(f"{cfg.path}: services.{missing[0]}: missing; the studio needs "
                             f"reader, sam and exporter endpoints")  # fmt: skip
        self.cfg = cfg
        self._lock = threading.Lock()
        self._pool: dict[str, list] = {s: [] for s in self.SERVICES}
        self._ops: dict[str, set[str]] = {}
        self._fields: dict[str, dict[str, dict]] = {}
        self._alive: dict[str, tuple[float, bool]] = {}

    @classmethod
    def from_config(cls, path: str) -> Mesh:
        return cls(load_services(path))

    @contextmanager
    def borrow(self, service: str) -> Iterator[Any]:
        with self._lock:
            c = self._pool[service].pop() if self._pool[service] else None
        if c is None:
            c = self.cfg.services[service].client()
        ok = False
        try:
            yield c
            ok = True
        except RemoteError:  # an error reply: the client itself is fine
            ok = True
            raise
        finally:
            if ok:
                with self._lock:
                    self._pool[service].append(c)
            else:  # a failed call may leave replies due on it: start the next one fresh
                c.close()

    def alive(self, service: str, max_age_s: float = 1.0) -> bool:
        """A ping answered within the last `max_age_s` (cached; one ping of 0.5 s otherwise).
        Only answers are cached: a service seen down is pinged again on the next call, so a
        restarted one is used as soon as it is back."""
        t, ok = self._alive.get(service, (0.0, False))
        if ok and time.monotonic() - t <= max_age_s:
            return True
        c = self.cfg.services[service].client(timeout=0.5, retries=0)
        try:
            c.ping(timeout=0.5)
            ok = True
        except (ServiceUnavailable, RemoteError):
            ok = False
        finally:
            c.close()
        self._alive[service] = (time.monotonic(), ok)
        return ok

    def call(self, service: str, op: str, body: dict, timeout: float | None = None) -> dict:
        """One request; ServiceDown at once when the service does not answer ping (a call to a
        dead endpoint would otherwise wait out its whole timeout)."""
        if not self.alive(service):
            raise ServiceDown(service, "no answer to ping")
        try:
            with self.borrow(service) as c:
                return c.call(op, body, timeout=timeout)
        except ServiceUnavailable as e:
            self._alive[service] = (time.monotonic(), False)
            raise ServiceDown(service, str(e)) from None

    def health(self, timeout: float = 0.5) -> dict[str, bool]:
        out = {}
        for s in self.SERVICES:
            c = self.cfg.services[s].client(timeout=timeout, retries=0)
            try:
                info = c.call("info", timeout=timeout)
                self._ops[s] = set(info.get("ops", {}))
                self._fields[s] = {n: (o.get("body") or {}) for n, o in info["ops"].items()}
                out[s] = True
            except (ServiceUnavailable, RemoteError):
                out[s] = False
            finally:
                c.close()
            self._alive[s] = (time.monotonic(), out[s])
        return out

    def has_op(self, service: str, op: str, field: str | None = None) -> bool:
        """Whether the running service offers `op` (and the request field `field`)."""
        if service not in self._ops:
            self.health()
        if op not in self._ops.get(service, set()):
            return False
        return field is None or field in self._fields.get(service, {}).get(op, {})

    def close(self) -> None:
        with self._lock:
            pools, self._pool = self._pool, {s: [] for s in self.SERVICES}
        for cl in pools.values():
            for c in cl:
                c.close()
