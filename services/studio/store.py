"""The studio's state in SQLite (WAL): annotators, holds, objects, prompts, rounds, events.

Usage:
    st = Store("out/studio/studio.sqlite")
    name, token = st.register("alice")             # token shown once; only its sha256 is kept
    st.take_hold(0, "alice", hold_s=900)            # HoldError if bob holds episode 0
    pid = st.add_prompt(0, obj_id=1, frame=3, kind="point", data={"x": 10, "y": 20, "label": 1})

Every write is one committed transaction before the studio acts on it, so a `kill -9` loses
at most the request in flight. Prompts are soft-deleted (undo/clear keep the rows). Rounds are
insert-only: a save never overwrites an earlier round.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS annotators (
    name TEXT PRIMARY KEY, token_sha TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS episodes (
    episode INTEGER PRIMARY KEY, status TEXT NOT NULL DEFAULT 'new',
    holder TEXT, hold_until REAL, note TEXT NOT NULL DEFAULT '', updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    episode INTEGER NOT NULL, obj_id INTEGER NOT NULL, name TEXT NOT NULL, role TEXT,
    colour TEXT NOT NULL, PRIMARY KEY (episode, obj_id));
CREATE TABLE IF NOT EXISTS prompts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, episode INTEGER NOT NULL, obj_id INTEGER NOT NULL,
    frame INTEGER NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL, annotator TEXT NOT NULL,
    created REAL NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS prompts_ep ON prompts (episode, deleted);
CREATE TABLE IF NOT EXISTS rounds (
    episode INTEGER NOT NULL, round INTEGER NOT NULL, entry TEXT NOT NULL,
    fingerprint TEXT NOT NULL, verdict TEXT NOT NULL, note TEXT NOT NULL,
    annotator TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (episode, round));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, annotator TEXT NOT NULL,
    episode INTEGER, action TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
"""
STATUSES = ("new", "prompted", "propagated", "approved", "hard", "needs_round")
VERDICTS = ("saved", "approved", "hard", "needs_round")


class HoldError(Exception):
    """The episode is held by another annotator (HTTP 409)."""


class AuthError(Exception):
    """Unknown name/token, or registration closed (HTTP 401/403)."""


