"""The studio's request handlers (the HTTP routes of services/studio/http.py).

Usage:
    app = App(opts)                       # opens SQLite, the mesh clients, the project
    server = make_server(app, *opts.http_addr())

Every handler takes (request, annotator, path args, JSON body, query) and answers through
request.reply / reply_bytes / stream. Writes need the annotator to hold the episode.
"""

from __future__ import annotations

import logging
import re
import threading
import time

from protocol.errors import BadRequest
from protocol.schema import check_value
from services.studio.calls import Mesh
from services.studio.http import HttpError
from services.studio.options import StudioOptions
from services.studio.project import PALETTE, BadInput, Project, ProjectError
from services.studio.review import Review
from services.studio.store import AuthError, Store

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class App:
    def __init__(self, opts: StudioOptions):
        self.opts = opts
        self.store = Store(opts.state_dir / "studio.sqlite")
        self.mesh = Mesh.from_config(opts.config_path)
        self.project = Project(opts, self.mesh, self.store)
        self.review = Review(self.project)
        self._health: tuple[float, dict] = (0.0, {})
        self._hlock = threading.Lock()
        self.open_registration = (
            opts.loopback() if opts.open_registration is None else opts.open_registration
        )

    def close(self) -> None:
        self.project.close()
        self.mesh.close()
        self.store.close()

    # -- helpers ---------------------------------------------------------------------------
    def health(self) -> dict:
        with self._hlock:
            t, h = self._health
            if time.monotonic() - t > 1.0:
                h = self.mesh.health()
                self._health = (time.monotonic(), h)
            return h

    def _hold(self, who: str, ep: int) -> None:
        self.project.n_frames(ep)
        self.store.take_hold(ep, who, self.opts.hold_s)

    @staticmethod
    def _int(body: dict, key: str, default=None):
        v = body.get(key, default)
        if v is None:
            raise BadInput(f"{key}: required")
        try:  # the one rule of the mesh (protocol/schema.py): a bool is never an int
            return check_value(int, v, key)
        except BadRequest as e:
            raise BadInput(str(e)) from None

    # -- handlers --------------------------------------------------------------------------
    def h_health(self, req, who, args, body, q) -> None:
        h = self.health()
        project_error = None
        if h.get("reader"):
            try:
                self.project.info()
            except ProjectError as e:
                project_error = str(e)
        req.reply({"services": h, "project_error": project_error,
                   "open_registration": self.open_registration})  # fmt: skip

    def h_login(self, req, who, args, body, q) -> None:
        name, token = body.get("name"), body.get("token") or None
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise BadInput("name: 1-32 letters, digits, '_', '-' or '.'")
        if token is not None and not isinstance(token, str):
            raise BadInput("token: expected a string")
        if self.store.has_name(name):
            if token is None or not self.store.check_login(name, token):
                raise HttpError(401, f"name {name!r}: wrong or missing token", "unauthorized")
            self.store.event(name, None, "login")
            return req.reply({"name": name, "token": token, "new": False})
        if not self.open_registration:
            raise AuthError("registration is closed on this studio: ask its operator for a "
                            "token (python -m services.studio.admin add NAME)")  # fmt: skip
        name, token = self.store.register(name, token)
        self.store.event(name, None, "register")
        req.reply({"name": name, "token": token, "new": True})

    def h_project(self, req, who, args, body, q) -> None:
        req.reply({**self.project.describe(), "annotator": who,
                   "prompts_file": str(self.review.prompts_path)})  # fmt: skip

    def h_episodes(self, req, who, args, body, q) -> None:
        info = self.project.info()
        rows, latest, now = self.store.episodes(), self.store.latest_rounds(), time.time()
        out = []
        for ep, n in enumerate(info["episode_lengths"]):
            r = rows.get(ep, {})
            held = r.get("holder") if (r.get("hold_until") or 0) > now else None
            lr = latest.get(ep)
            out.append({"episode": ep, "frames": int(n), "status": r.get("status", "new"),
                        "round": lr["round"] if lr else None, "holder": held,
                        "note": r.get("note", ""),
                        "prompts": len(self.store.prompts(ep)) if r else 0})  # fmt: skip
        req.reply({"episodes": out})

    def h_stats(self, req, who, args, body, q) -> None:
        st = self.store.stats()
        n = int(self.project.info()["n_episodes"])  # episodes never touched have no row: new
        st["status"]["new"] = n - sum(v for k, v in st["status"].items() if k != "new")
        req.reply(st)

    def h_episode(self, req, who, args, body, q) -> None:
        ep = args[0]
        n = self.project.n_frames(ep)
        work = self.project.works().get(ep)
        r = self.store.episode(ep)
        req.reply({
            "episode": ep, "frames": n, "status": r["status"], "note": r["note"],
            "holder": self.store.holder(ep), "objects": self.project.objects(ep),
            "prompts": self.store.prompts(ep), "rounds": [
                {k: v for k, v in x.items() if k != "entry"} for x in self.store.rounds(ep)],
            "version": work.version if work else 0, "last": work.last if work else {},
            "propagating": bool(work and work.propagating),
            "session_propagated": bool(work and work.propagated),
            "progress": work.progress if work else None,
        })  # fmt: skip

    def h_hold(self, req, who, args, body, q) -> None:
        self._hold(who, args[0])
        self.store.event(who, args[0], "hold")
        req.reply({"episode": args[0], "holder": who, "hold_s": self.opts.hold_s})

    def h_release(self, req, who, args, body, q) -> None:
        req.reply({"released": self.store.release(args[0], who)})

    def h_open(self, req, who, args, body, q) -> None:
        """Hold the episode and make its sam session ready; reply with every mask held."""
        ep = args[0]
        self._hold(who, ep)
        work = self.project.work(ep)
        work.ensure_ready()
        req.reply(work.masks_payload(0, work.n))

    def h_frame(self, req, who, args, body, q) -> None:
        req.reply_bytes(self.project.frame_jpeg(args[0], args[1]), "image/jpeg", cache_s=3600)

    def h_masks(self, req, who, args, body, q) -> None:
        work = self.project.work(args[0])
        try:
            start, stop = int(q.get("start", 0)), int(q.get("stop", work.n))
        except ValueError:
            raise BadInput("start/stop: expected integers") from None
        req.reply(work.masks_payload(start, stop))

    def h_add_object(self, req, who, args, body, q) -> None:
        ep = args[0]
        self._hold(who, ep)
        name = body.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise BadInput("name: 1-32 letters, digits, '_', '-' or '.'")
        n = len(self.project.objects(ep))
        try:
            obj = self.store.add_object(ep, name, PALETTE[n % len(PALETTE)])
        except ValueError as e:
            raise BadInput(str(e)) from None
        req.reply(obj)

    def h_prompt(self, req, who, args, body, q) -> None:
        ep = args[0]
        self._hold(who, ep)
        work = self.project.work(ep)
        req.reply(work.add_prompt(who, body.get("obj_id"), body.get("frame"), body.get("kind"),
                                  body.get("data")))  # fmt: skip

    def h_undo(self, req, who, args, body, q, clear: bool = False) -> None:
        ep = args[0]
        self._hold(who, ep)
        work = self.project.work(ep)
        req.reply(work.undo(self._int(body, "obj_id"), self._int(body, "frame"), clear=clear))

    def h_clear(self, req, who, args, body, q) -> None:
        self.h_undo(req, who, args, body, q, clear=True)

    def h_propagate(self, req, who, args, body, q) -> None:
        ep = args[0]
        self._hold(who, ep)
        work = self.project.work(ep)
        gen = work.propagate(who, body.get("direction", "both"), body.get("bounded", False))
        first = next(gen)  # validation errors surface here as a plain JSON error reply
        req.stream(_chain(first, gen))

    def h_review(self, req, who, args, body, q) -> None:
        ep = args[0]
        self._hold(who, ep)
        out = self.review.act(who, ep, body.get("action"), body.get("note", ""),
                              body.get("version"))  # fmt: skip
        req.reply(out)


def _chain(first, gen):
    yield first
    yield from gen
