"""Review: save a round, approve (export exactly what the page showed), mark hard, another round;
and the prompts file the orchestrator reads.

Usage:
    rev = Review(project)
    rev.act("alice", episode=0, action="approve", note="ok", version=7)   # -> round, outputs
    rev.write_prompts_file()                                              # <state>/prompts.yaml

The prompts file follows the one schema the orchestrator reads (protocol/prompts_file.py):
every episode with a saved round gets its
latest round's prompts (`coords: abs`, pixels), and - when the schema has them - `round`,
`approved`, `annotator`. The file is validated with that schema's parser before it is
renamed into place, so the orchestrator never meets a file it cannot read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import yaml

from protocol import prompts_file as schema
from protocol.errors import RemoteError
from services.studio import calls
from services.studio.project import BadInput, Project, ProjectError

log = logging.getLogger(__name__)

ACTIONS = {"save": "saved", "approve": "approved", "hard": "hard", "again": "needs_round"}
CHUNK_BYTES = 8 << 20  # packed masks per put_masks


def _schema_has(field: str) -> bool:
    """Whether the schema in use accepts the per-episode key `field` (round, approved, ...)."""
    return field in getattr(schema, "_EPISODE_KEYS", ()) or field in getattr(
        schema.EpisodePrompts, "__dataclass_fields__", {}
    )


def fingerprint(entry: dict) -> str:
    """The schema's fingerprint of one episode's entry (coords abs); bookkeeping keys excluded."""
    fn = getattr(schema, "episode_fingerprint", None)
    if callable(fn):
        return str(fn(entry, "abs"))
    keep = {k: v for k, v in entry.items() if k not in ("round", "approved", "annotator")}
    text = json.dumps({"coords": "abs", "entry": keep}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Review:
    def __init__(self, project: Project):
        self.p = project
        self._export_id: str | None = None
        self.prompts_path = project.opts.state_dir / "prompts.yaml"

    # -- the episode's entry ---------------------------------------------------------------
    def entry(self, ep: int) -> dict:
        """The current prompts of `ep` in the prompts-file schema (roles only; text skipped)."""
        objs = {o["obj_id"]: o for o in self.p.objects(ep)}
        per: dict[int, dict[int, dict]] = {}
        for pr in self.p.store.prompts(ep):
            d = per.setdefault(pr["obj_id"], {}).setdefault(pr["frame"], {})
            if pr["kind"] == "point":
                d.setdefault("points", []).append([pr["data"]["x"], pr["data"]["y"]])
                d.setdefault("labels", []).append(pr["data"]["label"])
            elif pr["kind"] == "box":
                d["box"] = pr["data"]["box"]
        out: dict = {"objects": {}}
        for oid, frames in sorted(per.items()):
            role = objs[oid]["role"]
            if role is None:
                continue  # free objects have no place in the batch schema; exported by the studio
            if self.p.pipeline.pipeline == "arm_only" and role == "target":
                continue
            plist = [{"frame": f, **d} for f, d in sorted(frames.items()) if d]
            if plist:
                out["objects"][role] = {"obj_id": oid, "prompts": plist}
        tgt = out["objects"].get("target")
        if tgt:
            boxed = [p for p in tgt["prompts"] if "box" in p]
            if boxed:
                out["target"] = {"frame": boxed[0]["frame"], "box": boxed[0]["box"]}
        if not out["objects"]:
            del out["objects"]
        return out

    # -- review actions --------------------------------------------------------------------
    def act(self, who: str, ep: int, action: str, note: str, version: int | None) -> dict:
        if action not in ACTIONS:
            raise BadInput(f"action: {action!r} is not one of {list(ACTIONS)}")
        if not isinstance(note, str) or len(note) > 2000:
            raise BadInput("note: a text of at most 2000 characters")
        work = self.p.work(ep)
        with work.lock:
            entry = self.entry(ep)
            rnd = len(self.p.store.rounds(ep))
            if action in ("approve", "hard", "again") and not self.p.store.prompts(ep):
                if action == "approve":
                    raise BadInput(f"episode {ep}: nothing to approve; prompt and propagate first")
            outputs = None
            if action == "approve":
                if not isinstance(version, int) or isinstance(version, bool):
                    raise BadInput("version: the masks version the page shows is required")
                outputs = self._export(work, who, rnd, entry, version)
            full = dict(entry)
            full.update(round=rnd, approved=action == "approve", annotator=who)
            fp = fingerprint(full)
            rnd = self.p.store.save_round(ep, full, fp, ACTIONS[action], note, who)
            self.p.store.event(who, ep, action, {"round": rnd, "note": note})
        path = self.write_prompts_file()
        return {"episode": ep, "round": rnd, "verdict": ACTIONS[action], "fingerprint": fp,
                "outputs": outputs, "prompts_file": str(path) if path else None}  # fmt: skip

    def _open_export(self) -> str:
        if self._export_id is None:
            cfg, info = self.p.pipeline, self.p.info()
            body = calls.exporter_open(
                self.p.output,
                self.p.buffer,
                info["camera_key"],
                list(cfg.effective_outputs),
                {**cfg.effective_export_options(), "pipeline": cfg.result_dict()},
            )
            try:
                self._export_id = self.p.mesh.call("exporter", *body)["export"]
            except RemoteError as e:
                raise ProjectError(f"exporter: open_export {self.p.output}: {e}") from None
        return self._export_id

    def _export(self, work, who: str, rnd: int, entry: dict, version: int) -> dict:
        ids, packed = work.snapshot(version)  # (n_obj, T, H, W8): what the page holds
        objs = {o["obj_id"]: o for o in self.p.objects(work.ep)}
        roles = {objs[o]["role"]: o for o in ids if objs[o]["role"]}
        if self.p.pipeline.pipeline == "rgbm" and "target" not in roles:
            raise BadInput(f"episode {work.ep}: the target has no prompts; rgbm needs its mask")
        if not ids:
            raise BadInput(f"episode {work.ep}: no object has masks to export")
        mesh = self.p.mesh
        done = mesh.call("exporter", *calls.exporter_status(self.p.output)).get("done", [])
        if work.ep in done:
            raise ProjectError(
                f"episode {work.ep} is already exported in {self.p.output} (done/"
                f"{work.ep:04d}.json); the exporter never overwrites a done episode: delete that "
                "marker to export this round instead"
            )
        export = self._open_export()
        try:
            mesh.call("exporter", *calls.exporter_discard(export, work.ep))
            per = max(1, CHUNK_BYTES // max(1, packed[:, 0].nbytes))
            for a in range(0, work.n, per):
                chunk = np.ascontiguousarray(packed[:, a : a + per])
                mesh.call("exporter", *calls.exporter_put(export, work.ep, a, ids, chunk, work.w))
            meta = {"source": "studio", "approved": True, "round": rnd, "annotator": who,
                    "prompts_fingerprint": fingerprint(entry),
                    "prompts_round": rnd, "masks_version": version,
                    "masks_sha256": hashlib.sha256(packed.tobytes()).hexdigest()}  # fmt: skip
            out = mesh.call("exporter", *calls.exporter_finish(export, work.ep, roles, meta))
        except RemoteError as e:
            self._export_id = None if e.code == "not_found" else self._export_id
            raise ProjectError(f"exporter: episode {work.ep}: {e}") from None
        return out["outputs"]

    # -- the prompts file ------------------------------------------------------------------
    def _file_entry(self, full: dict) -> dict:
        """The entry as the schema in use accepts it (round fields only once it has them)."""
        return {k: v for k, v in full.items()
                if k not in ("round", "approved", "annotator") or _schema_has(k)}  # fmt: skip

    def write_prompts_file(self) -> Path | None:
        eps = {}
        for ep, r in sorted(self.p.store.latest_rounds().items()):
            e = self._file_entry(r["entry"])
            if e.get("objects") or e.get("target"):
                eps[int(ep)] = e
        if not eps:
            return None
        info = self.p.info()
        doc = {"version": 1, "coords": "abs", "episodes": eps, "buffer": {
            "fingerprint": schema.buffer_fingerprint(info["episode_ends"], info["camera_key"],
                                                     info["height"], info["width"]),
            "camera_key": info["camera_key"], "path": self.p.buffer,
            "episodes": int(info["n_episodes"]), "size": [info["width"], info["height"]]}}  # fmt: skip
        schema.parse_prompts(doc, source=str(self.prompts_path))  # refuse before writing
        text = ("# Written by the studio (services/studio) for `python -m orchestrator run`:\n"
                f"# buffer {self.p.buffer}; latest saved round per episode.\n")  # fmt: skip
        text += yaml.safe_dump(doc, sort_keys=True, default_flow_style=None)
        self.prompts_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.prompts_path.parent, prefix=".tmp-prompts-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.prompts_path)
        return self.prompts_path
