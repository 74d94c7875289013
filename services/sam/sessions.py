"""Video segmentation sessions of the sam service: frames stored once, prompts validated once,
results kept bit-packed per object.

Usage:
    mgr = SessionManager(backend, max_sessions=8, idle_timeout_s=600.0)
    sid = mgr.start(height=480, width=640, n_frames=100)
    mgr.put_frames(sid, 0, frames)                      # (n, 480, 640, 3) uint8 RGB, in chunks
    frame, ids, masks = mgr.add_prompt(sid, 0, 1, box=[10, 20, 200, 240])
    res = mgr.propagate(sid, "both")                    # Propagated(frames, obj_ids, ...)
    mgr.add_prompt(sid, 40, 1, points=[[90, 100]], labels=[1])   # a correction
    res = mgr.propagate(sid, "both", bounded=True)      # only the frames it changes
    ids, start, stop, packed = mgr.masks(sid, 0, 100)  # (n_obj, n, H, ceil(W/8)) uint8
    ids, start, stop, packed, computed = mgr.read_masks(sid, 0, 100)  # + (n_obj, n) bool
    mgr.progress(sid), mgr.drift(sid)                   # answered during a propagation too
    mgr.close(sid)

The session layer alone owns keyframes (Session.keyframes) and propagation windows
(merge.plan_propagation); backends receive a base.Prompt and the planned base.Window list.

Memory: a session preallocates its (T, H, W, 3) uint8 frame store (np.zeros, so pages are
committed only as put_frames fills them) and, per object, a (T, H, ceil(W/8)) uint8 packed
result store. Requests never copy the frame store; put_frames copies each received chunk
into it once (the received array is a read-only view of a transient zmq frame).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import numpy as np

from protocol.errors import BadRequest, NotFound, Overloaded, Unsupported
from services.sam.backends.base import DIRECTIONS, Prompt, SamBackend
from services.sam.drift import drift_scores_packed
from services.sam.merge import plan_propagation
from services.sam.propagation import Propagated, run_plan
from services.sam.store import Progress, Session
from services.sam.validation import check_box, check_mask, check_points

log = logging.getLogger(__name__)

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_SIDE = 8192  # largest accepted frame height/width


def not_found(sid: str) -> NotFound:
    return NotFound(f"Cannot find session {sid}; it might have expired")


class SessionManager:
    """Owns the open sessions; validates every request before the backend sees it.

    Thread-safe: the manager lock guards the session table, each session's lock serialises
    calls on its backend state (the backend contract), so different sessions may run in
    parallel when the service has several workers.
    """

    def __init__(
        self,
        backend: SamBackend,
        *,
        max_sessions: int = 8,
        idle_timeout_s: float = 600.0,
        max_session_bytes: int = 16 << 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self.max_session_bytes = max_session_bytes
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------
    def start(self, height: int, width: int, n_frames: int, session: str | None = None) -> str:
        for name, v in (("height", height), ("width", width)):
            if not 1 <= v <= MAX_SIDE:
                raise BadRequest(f"{name}: must be in [1, {MAX_SIDE}], got {v}")
        if n_frames < 1:
            raise BadRequest(f"n_frames: must be >= 1, got {n_frames}")
        nbytes = n_frames * height * width * 3
        if nbytes > self.max_session_bytes:
            raise BadRequest(
                f"n_frames: {n_frames} frames of {height}x{width} need {nbytes / 2**30:.1f} GiB, "
                f"over max_session_bytes={self.max_session_bytes / 2**30:.1f} GiB; "
                "split the episode or raise the option"
            )
        if session is not None and not SESSION_ID_RE.match(session):
            raise BadRequest(
                f"session: {session!r} is not a valid id; use 1-128 chars of [A-Za-z0-9_.:-] "
                "or omit it to get a generated id"
            )
        self.expire()
        with self._lock:
            if session is not None and session in self._sessions:
                raise BadRequest(
                    f"session: {session!r} is already open; close_session it first or omit "
                    "session to get a fresh id"
                )
            if len(self._sessions) >= self.max_sessions:
                raise Overloaded(
                    f"max_sessions={self.max_sessions} sessions are open; close_session one "
                    "or retry later"
                )
            sid = session or uuid.uuid4().hex
            frames = np.zeros((n_frames, height, width, 3), np.uint8)  # (T, H, W, 3) lazy pages
            state = self.backend.init_state(frames)
            s = Session(sid, height, width, n_frames, frames, np.zeros(n_frames, bool), state)
            s.last_used = self.clock()
            self._sessions[sid] = s
        log.info("session %s started: %d frames of %dx%d", sid, n_frames, height, width)
        return sid

    def get(self, sid: str) -> Session:
        with self._lock:
            s = self._sessions.get(sid)
            if s is None:
                raise not_found(sid)
            s.last_used = self.clock()
            return s

    def close(self, sid: str) -> bool:
        """Close a session; False when it was not open (idempotent)."""
        with self._lock:
            s = self._sessions.pop(sid, None)
        if s is None:
            return False
        with s.lock:
            self._free(s)
        log.info("session %s closed", sid)
        return True

    def _free(self, s: Session) -> None:
        if s.closed:
            return
        s.closed = True
        try:
            self.backend.close(s.state)
        finally:
            s.state = None
            s.drop()
            s.frames = np.zeros((0, s.height, s.width, 3), np.uint8)

    def expire(self) -> list[str]:
        """Close sessions idle for longer than idle_timeout_s; returns their ids."""
        now = self.clock()
        with self._lock:
            old = [
                sid
                for sid, s in self._sessions.items()
                if now - s.last_used > self.idle_timeout_s and not s.lock.locked()
            ]
            gone = [self._sessions.pop(sid) for sid in old]
        for s in gone:
            with s.lock:
                self._free(s)
            log.info("session %s expired after %.0f s idle", s.id, now - s.last_used)
        return old

    def close_all(self) -> None:
        with self._lock:
            ids = list(self._sessions)
        for sid in ids:
            self.close(sid)

    def close_sessions(self, prefix: str) -> list[str]:
        """Close every open session whose id starts with prefix (at least 8 characters, so a
        stray short prefix cannot close other runs' sessions); returns their ids."""
        if not isinstance(prefix, str) or len(prefix) < 8:
            raise BadRequest(
                f"prefix: {prefix!r} is shorter than 8 characters; give the run's own id "
                "prefix (e.g. the orchestrator's run_key)"
            )
        with self._lock:
            ids = sorted(sid for sid in self._sessions if sid.startswith(prefix))
        return [sid for sid in ids if self.close(sid)]

    def describe(self) -> list[dict]:
        """Open sessions and their memory, for `info`. Reads each session's snapshots (ids,
        result_bytes), not its tables, and takes no session lock: a long propagation holding
        one neither blocks `info` nor changes a table under it."""
        now = self.clock()
        with self._lock:
            sessions = list(self._sessions.values())
        return [
            {
                "session": s.id,
                "shape": [s.n_frames, s.height, s.width],
                "received": int(np.count_nonzero(s.received)),
                "obj_ids": list(s.ids),
                "bytes": s.nbytes,
                "idle_s": round(now - s.last_used, 1),
            }
            for s in sessions
        ]

    # ---- frames ----------------------------------------------------------------------
    def put_frames(self, sid: str, start: int, frames: np.ndarray) -> int:
        s = self.get(sid)
        want = (s.height, s.width, 3)
        if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[1:] != want:
            got = getattr(frames, "shape", type(frames).__name__)
            raise BadRequest(
                f"frames: expected shape (n, {s.height}, {s.width}, 3) for this session, got {got}"
            )
        if frames.dtype != np.uint8:
            raise BadRequest(f"frames: expected dtype uint8 (RGB), got {frames.dtype}")
        n = frames.shape[0]
        if start < 0 or start + n > s.n_frames:
            raise BadRequest(
                f"start: frames [{start}, {start + n}) fall outside the session's "
                f"[0, {s.n_frames}) frames"
            )
        with s.lock:
            self._alive(s)
            s.frames[start : start + n] = frames  # the one copy out of the zmq buffer
            s.received[start : start + n] = True
            return int(s.received.sum())

    # ---- prompts ---------------------------------------------------------------------
    def add_prompt(
        self,
        sid: str,
        frame: int,
        obj_id: int,
        points: Sequence[Sequence[float]] | None = None,
        labels: Sequence[int] | None = None,
        rel: bool = False,
        box: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
        text: str | None = None,
    ) -> tuple[int, list[int], np.ndarray]:
        """Returns (frame, obj_ids, (n_obj, H, W) bool masks of every object on that frame)."""
        s = self.get(sid)
        self._check_frame(s, frame, "frame")
        if not 0 <= obj_id < 2**31:
            raise BadRequest(f"obj_id: must be in [0, 2**31), got {obj_id}")
        kinds = [
            k
            for k, v in (("points", points), ("box", box), ("mask", mask), ("text", text))
            if v is not None
        ]
        pts, lab = check_points(points, labels, rel, s.height, s.width)
        if not kinds:
            raise BadRequest("add_prompt: give at least one of points (+labels), box, mask, text")
        self.check_kinds(kinds)
        bx = check_box(box, rel, s.height, s.width) if box is not None else None
        mk = check_mask(mask, s.height, s.width) if mask is not None else None
        if text is not None and not text.strip():
            raise BadRequest("text: empty; describe the object, e.g. 'left robot arm'")
        prompt = Prompt(frame, obj_id, pts, lab, bx, mk, text)
        with s.lock:
            self._alive(s)
            known = set(s.keyframes) | set(s.results)
            with _backend_errors("add_prompt"):
                out = self.backend.add_prompt(s.state, prompt)
            if self.backend.restarts(prompt):  # the model forgot every earlier prompt
                s.keyframes.clear()
                known = set()
            serial = s.add_keyframe(obj_id, frame)
            for oid, m in out.items():
                if oid == obj_id:
                    s.store(frame, oid, m, made_by=serial)
                elif oid not in known or frame in s.keyframes.get(oid, {}):
                    # a new object of this prompt (text instances), or the prompt mask of
                    # another object's keyframe it changed: a (new) prompt of that object
                    s.store(frame, oid, m, made_by=s.add_keyframe(oid, frame))
                else:  # another object's result it changed (non-overlap): not a keyframe
                    s.store(frame, oid, m)
            ids = s.obj_ids
            stack = np.zeros((len(ids), s.height, s.width), bool)  # (n_obj, H, W)
            for i, oid in enumerate(ids):
                if oid in out:
                    stack[i] = out[oid]
                elif s.present[oid][frame]:
                    stack[i] = np.unpackbits(s.packed(frame, oid), axis=-1, count=s.width)
            return frame, ids, stack

    def check_kinds(self, kinds: Sequence[str]) -> None:
        bad = [k for k in kinds if k not in self.backend.prompt_kinds]
        if bad:
            raise Unsupported(
                f"{bad[0]}: prompt kind {bad[0]!r} is not supported by backend "
                f"{self.backend.name!r} (supports {sorted(self.backend.prompt_kinds)}); "
                "use another prompt kind or a backend that supports it"
            )

    def check_capability(self, capability: str, field: str, fix: str) -> None:
        """Unsupported naming the field when the backend does not declare `capability`."""
        if capability not in self.backend.capabilities:
            raise Unsupported(
                f"{field}: backend {self.backend.name!r} has no {capability!r} capability "
                f"(it declares {sorted(self.backend.capabilities)}); {fix}"
            )

    # ---- propagation and results ------------------------------------------------------
    def propagate(
        self,
        sid: str,
        direction: str = "both",
        start: int | None = None,
        max_frames: int | None = None,
        bounded: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Propagated:
        """Run the backend over the planned windows. bounded: recompute, per object, only the
        frames whose nearest keyframe (or its prompt) changed since that object's last
        propagation. on_progress(done, total) is called after each frame step."""
        s = self.get(sid)
        if direction not in DIRECTIONS:
            raise BadRequest(f"direction: {direction!r} is not one of {list(DIRECTIONS)}")
        if start is not None:
            self._check_frame(s, start, "start", need_received=False)
        if max_frames is not None and max_frames < 1:
            raise BadRequest(f"max_frames: must be >= 1 or null, got {max_frames}")
        if bounded:
            self.check_capability("bounded", "bounded", "send bounded: false")
        with s.lock:
            self._alive(s)
            if not s.keyframes:
                raise BadRequest("propagate: no prompts in this session yet; call add_prompt first")
            plan = plan_propagation(
                s.keyframes, s.present, s.n_frames, direction, start, max_frames,
                made_by=s.made_by, bounded=bounded,
            )  # fmt: skip
            ranges = [(w.lo, w.hi) for w in plan.windows] if bounded else plan.passes
            for r in ranges:
                lo, hi = r[-2:]
                missing = np.flatnonzero(~s.received[lo : hi + 1])
                if len(missing):
                    raise BadRequest(
                        f"frames: frame {lo + int(missing[0])} (and {len(missing) - 1} more in "
                        f"[{lo}, {hi}]) not received yet; put_frames them before propagate"
                    )
            try:
                with _backend_errors("propagate"):
                    return run_plan(self.backend, s, plan, direction, on_progress)
            finally:
                s.progress = Progress(False, s.progress.done, s.progress.total, direction)
                s.last_used = self.clock()

    def progress(self, sid: str) -> dict:
        """{propagating, done, total, direction} of the session's propagation; never waits."""
        p = self.get(sid).progress
        return {
            "propagating": p.propagating,
            "done": p.done,
            "total": p.total,
            "direction": p.direction,
        }

    def masks(
        self,
        sid: str,
        start: int = 0,
        stop: int | None = None,
        obj_ids: list[int] | None = None,
        max_bytes: int = 32 << 20,
    ) -> tuple[list[int], int, int, np.ndarray]:
        """read_masks without `computed`: (obj_ids, start, stop, packed)."""
        return self.read_masks(sid, start, stop, obj_ids, max_bytes)[:4]

    def read_masks(
        self,
        sid: str,
        start: int = 0,
        stop: int | None = None,
        obj_ids: list[int] | None = None,
        max_bytes: int = 32 << 20,
    ) -> tuple[list[int], int, int, np.ndarray, np.ndarray]:
        """Returns (obj_ids, start, stop, (n_obj, n, H, ceil(W/8)) uint8 packed, (n_obj, n)
        bool computed), the range cut so the chunk stays under max_bytes (at least one frame).
        Does not wait for a running propagation: it returns what is stored so far."""
        s = self.get(sid)
        stop = s.n_frames if stop is None else stop
        if not 0 <= start < s.n_frames:
            raise BadRequest(f"start: {start} is outside [0, {s.n_frames})")
        if not start < stop <= s.n_frames:
            raise BadRequest(f"stop: {stop} must be in ({start}, {s.n_frames}]")
        self._alive(s)
        n_obj = len(s.ids) if obj_ids is None else len(obj_ids)
        per_frame = max(1, n_obj * s.height * ((s.width + 7) // 8))
        stop = min(stop, start + max(1, max_bytes // per_frame))
        try:
            ids, computed, out = s.read(start, stop, obj_ids)
        except KeyError as e:
            raise NotFound(
                f"obj_ids: object {e.args[0]} is not in session {sid} (objects: {s.obj_ids})"
            ) from None
        self._alive(s)
        return ids, start, stop, out, computed

    def drift(self, sid: str, obj_ids: list[int] | None = None) -> tuple[list[int], np.ndarray]:
        """(obj_ids, (n_obj, T) float32 scores in [0, 1]): drift_scores of each object's stored
        masks (and, where both passes gave one, the other pass's). Never waits."""
        s = self.get(sid)
        self._alive(s)
        ids, _, packed = self._read_all(s, obj_ids)
        scores = np.zeros((len(ids), s.n_frames), np.float32)  # (n_obj, T)
        for i, oid in enumerate(ids):
            with s.data:
                present = s.present[oid].copy()
                keys = set(s.keyframes.get(oid, {}))
                other = s.other.get(oid)
                other = None if other is None else (other.copy(), s.other_present[oid].copy())
            scores[i] = drift_scores_packed(packed[i], present, keys, other)
        return ids, scores

    def _read_all(self, s: Session, obj_ids):
        try:
            return s.read(0, s.n_frames, obj_ids)
        except KeyError as e:
            raise NotFound(
                f"obj_ids: object {e.args[0]} is not in session {s.id} (objects: {s.obj_ids})"
            ) from None

    def remove_object(self, sid: str, obj_id: int) -> list[int]:
        s = self.get(sid)
        with s.lock:
            self._alive(s)
            if obj_id not in s.results and obj_id not in s.keyframes:
                raise NotFound(f"obj_id: object {obj_id} is not in session {sid} ({s.obj_ids})")
            with _backend_errors("remove_object"):
                self.backend.remove_object(s.state, obj_id)
            s.drop(obj_id)
            return s.obj_ids

    def reset(self, sid: str) -> None:
        s = self.get(sid)
        with s.lock:
            self._alive(s)
            with _backend_errors("reset_session"):
                self.backend.reset(s.state)
            s.drop()

    # ---- helpers ---------------------------------------------------------------------
    @staticmethod
    def _alive(s: Session) -> None:
        if s.closed:  # expired or closed while this request waited for the lock
            raise not_found(s.id)

    @staticmethod
    def _check_frame(s: Session, frame: int, name: str, need_received: bool = True) -> None:
        if not 0 <= frame < s.n_frames:
            raise BadRequest(f"{name}: frame {frame} is outside [0, {s.n_frames})")
        if need_received and not s.received[frame]:
            raise BadRequest(f"{name}: frame {frame} not received yet; put_frames it first")


@contextlib.contextmanager
def _backend_errors(op: str):
    """A backend's ValueError is the caller's mistake (base.py's contract): bad_request."""
    try:
        yield
    except ValueError as e:
        raise BadRequest(f"{op}: {e}") from None
