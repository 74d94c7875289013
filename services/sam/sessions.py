"""Video segmentation sessions of the sam service: frames stored once, prompts validated once,
results kept bit-packed per object.

Usage:
    mgr = SessionManager(backend, max_sessions=8, idle_timeout_s=600.0)
    sid = mgr.start(height=480, width=640, n_frames=100)
    mgr.put_frames(sid, 0, frames)                      # (n, 480, 640, 3) uint8 RGB, in chunks
    frame, ids, masks = mgr.add_prompt(sid, 0, 1, box=[10, 20, 200, 240])
    n, ids = mgr.propagate(sid, "both")
    ids, start, stop, packed = mgr.masks(sid, 0, 100)  # (n_obj, n, H, ceil(W/8)) uint8
    mgr.close(sid)

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
from dataclasses import dataclass, field

import numpy as np

from protocol.errors import BadRequest, NotFound, Overloaded, Unsupported
from protocol.masks import pack
from services.sam.backends.base import DIRECTIONS, SamBackend, propagation_windows
from services.sam.merge import PassMerge
from services.sam.validation import check_box, check_mask, check_points

log = logging.getLogger(__name__)

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_SIDE = 8192  # largest accepted frame height/width


def not_found(sid: str) -> NotFound:
    return NotFound(f"Cannot find session {sid}; it might have expired")


@dataclass
class Session:
    """One video: its frames, the backend's state and the per-object packed results."""

    id: str
    height: int
    width: int
    n_frames: int
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, filled by put_frames
    received: np.ndarray  # (T,) bool, which frames put_frames has filled
    state: object  # the backend's per-session state
    # obj_id -> (T, H, ceil(W/8)) uint8 packed masks, and (T,) bool "has a result"
    results: dict[int, np.ndarray] = field(default_factory=dict)
    present: dict[int, np.ndarray] = field(default_factory=dict)
    keyframes: dict[int, set[int]] = field(default_factory=dict)  # obj_id -> prompted frames
    last_used: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    # Snapshots of `results` for describe(), which reads them without the lock (a propagation
    # holds it for long): replaced, never mutated, whenever an object is added or dropped.
    ids: tuple[int, ...] = ()  # sorted ids of the objects with a result store
    result_bytes: int = 0  # bytes of those stores

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes + self.result_bytes)

    @property
    def obj_ids(self) -> list[int]:
        return list(self.ids)

    def store(self, frame: int, obj_id: int, mask: np.ndarray) -> None:
        """Keep an (H, W) bool mask bit-packed."""
        if obj_id not in self.results:
            w8 = (self.width + 7) // 8
            self.results[obj_id] = np.zeros((self.n_frames, self.height, w8), np.uint8)
            self.present[obj_id] = np.zeros(self.n_frames, bool)
            self._snapshot()
        self.results[obj_id][frame] = pack(mask)
        self.present[obj_id][frame] = True

    def drop(self, obj_id: int | None = None) -> None:
        """Forget one object's results and prompts (None: every object's)."""
        for table in (self.results, self.present, self.keyframes):
            if obj_id is None:
                table.clear()
            else:
                table.pop(obj_id, None)
        self._snapshot()

    def _snapshot(self) -> None:
        self.ids = tuple(sorted(self.results))
        self.result_bytes = sum(r.nbytes for r in self.results.values())


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
        with s.lock:
            self._alive(s)
            with _backend_errors("add_prompt"):
                out = self.backend.add_prompt(s.state, frame, obj_id, pts, lab, bx, mk, text)
            s.keyframes.setdefault(obj_id, set()).add(frame)
            for oid, m in out.items():
                s.keyframes.setdefault(oid, set()).add(frame)
                s.store(frame, oid, m)
            ids = s.obj_ids
            stack = np.zeros((len(ids), s.height, s.width), bool)  # (n_obj, H, W)
            for i, oid in enumerate(ids):
                if oid in out:
                    stack[i] = out[oid]
                elif s.present[oid][frame]:
                    stack[i] = np.unpackbits(s.results[oid][frame], axis=-1, count=s.width)
            return frame, ids, stack

    def check_kinds(self, kinds: Sequence[str]) -> None:
        bad = [k for k in kinds if k not in self.backend.prompt_kinds]
        if bad:
            raise Unsupported(
                f"{bad[0]}: prompt kind {bad[0]!r} is not supported by backend "
                f"{self.backend.name!r} (supports {sorted(self.backend.prompt_kinds)}); "
                "use another prompt kind or a backend that supports it"
            )

    # ---- propagation and results ------------------------------------------------------
    def propagate(
        self,
        sid: str,
        direction: str = "both",
        start: int | None = None,
        max_frames: int | None = None,
    ) -> tuple[int, list[int]]:
        """Run the backend's propagation; returns (number of frames it covers, obj_ids)."""
        s = self.get(sid)
        if direction not in DIRECTIONS:
            raise BadRequest(f"direction: {direction!r} is not one of {list(DIRECTIONS)}")
        if start is not None:
            self._check_frame(s, start, "start", need_received=False)
        if max_frames is not None and max_frames < 1:
            raise BadRequest(f"max_frames: must be >= 1 or null, got {max_frames}")
        with s.lock:
            self._alive(s)
            keys = set().union(*s.keyframes.values()) if s.keyframes else set()
            if not keys:
                raise BadRequest("propagate: no prompts in this session yet; call add_prompt first")
            windows = propagation_windows(keys, s.n_frames, direction, start, max_frames)
            for _, lo, hi in windows:
                missing = np.flatnonzero(~s.received[lo : hi + 1])
                if len(missing):
                    raise BadRequest(
                        f"frames: frame {lo + int(missing[0])} (and {len(missing) - 1} more in "
                        f"[{lo}, {hi}]) not received yet; put_frames them before propagate"
                    )
            # the both-direction merge rule, for every backend (merge.py)
            merge = PassMerge(windows, s.keyframes, s.present, s.n_frames)
            with _backend_errors("propagate"):
                for t, per_obj in self.backend.propagate(s.state, direction, start, max_frames):
                    d = merge.direction_of(per_obj, t)
                    for oid, m in per_obj.items():
                        if merge.keep(d, t, oid):
                            s.store(t, oid, m)
            s.last_used = self.clock()
            covered = np.zeros(s.n_frames, bool)
            for _, lo, hi in windows:
                covered[lo : hi + 1] = True
            return int(covered.sum()), s.obj_ids

    def masks(
        self,
        sid: str,
        start: int = 0,
        stop: int | None = None,
        obj_ids: list[int] | None = None,
        max_bytes: int = 32 << 20,
    ) -> tuple[list[int], int, int, np.ndarray]:
        """Returns (obj_ids, start, stop, (n_obj, n, H, ceil(W/8)) uint8 packed), the range cut
        so the chunk stays under max_bytes (at least one frame)."""
        s = self.get(sid)
        stop = s.n_frames if stop is None else stop
        if not 0 <= start < s.n_frames:
            raise BadRequest(f"start: {start} is outside [0, {s.n_frames})")
        if not start < stop <= s.n_frames:
            raise BadRequest(f"stop: {stop} must be in ({start}, {s.n_frames}]")
        with s.lock:
            self._alive(s)
            ids = s.obj_ids if obj_ids is None else list(obj_ids)
            for oid in ids:
                if oid not in s.results:
                    raise NotFound(
                        f"obj_ids: object {oid} is not in session {sid} (objects: {s.obj_ids})"
                    )
            w8 = (s.width + 7) // 8
            per_frame = max(1, len(ids) * s.height * w8)
            stop = min(stop, start + max(1, max_bytes // per_frame))
            out = np.zeros((len(ids), stop - start, s.height, w8), np.uint8)
            for i, oid in enumerate(ids):
                out[i] = s.results[oid][start:stop]  # absent frames are zero already
            return ids, start, stop, out

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
