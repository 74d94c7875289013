"""One episode being annotated: its sam session, the masks the page holds, propagation.

Usage:
    work = project.work(0)
    work.ensure_ready()                                # sam session with frames + stored prompts
    reply = work.add_prompt("alice", obj_id=1, frame=0, kind="point", data={"x": 5, "y": 9, "label": 1})
    for event in work.propagate("alice", "both", bounded=False): ...   # progress / masks / done

The studio keeps its own copy of every mask it sent to the page (bit-packed, per object
`(T, H, ceil(W/8)) uint8`) and a version number that changes with each update; approval
exports exactly that copy when the page's version matches. Prompts are stored in SQLite
before sam sees them and replayed, in order, when a session has to be rebuilt (sam restarted,
session expired, studio restarted).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Iterator

import numpy as np

from protocol.errors import BadRequest, RemoteError, ServiceUnavailable
from protocol.schema import check_value
from services.studio import calls
from services.studio.project import BadInput, Project

log = logging.getLogger(__name__)

DIRECTIONS = ("forward", "backward", "both")
KINDS = ("point", "box", "text")
POLL_S = 0.25  # how often a running propagation is asked for progress and new masks
MAX_TEXT = 200
INTERACTIVE_S = 60.0  # timeout of one prompt (a propagation gets sam_timeout_s)


class Busy(Exception):
    """A propagation of this episode is already running (HTTP 409)."""


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


class EpisodeWork:
    def __init__(self, project: Project, ep: int):
        self.p, self.ep = project, ep
        info = project.info()
        self.n, self.h, self.w = project.n_frames(ep), info["height"], info["width"]
        self.w8 = (self.w + 7) // 8
        self.session = f"{project.prefix}-e{ep}"
        self.lock = threading.RLock()
        self.ready = False
        self.masks: dict[int, np.ndarray] = {}  # obj_id -> (T, H, W8) uint8, what the page got
        self.version = 0
        self.propagating = False
        self.progress = {"done": 0, "total": 0, "direction": None}
        self.drift: dict[int, list[float]] = {}
        self.last: dict = {}  # the last propagation's reply (recomputed, spans)
        self.propagated = False  # the current sam session holds a propagation (bounded makes sense)

    # -- session ---------------------------------------------------------------------------
    def _sam(self, call: calls.Call, timeout: float | None = None) -> dict:
        return self.p.mesh.call("sam", *call, timeout=timeout)

    def ensure_ready(self) -> None:
        with self.lock:
            if not self.ready:
                self._rebuild()

    def _rebuild(self) -> None:
        """A fresh sam session: frames from the reader, then every stored prompt in order."""
        t0 = time.monotonic()
        self._sam(calls.sam_close(self.session))
        self._sam(calls.sam_start(self.h, self.w, self.n, self.session))
        t = 0
        while t < self.n:
            start, frames = self.p.read_frames(self.ep, t, self.n)
            self._sam(calls.sam_put_frames(self.session, start, frames))
            self.p.cache_jpegs(self.ep, start, frames)
            t = start + len(frames)
        self.masks = {}
        for pr in self.p.store.prompts(self.ep):
            self._send_prompt(pr["obj_id"], pr["frame"], pr["kind"], pr["data"])
        self.version += 1
        self.propagated = False
        self.ready = True
        log.info("episode %d: session %s ready in %.2f s", self.ep, self.session,
                 time.monotonic() - t0)  # fmt: skip

    def _with_session(self, fn):
        """Run fn(); if sam lost the session (restart, expiry) rebuild once and retry."""
        try:
            return fn()
        except RemoteError as e:
            if e.code != "not_found":
                raise
            log.info("episode %d: sam lost session %s; rebuilding", self.ep, self.session)
            self.ready = False
            self._rebuild()
            return fn()

    # -- prompts ---------------------------------------------------------------------------
    def check_prompt(self, obj_id, frame, kind, data) -> dict:
        objs = {o["obj_id"] for o in self.p.objects(self.ep)}
        if not isinstance(obj_id, int) or isinstance(obj_id, bool) or obj_id not in objs:
            raise BadInput(
                f"obj_id: {obj_id!r} is not an object of episode {self.ep} {sorted(objs)}"
            )
        if not isinstance(frame, int) or isinstance(frame, bool) or not 0 <= frame < self.n:
            raise BadInput(
                f"frame: {frame!r} is outside episode {self.ep}'s frames 0..{self.n - 1}"
            )
        if kind not in KINDS:
            raise BadInput(f"kind: {kind!r} is not one of {list(KINDS)}")
        if not isinstance(data, dict):
            raise BadInput("data: expected an object, e.g. {x, y, label}")

        def num(k, hi):
            v = data.get(k)
            try:  # the one rule of the mesh (protocol/schema.py): a bool is never a number
                check_value(float, v, f"data.{k}")
            except BadRequest as e:
                raise BadInput(str(e)) from None
            if v != v:
                raise BadInput(f"data.{k}: expected a number, got {v!r}")
            if not 0 <= v <= hi:
                raise BadInput(f"data.{k}: {v} is outside the image (0..{hi} px)")
            return round(float(v), 2)

        if kind == "point":
            if set(data) - {"x", "y", "label"}:
                raise BadInput(f"data: unknown keys {sorted(set(data) - {'x', 'y', 'label'})}")
            x, y = num("x", self.w - 1), num("y", self.h - 1)
            if data.get("label") not in (0, 1) or isinstance(data.get("label"), bool):
                raise BadInput(
                    f"data.label: must be 1 (object) or 0 (background), got {data.get('label')!r}"
                )
            return {"x": x, "y": y, "label": int(data["label"])}
        if kind == "box":
            box = data.get("box")
            if not isinstance(box, list) or len(box) != 4 or set(data) != {"box"}:
                raise BadInput("data.box: expected [x0, y0, x1, y1] in pixels")
            b = [
                round(float(v), 2)
                for v in box
                if isinstance(v, int | float) and not isinstance(v, bool)
            ]
            if len(b) != 4:
                raise BadInput(f"data.box: expected 4 numbers, got {box!r}")
            if not (0 <= b[0] < b[2] <= self.w and 0 <= b[1] < b[3] <= self.h):
                raise BadInput(
                    f"data.box: {b} must lie in the {self.w}x{self.h} image with x0 < x1, y0 < y1"
                )
            return {"box": b}
        text = data.get("text")
        if (
            not isinstance(text, str)
            or not text.strip()
            or len(text) > MAX_TEXT
            or set(data) != {"text"}
        ):
            raise BadInput(f"data.text: a phrase of 1..{MAX_TEXT} characters, e.g. 'the red mug'")
        return {"text": text.strip()}

    def _send_prompt(self, obj_id: int, frame: int, kind: str, data: dict) -> dict:
        if kind == "point":
            call = calls.sam_add_prompt(self.session, frame, obj_id,
                                        points=[[data["x"], data["y"]]], labels=[data["label"]])  # fmt: skip
        elif kind == "box":
            call = calls.sam_add_prompt(self.session, frame, obj_id, box=data["box"])
        else:
            call = calls.sam_add_prompt(self.session, frame, obj_id, text=data["text"])
        out = self._sam(call, timeout=INTERACTIVE_S)
        self._store_frame(int(out["frame"]), out["obj_ids"], out["masks"])
        return out

    def _store_frame(self, frame: int, obj_ids: list[int], masks: np.ndarray) -> None:
        for i, oid in enumerate(obj_ids):
            self._arr(int(oid))[frame] = masks[i]

    def _arr(self, oid: int) -> np.ndarray:
        if oid not in self.masks:
            self.masks[oid] = np.zeros((self.n, self.h, self.w8), np.uint8)
        return self.masks[oid]

    def add_prompt(self, who: str, obj_id, frame, kind, data) -> dict:
        t0 = time.perf_counter()
        data = self.check_prompt(obj_id, frame, kind, data)
        with self.lock:
            self._idle()
            self.ensure_ready()
            if not self.p.mesh.alive("sam"):  # refuse before storing: no prompt sam never saw
                raise calls.ServiceDown("sam", "no answer to ping")
            pid = self.p.store.add_prompt(self.ep, obj_id, frame, kind, data, who)
            t1 = time.perf_counter()
            try:
                out = self._with_session(lambda: self._send_prompt(obj_id, frame, kind, data))
            except RemoteError as e:  # refused by sam (e.g. text on classical): not kept
                self.p.store.undo(self.ep, obj_id, frame)
                raise BadInput(f"sam refused the prompt: {e}") from None
            except calls.ServiceDown:
                self.ready = False  # the prompt is stored; it is replayed when sam is back
                raise
            self.version += 1
            t2 = time.perf_counter()
            reply = {"prompt_id": pid, **self.frame_payload(int(out["frame"]))}
            # where the time went: sam's add_prompt round trip vs the studio's own work
            reply["timing_ms"] = {"sam": round((t2 - t1) * 1e3, 1),
                                  "studio": round((time.perf_counter() - t0 - (t2 - t1)) * 1e3, 1)}  # fmt: skip
            return reply

    def _replay_object(self, obj_id: int, frames: set[int]) -> None:
        """After undo/clear: drop the object in sam and send its remaining prompts again."""

        def go():
            self._sam(calls.sam_remove_object(self.session, obj_id))
            self.masks.pop(obj_id, None)
            for pr in self.p.store.prompts(self.ep, obj_id):
                self._send_prompt(pr["obj_id"], pr["frame"], pr["kind"], pr["data"])
            for f in frames:  # the other objects' masks on the touched frames
                self._pull(f, f + 1)

        self._with_session(go)
        self.version += 1

    def undo(self, obj_id: int, frame: int, clear: bool = False) -> dict:
        self.check_prompt(obj_id, frame, "text", {"text": "x"})
        with self.lock:
            self._idle()
            self.ensure_ready()
            n = (self.p.store.clear if clear else self.p.store.undo)(self.ep, obj_id, frame)
            if n:
                self._replay_object(obj_id, {frame})
            return {"removed": n, **self.frame_payload(frame)}

    def _idle(self) -> None:
        if self.propagating:
            raise Busy(f"episode {self.ep}: a propagation is running; wait for it to finish")

    # -- masks for the page ----------------------------------------------------------------
    def frame_payload(self, frame: int) -> dict:
        return {"frame": frame, "version": self.version, "width": self.w,
                "masks": {str(o): b64(a[frame]) for o, a in self.masks.items()}}  # fmt: skip

    def masks_payload(self, start: int, stop: int) -> dict:
        if not 0 <= start <= stop <= self.n:
            raise BadInput(f"start/stop: [{start}, {stop}) is not inside 0..{self.n}")
        with self.lock:
            frames = [{"t": t, "m": {str(o): b64(a[t]) for o, a in self.masks.items()}}
                      for t in range(start, stop)]  # fmt: skip
            return {"version": self.version, "width": self.w, "frames": frames,
                    "drift": {str(k): v for k, v in self.drift.items()}}  # fmt: skip

    def _pull(self, start: int, stop: int) -> list[int]:
        """Fetch sam's masks for [start, stop); store them; return the frames that changed."""
        changed: set[int] = set()
        t = start
        while t < stop:
            out = self._sam(calls.sam_masks(self.session, t, stop, None))
            a, b = int(out["start"]), int(out["stop"])
            m = out["masks"]  # (n_obj, b - a, H, W8) uint8
            for i, oid in enumerate(out["obj_ids"]):
                cur = self._arr(int(oid))[a:b]
                diff = np.any((cur != m[i]).reshape(b - a, -1), axis=1)
                if diff.any():
                    cur[diff] = m[i][diff]
                    changed.update(int(a + j) for j in np.flatnonzero(diff))
            if b <= t:
                break
            t = b
        return sorted(changed)

    def _frames_event(self, frames: list[int]) -> dict:
        return {"type": "masks", "version": self.version, "width": self.w,
                "frames": [{"t": t, "m": {str(o): b64(a[t]) for o, a in self.masks.items()}}
                           for t in frames]}  # fmt: skip

    # -- propagation -----------------------------------------------------------------------
    def propagate(self, who: str, direction: str, bounded: bool) -> Iterator[dict]:
        """Run a propagation; yield progress and mask events while it runs, then `done`."""
        if direction not in DIRECTIONS:
            raise BadInput(f"direction: {direction!r} is not one of {list(DIRECTIONS)}")
        if not isinstance(bounded, bool):
            raise BadInput("bounded: expected true or false")
        if not self.p.store.prompts(self.ep):
            raise BadInput(f"episode {self.ep}: no prompts yet; click on an object first")
        with self.lock:
            self._idle()
            self.ensure_ready()
            self.propagating = True
        try:
            yield from self._run_propagation(who, direction, bounded)
        finally:
            with self.lock:
                self.propagating = False

    def _run_propagation(self, who: str, direction: str, bounded: bool) -> Iterator[dict]:
        mesh, t0 = self.p.mesh, time.monotonic()
        live = mesh.has_op("sam", "progress")
        with_bounded = mesh.has_op("sam", "propagate", "bounded")
        op, body = calls.sam_propagate(self.session, direction, bounded, with_bounded)
        self.progress = {"done": 0, "total": self.n, "direction": direction}
        yield {"type": "progress", **self.progress}
        with mesh.borrow("sam") as client:
            fut = client.submit(op, body, timeout=self.p.opts.sam_timeout_s)
            while live and not fut.done():
                time.sleep(POLL_S)
                try:  # on the same client: its result() pumps the propagate's reply too
                    pr = client.call(*calls.sam_progress(self.session), timeout=5)
                    self.progress = {"done": int(pr.get("done", 0)),
                                     "total": int(pr.get("total", 0)),
                                     "direction": pr.get("direction")}  # fmt: skip
                    yield {"type": "progress", **self.progress}
                    with self.lock:
                        changed = self._pull(0, self.n)
                        if changed:
                            self.version += 1
                            yield self._frames_event(changed)
                except RemoteError as e:
                    log.info("episode %d: progress/masks while propagating: %s", self.ep, e)
            try:
                out = fut.result()
            except RemoteError as e:
                if e.code == "not_found":
                    self.ready = False
                raise
            except ServiceUnavailable as e:
                self.ready = False
                raise calls.ServiceDown("sam", str(e)) from None
        with self.lock:
            changed = self._pull(0, self.n)
            self.version += 1
            if changed:
                yield self._frames_event(changed)
            self.drift = self._drift()
            self.last = {
                "frames": int(out.get("frames", 0)),
                "recomputed": int(out.get("recomputed", out.get("frames", 0))),
                "spans": out.get("spans"),
                "bounded": bool(bounded and with_bounded),
                "bounded_supported": with_bounded,
                "direction": direction,
                "seconds": round(time.monotonic() - t0, 3),
            }
            self.propagated = True
            self.p.store.set_status(self.ep, "propagated")
            self.p.store.event(who, self.ep, "propagate", self.last)
            yield {"type": "done", "version": self.version, **self.last,
                   "drift": {str(k): v for k, v in self.drift.items()}}  # fmt: skip

    def _drift(self) -> dict[int, list[float]]:
        if not self.p.mesh.has_op("sam", "drift"):
            return {}
        try:
            out = self._sam(calls.sam_drift(self.session))
        except RemoteError as e:
            log.warning("episode %d: drift: %s", self.ep, e)
            return {}
        scores = np.asarray(out["scores"], np.float32)
        return {
            int(o): [round(float(v), 4) for v in scores[i]] for i, o in enumerate(out["obj_ids"])
        }

    # -- export view -----------------------------------------------------------------------
    def snapshot(self, version: int) -> tuple[list[int], np.ndarray]:
        """(obj_ids, (n_obj, T, H, W8)) of the objects that have prompts, at `version`."""
        with self.lock:
            if version != self.version:
                raise BadInput(f"version: the page shows masks version {version} but the studio "
                               f"holds {self.version}; reload the episode and review again")  # fmt: skip
            self._idle()
            prompted = sorted({pr["obj_id"] for pr in self.p.store.prompts(self.ep)})
            ids = [o for o in prompted if o in self.masks]
            return ids, np.stack([self.masks[o] for o in ids]) if ids else np.zeros(0)

    def close(self) -> None:
        try:
            self._sam(calls.sam_close(self.session), timeout=2)
        except Exception as e:  # closing at shutdown: sam may already be gone
            log.info("episode %d: close_session: %s", self.ep, e)