def token_sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    def __init__(self, path: str | Path, clock=time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._lock = threading.RLock()  # one connection, serialised (SQLite is fast enough)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across kill -9
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args))

    # -- annotators ------------------------------------------------------------------------
    def n_annotators(self) -> int:
        return self._q("SELECT COUNT(*) AS n FROM annotators")[0]["n"]

    def register(self, name: str, token: str | None = None) -> tuple[str, str]:
        """A new annotator; returns (name, token). AuthError if the name exists."""
        token = token or secrets.token_urlsafe(24)
        with self.tx() as db:
            if db.execute("SELECT 1 FROM annotators WHERE name=?", (name,)).fetchone():
                raise AuthError(f"name: {name!r} is taken; log in with its token")
            db.execute(
                "INSERT INTO annotators VALUES (?, ?, ?)", (name, token_sha(token), self.clock())
            )
        return name, token

    def check_login(self, name: str, token: str) -> bool:
        row = self._q("SELECT token_sha FROM annotators WHERE name=?", (name,))
        return bool(row) and secrets.compare_digest(row[0]["token_sha"], token_sha(token))

    def who(self, token: str) -> str | None:
        row = self._q("SELECT name FROM annotators WHERE token_sha=?", (token_sha(token),))
        return row[0]["name"] if row else None

    def has_name(self, name: str) -> bool:
        return bool(self._q("SELECT 1 FROM annotators WHERE name=?", (name,)))

    # -- episodes and holds ----------------------------------------------------------------
    def episode(self, ep: int) -> dict:
        row = self._q("SELECT * FROM episodes WHERE episode=?", (ep,))
        if row:
            return dict(row[0])
        return {"episode": ep, "status": "new", "holder": None, "hold_until": None,
                "note": "", "updated": None}  # fmt: skip

    def episodes(self) -> dict[int, dict]:
        return {r["episode"]: dict(r) for r in self._q("SELECT * FROM episodes")}

    def _ensure(self, db: sqlite3.Connection, ep: int) -> None:
        db.execute(
            "INSERT OR IGNORE INTO episodes (episode, updated) VALUES (?, ?)", (ep, self.clock())
        )

    def holder(self, ep: int) -> str | None:
        e = self.episode(ep)
        if e["holder"] and e["hold_until"] and e["hold_until"] > self.clock():
            return e["holder"]
        return None

    def take_hold(self, ep: int, name: str, hold_s: float) -> float:
        """Hold (or renew) `ep` for `name`; HoldError naming the holder when someone else has it."""
        now = self.clock()
        with self.tx() as db:
            self._ensure(db, ep)
            row = db.execute(
                "SELECT holder, hold_until FROM episodes WHERE episode=?", (ep,)
            ).fetchone()
            if row["holder"] and row["holder"] != name and (row["hold_until"] or 0) > now:
                left = row["hold_until"] - now
                raise HoldError(
                    f"episode {ep} is held by {row['holder']} for another {left:.0f} s; "
                    "pick another episode or wait until the hold expires"
                )
            db.execute(
                "UPDATE episodes SET holder=?, hold_until=? WHERE episode=?",
                (name, now + hold_s, ep),
            )
        return now + hold_s

    def release(self, ep: int, name: str) -> bool:
        with self.tx() as db:
            cur = db.execute(
                "UPDATE episodes SET holder=NULL, hold_until=NULL WHERE episode=? AND holder=?",
                (ep, name),
            )
            return cur.rowcount > 0

    def set_status(self, ep: int, status: str, note: str | None = None) -> None:
        assert status in STATUSES, status
        with self.tx() as db:
            self._ensure(db, ep)
            if note is None:
                db.execute("UPDATE episodes SET status=?, updated=? WHERE episode=?",
                           (status, self.clock(), ep))  # fmt: skip
            else:
                db.execute("UPDATE episodes SET status=?, note=?, updated=? WHERE episode=?",
                           (status, note, self.clock(), ep))  # fmt: skip

    # -- objects ---------------------------------------------------------------------------
    def objects(self, ep: int) -> list[dict]:
        rows = self._q("SELECT * FROM objects WHERE episode=? ORDER BY obj_id", (ep,))
        return [dict(r) for r in rows]

    def ensure_objects(self, ep: int, objs: list[dict]) -> None:
        with self.tx() as db:
            for o in objs:
                db.execute("INSERT OR IGNORE INTO objects VALUES (?, ?, ?, ?, ?)",
                           (ep, o["obj_id"], o["name"], o.get("role"), o["colour"]))  # fmt: skip

    def add_object(self, ep: int, name: str, colour: str) -> dict:
        """A free object (no role) with the next unused obj_id of the episode."""
        with self.tx() as db:
            if db.execute(
                "SELECT 1 FROM objects WHERE episode=? AND name=?", (ep, name)
            ).fetchone():
                raise ValueError(f"name: episode {ep} already has an object named {name!r}")
            top = db.execute(
                "SELECT COALESCE(MAX(obj_id), 0) AS m FROM objects WHERE episode=?", (ep,)
            ).fetchone()["m"]
            oid = int(top) + 1
            db.execute("INSERT INTO objects VALUES (?, ?, ?, NULL, ?)", (ep, oid, name, colour))
        return {"episode": ep, "obj_id": oid, "name": name, "role": None, "colour": colour}

    # -- prompts ---------------------------------------------------------------------------
    def add_prompt(self, ep: int, obj_id: int, frame: int, kind: str, data: dict, who: str) -> int:
        with self.tx() as db:
            self._ensure(db, ep)
            cur = db.execute(
                "INSERT INTO prompts (episode, obj_id, frame, kind, data, annotator, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (ep, obj_id, frame, kind, json.dumps(data, sort_keys=True), who, self.clock()),
            )
            db.execute(
                "UPDATE episodes SET status='prompted', updated=? WHERE episode=? AND status IN "
                "('new', 'propagated', 'needs_round')",
                (self.clock(), ep),
            )
            return int(cur.lastrowid)

    def prompts(self, ep: int, obj_id: int | None = None) -> list[dict]:
        sql = "SELECT * FROM prompts WHERE episode=? AND deleted=0"
        args: tuple = (ep,)
        if obj_id is not None:
            sql, args = sql + " AND obj_id=?", (ep, obj_id)
        rows = self._q(sql + " ORDER BY id", args)
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]

    def undo(self, ep: int, obj_id: int, frame: int) -> int:
        """Soft-delete the latest prompt of (obj, frame); returns how many were removed (0/1)."""
        with self.tx() as db:
            row = db.execute(
                "SELECT id FROM prompts WHERE episode=? AND obj_id=? AND frame=? AND deleted=0 "
                "ORDER BY id DESC LIMIT 1",
                (ep, obj_id, frame),
            ).fetchone()
            if row is None:
                return 0
            db.execute("UPDATE prompts SET deleted=1 WHERE id=?", (row["id"],))
            return 1

    def clear(self, ep: int, obj_id: int, frame: int) -> int:
        with self.tx() as db:
            cur = db.execute(
                "UPDATE prompts SET deleted=1 WHERE episode=? AND obj_id=? AND frame=? AND deleted=0",
                (ep, obj_id, frame),
            )
            return cur.rowcount

    # -- rounds ----------------------------------------------------------------------------
    def rounds(self, ep: int) -> list[dict]:
        rows = self._q("SELECT * FROM rounds WHERE episode=? ORDER BY round", (ep,))
        return [{**dict(r), "entry": json.loads(r["entry"])} for r in rows]

    def latest_rounds(self) -> dict[int, dict]:
        rows = self._q(
            "SELECT r.* FROM rounds r JOIN (SELECT episode, MAX(round) AS m FROM rounds "
            "GROUP BY episode) x ON r.episode=x.episode AND r.round=x.m"
        )
        return {r["episode"]: {**dict(r), "entry": json.loads(r["entry"])} for r in rows}

    def save_round(self, ep: int, entry: dict, fingerprint: str, verdict: str, note: str,
                   who: str) -> int:  # fmt: skip
        """Insert the next round (0, 1, 2, ...) of `ep`; earlier rounds are never touched."""
        assert verdict in VERDICTS, verdict
        status = {"saved": None, "approved": "approved", "hard": "hard",
                  "needs_round": "needs_round"}[verdict]  # fmt: skip
        with self.tx() as db:
            self._ensure(db, ep)
            n = db.execute(
                "SELECT COALESCE(MAX(round), -1) AS m FROM rounds WHERE episode=?", (ep,)
            ).fetchone()["m"]
            rnd = int(n) + 1
            db.execute("INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (ep, rnd, json.dumps(entry, sort_keys=True), fingerprint, verdict, note,
                        who, self.clock()))  # fmt: skip
            if status is not None:
                db.execute("UPDATE episodes SET status=?, note=?, updated=? WHERE episode=?",
                           (status, note, self.clock(), ep))  # fmt: skip
            elif note:
                db.execute("UPDATE episodes SET note=?, updated=? WHERE episode=?",
                           (note, self.clock(), ep))  # fmt: skip
        return rnd

    # -- events and stats -------------------------------------------------------------------
    def event(self, who: str, ep: int | None, action: str, detail: Any = "") -> None:
        text = detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True)
        with self.tx() as db:
            db.execute("INSERT INTO events (ts, annotator, episode, action, detail) "
                       "VALUES (?, ?, ?, ?, ?)", (self.clock(), who, ep, action, text))  # fmt: skip

    def stats(self) -> dict:
        per: dict[str, dict] = {}
        for r in self._q("SELECT name FROM annotators ORDER BY name"):
            per[r["name"]] = {"prompts": 0, "rounds": 0, "approved": 0, "hard": 0,
                              "needs_round": 0, "propagations": 0}  # fmt: skip
        for r in self._q("SELECT annotator, COUNT(*) AS n FROM prompts GROUP BY annotator"):
            per.setdefault(r["annotator"], {}).update(prompts=r["n"])
        for r in self._q("SELECT annotator, verdict, COUNT(*) AS n FROM rounds "
                         "GROUP BY annotator, verdict"):  # fmt: skip
            d = per.setdefault(r["annotator"], {})
            d["rounds"] = d.get("rounds", 0) + r["n"]
            if r["verdict"] != "saved":
                d[r["verdict"]] = d.get(r["verdict"], 0) + r["n"]
        for r in self._q("SELECT annotator, COUNT(*) AS n FROM events WHERE action='propagate' "
                         "GROUP BY annotator"):  # fmt: skip
            per.setdefault(r["annotator"], {}).update(propagations=r["n"])
        per_round: dict[int, dict] = {}
        for r in self._q(
            "SELECT round, verdict, COUNT(*) AS n FROM rounds GROUP BY round, verdict"
        ):
            per_round.setdefault(r["round"], {})[r["verdict"]] = r["n"]
        status: dict[str, int] = {}
        for r in self._q("SELECT status, COUNT(*) AS n FROM episodes GROUP BY status"):
            status[r["status"]] = r["n"]
        return {"per_annotator": per, "per_round": per_round, "status": status}
