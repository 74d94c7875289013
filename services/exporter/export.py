"""One export folder: create or resume it, hold masks, write episodes atomically.

Atomicity: an episode counts as done only when done/<episode:04d>.json exists; that marker
is written (temp + fsync + rename) after every output of the episode is in place (each
written to a temp name and renamed). A killed run leaves temps (swept on the next open) and
maybe renamed outputs of an unmarked episode, which the re-run rewrites.

Usage:
    exp = Export.open("/data/out", "/data/pick.zarr", "camera0_rgb", ["rgbm", "npz"], {}, budget)
    exp.put_masks(episode=0, start=0, obj_ids=[1], masks=bits, width=640)
    exp.finish_episode(episode=0, roles={"target": 1}, meta={})
    exp.close()
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from typing import Any

import numpy as np

from services.exporter import grounding_out, sam3_out
from services.exporter.buffer import ZarrOut
from services.exporter.episode import EpisodeJob, Writer, run_episode
from services.exporter.errors import ExportError, bad, os_error
from services.exporter.fsutil import (
    OutputLock,
    atomic_write_json,
    fsync_path,
    sweep_temps,
    user_path,
)
from services.exporter.held import HeldEpisode
from services.exporter.layout import MANIFEST_FORMAT, MANIFEST_VERSION, Layout
from services.exporter.masks_out import ARM_ROLES, FORMULA, GRIPPER_ROLES, ArmOnlyWriter, NpzWriter
from services.exporter.options import ROLES, ExportOptions, parse_outputs
from services.exporter.preview import PreviewWriter
from services.exporter.records import (
    done_record,
    read_done,
    read_status,  # noqa: F401 - re-exported (service, tests)
)
from services.exporter.rgbm_out import RgbmWriter, create_rgbm_buffer, rgbm_arrays, write_zip
from services.exporter.source import SourceBuffer
from services.exporter.ytvis import YtvisWriter, combine

log = logging.getLogger(__name__)
COMBINED = frozenset({"ytvis", "sam3", "grounding"})  # outputs with files over all episodes
CLOSE_WAIT_S = 60.0  # close() waits this long for finishes in progress, then leaves it to them


class MemoryBudget:
    """Bytes of packed masks held across all exports of a process."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, n: int) -> None:
        with self._lock:
            if self.used + n > self.max_bytes:
                raise ExportError(
                    "overloaded",
                    f"held masks would reach {(self.used + n) >> 20} MiB > max_held_mb="
                    f"{self.max_bytes >> 20}; finish or discard episodes first, or raise max_held_mb",
                )
            self.used += n

    def release(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)


class Export:
    """An open export; thread-safe (ops may run on several worker threads)."""

    def __init__(self, layout: Layout, source: SourceBuffer, camera_key: str,
                 outputs: tuple[str, ...], options: ExportOptions, budget: MemoryBudget,
                 lock: OutputLock) -> None:  # fmt: skip
        self.id = uuid.uuid4().hex[:12]
        self.layout = layout
        self.source = source
        self.camera_key = camera_key
        self.outputs = outputs
        self.options = options
        self.height, self.width = source.check_camera(camera_key)
        self.budget = budget
        self._out_lock = lock
        self._lock = threading.Lock()
        self._finished = threading.Condition(self._lock)  # notified when a finish ends
        self._held: dict[int, HeldEpisode] = {}
        self._finishing: set[int] = set()
        self._closing = False  # close() was called: new finishes are refused
        self._release_left = False  # close() gave up waiting: the last finish releases
        self.rgbm: ZarrOut | None = None
        self.arm_zarr: ZarrOut | None = None
        self.done: set[int] = set(read_done(layout))

    @property
    def config(self) -> dict[str, Any]:
        return {"camera_key": self.camera_key, "outputs": list(self.outputs),
                "options": self.options.output_settings()}  # fmt: skip

    @classmethod
    def open(cls, output: str, source: str, camera_key: str, outputs: list[str],
             options: dict[str, Any] | None, budget: MemoryBudget) -> Export:  # fmt: skip
        """Create a new export folder or resume one made from the same source and settings."""
        outs = parse_outputs(outputs)
        opts = ExportOptions.from_dict(options)
        src = SourceBuffer.open(source)
        layout = Layout(user_path(output, "output"))
        lock = OutputLock(layout.root)
        try:
            src.check_camera(camera_key)
            if "rgbm" in outs:
                rgbm_arrays(src, camera_key, opts)  # validates rgbm_key before creating anything
            if layout.root.exists() and not layout.root.is_dir():
                raise bad(f"output: {layout.root} is a file; pass a folder (created if missing)")
            try:
                layout.root.mkdir(parents=True, exist_ok=True)
                lock.acquire()
            except OSError as exc:
                raise os_error(exc, "output") from exc
            exp = cls(layout, src, camera_key, outs, opts, budget, lock)
            try:
                exp._create_or_check()
            except OSError as exc:
                raise os_error(exc, "output") from exc
        except BaseException:
            lock.release()
            src.close()
            raise
        log.info("export %s: %s -> %s outputs=%s done=%d/%d", exp.id, src.path, layout.root,
                 ",".join(outs), len(exp.done), src.n_episodes)  # fmt: skip
        return exp

    def _create_or_check(self) -> None:
        lay = self.layout
        manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                    "source": self.source.describe(), "height": self.height, "width": self.width,
                    **self.config}  # fmt: skip
        if lay.manifest.exists():
            self._check_manifest(json.loads(lay.manifest.read_text()), manifest)
        else:
            stray = sorted(
                n for n in os.listdir(lay.root) if n != ".lock" and not n.startswith(".tmp-")
            )
            if stray:
                raise bad(
                    f"output: {lay.root} is not empty ({', '.join(stray[:5])}) and has no "
                    "export.json; choose a new or empty folder"
                )
            atomic_write_json(lay.manifest, manifest, self.options.fsync)
        sweep_temps(lay.folders(), [lay.rgbm_zarr, lay.arm_only_zarr])
        lay.done_dir.mkdir(exist_ok=True)
        fsync = self.options.fsync
        if "rgbm" in self.outputs:
            if not lay.rgbm_zarr.exists():
                create_rgbm_buffer(lay.rgbm_zarr, self.source, self.camera_key, self.options)
            self.rgbm = ZarrOut(lay.rgbm_zarr, fsync)
            arrays = rgbm_arrays(self.source, self.camera_key, self.options)
            self.rgbm.check_layout({k: (s, d) for k, (s, d, _a) in arrays.items()})
        if "arm_only" in self.outputs and self.options.arm_only_zarr:
            shape = (self.source.n_frames, self.height, self.width)
            if not lay.arm_only_zarr.exists():
                attrs = {"mask_values": [0, 255], "formula": FORMULA,
                         "dilation_radius": self.options.dilation_radius,
                         "source": {**self.source.describe(), "camera_key": self.camera_key}}  # fmt: skip
                meta = {"episode_ends": self.source.episode_ends}
                ZarrOut.create(lay.arm_only_zarr, {"arm_only_mask": (shape, np.uint8, attrs)},
                               meta, self.options.codec(), self.options.chunk_bytes, fsync)  # fmt: skip
            self.arm_zarr = ZarrOut(lay.arm_only_zarr, fsync)
            self.arm_zarr.check_layout({"arm_only_mask": (shape, np.uint8)})

    def _check_manifest(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        root = self.layout.root
        if old.get("format") != MANIFEST_FORMAT or old.get("version") != MANIFEST_VERSION:
            raise bad(
                f"output: {root}/export.json is not a version-{MANIFEST_VERSION} export manifest"
            )
        was, now = old["source"], new["source"]
        if was["fingerprint"] != now["fingerprint"] or was["path"] != now["path"]:
            raise bad(
                f"output: {root} was exported from another source ({was['path']}, fingerprint "
                f"{was['fingerprint'][:12]}), not {now['path']} ({now['fingerprint'][:12]}); "
                "use a new output folder, or the original source"
            )
        diffs = [f"{k}: was {old.get(k)!r}, now {new[k]!r}"
                 for k in ("camera_key", "outputs") if old.get(k) != new[k]]  # fmt: skip
        diffs += [f"options.{k}: was {v!r}, now {new['options'].get(k)!r}"
                  for k, v in old.get("options", {}).items() if new["options"].get(k) != v]  # fmt: skip
        if diffs:
            raise bad(
                f"output: {root} was started with other settings ({'; '.join(diffs)}); "
                "resume with the same settings or use a new output folder"
            )

    # ---- ops -------------------------------------------------------------------------------

    def put_masks(self, episode: int, start: int, obj_ids: list[int], masks: np.ndarray,
                  width: int) -> int:  # fmt: skip
        ep_start, ep_stop = self.source.episode_range(episode)
        if ep_stop == ep_start:
            raise bad(f"episode: {episode} has no frames (meta/episode_ends repeats a value); "
                      "an empty episode is not exported - skip it")  # fmt: skip
        with self._lock:
            if episode in self.done:
                raise bad(f"episode: {episode} is already exported (done); skip it on a re-run")
            if episode in self._finishing:
                raise bad(f"episode: {episode} is being finished; wait for finish_episode")
            held = self._held.get(episode)
            if held is None:
                held = HeldEpisode(ep_stop - ep_start, self.height, self.width)
            new = [o for o in dict.fromkeys(obj_ids) if o not in held.obj_ids]
            grow = held.bytes_for(len(new))
            self.budget.reserve(grow)
            try:
                received = held.put(start, obj_ids, masks, width)
            except BaseException:
                self.budget.release(grow)
                raise
            self._held[episode] = held
            return received

    def discard(self, episode: int) -> bool:
        """Drop the masks held for an episode (e.g. before re-sending after a SAM failure)."""
        with self._lock:
            if episode in self._finishing:
                raise bad(f"episode: {episode} is being finished; wait for finish_episode")
            held = self._held.pop(episode, None)
        if held is not None:
            self.budget.release(held.nbytes)
        return held is not None

    def reopen(self, episode: int, force: bool = False) -> bool:
        """Make a done episode exportable again (its prompts changed): remove its done marker;
        the next finish_episode rewrites every output of it. An episode approved in the studio
        (its record says source: studio, approved) is refused unless `force`. False when the
        episode was not done."""
        self.source.episode_range(episode)  # range check
        with self._lock:
            if episode in self._finishing:
                raise bad(f"episode: {episode} is being finished; wait for finish_episode")
            if episode not in self.done:
                return False
            rec = done_record(self.layout, episode)
            if rec["source"] == "studio" and rec["approved"] and not force:
                raise bad(f"episode: {episode} was approved in the studio (round {rec['round']}); "
                          "it is not re-exported - send it back for another round in the "
                          "studio, or pass force")  # fmt: skip
            try:
                self.layout.marker(episode).unlink()
                if self.options.fsync:
                    fsync_path(self.layout.done_dir)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise os_error(exc, f"reopen_episode (episode {episode})") from exc
            self.done.discard(episode)
        log.info("episode %d reopened (its done marker removed) for a new export", episode)
        return True

    def finish_episode(
        self, episode: int, roles: dict[str, int], meta: dict[str, Any]
    ) -> dict[str, Any]:
        """Write every output of the episode, then its done marker. Idempotent once done."""
        ep_start, ep_stop = self.source.episode_range(episode)
        with self._lock:
            while episode in self._finishing:  # a retry of a slow call: wait for its result
                self._finished.wait()
            if self._closing and episode not in self.done:
                raise ExportError("not_found", f"export: {self.id} was closed; call open_export "
                                  "again to resume the output")  # fmt: skip
            if episode in self.done:
                held = self._held.pop(episode, None)
                if held is not None:
                    self.budget.release(held.nbytes)
                marker = json.loads(self.layout.marker(episode).read_text())
                return {"episode": episode, "outputs": self._absolute(marker["outputs"])}
            held = self._held.get(episode)
            if held is None:
                raise bad(f"episode: {episode} has no masks; send put_masks before finish_episode")
            self._finishing.add(episode)
        try:
            self._check_roles(episode, held, roles)
            try:
                json.dumps(meta)
            except (TypeError, ValueError) as exc:
                raise bad(f"meta: must be JSON-serialisable ({exc})") from exc
            job = EpisodeJob(episode, ep_start, ep_stop, self.height, self.width, held,
                             dict(roles), self.options, self.layout, dict(meta))  # fmt: skip
            try:
                outputs = run_episode(
                    job, self._writers(), self.source, self.camera_key, self._align()
                )
                relative = {k: os.path.relpath(v, self.layout.root) for k, v in outputs.items()}
                marker = {"episode": episode, "start": ep_start, "stop": ep_stop, "roles": job.roles,
                          "obj_ids": held.obj_ids, "meta": job.meta, "outputs": relative}  # fmt: skip
                atomic_write_json(self.layout.marker(episode), marker, self.options.fsync)
            except OSError as exc:
                raise os_error(exc, f"finish_episode (episode {episode})") from exc
            with self._lock:
                self.done.add(episode)
                self._held.pop(episode, None)
                all_done = len(self.done) == self.source.n_episodes - len(self.source.empty)
            self.budget.release(held.nbytes)
            if all_done and COMBINED.intersection(self.outputs):
                self.combine_ytvis()
            if all_done:
                self.write_zip()
            log.info("episode %d exported (%d frames)", episode, ep_stop - ep_start)
            return {"episode": episode, "outputs": outputs}
        finally:
            with self._lock:
                self._finishing.discard(episode)
                self._finished.notify_all()
                release = self._release_left and not self._finishing
            if release:  # close() gave up waiting for this finish: release what it left
                self._release()

    def _check_roles(self, episode: int, held: HeldEpisode, roles: dict[str, int]) -> None:
        for role, obj in roles.items():
            if role not in ROLES:
                raise bad(f"roles: unknown role {role!r}; valid roles: {', '.join(ROLES)}")
            if obj not in held.obj_ids:
                raise bad(f"roles.{role}: obj_id {obj} has no masks in episode {episode} "
                          f"(held obj_ids: {held.obj_ids})")  # fmt: skip
        for obj, frame in held.missing().items():
            raise bad(f"masks: obj_id {obj} of episode {episode} has no mask for frame {frame} "
                      f"(and maybe later ones); send every frame with put_masks")  # fmt: skip
        if "rgbm" in self.outputs and "target" not in roles:
            raise bad("roles.target: missing; the rgbm output needs roles['target'] = obj_id")
        if "arm_only" in self.outputs:
            if not any(r in roles for r in ARM_ROLES):
                raise bad("roles.arm_left/arm_right: missing; the arm_only output needs an arm")
            grippers = [r for r in GRIPPER_ROLES if r in roles]
            if not grippers:
                raise bad("roles.gripper_left/gripper_right: missing; arm_only subtracts the "
                          "grippers - prompt them (stage B) and name them in roles")  # fmt: skip
            if self.options.require_gripper_mask and not any(
                held.any_pixels(roles[r]) for r in grippers
            ):
                raise bad(f"roles.{grippers[0]}: the gripper masks of episode {episode} are empty "
                          "(stage B produced no gripper mask); re-prompt the grippers, or set "
                          "options.require_gripper_mask=false")  # fmt: skip

    def _writers(self) -> list[Writer]:
        writers: list[Writer] = []
        if "rgbm" in self.outputs:
            writers.append(RgbmWriter(self.rgbm, self.source, self.camera_key, self.options))
        if "arm_only" in self.outputs:
            writers.append(ArmOnlyWriter(self.arm_zarr))
        if "npz" in self.outputs:
            writers.append(NpzWriter())
        if "preview" in self.outputs:
            writers.append(PreviewWriter())
        if "ytvis" in self.outputs:
            writers.append(YtvisWriter())
        if "sam3" in self.outputs:
            writers.append(sam3_out.Sam3Writer(self.source.n_episodes))
        if "grounding" in self.outputs:
            writers.append(grounding_out.GroundingWriter(self.source.n_episodes))
        return writers

    def _align(self) -> int:
        """Blocks line up with the time chunks of the rgbm (or arm_only) array."""
        for buf, key in ((self.rgbm, self.options.rgbm_key), (self.arm_zarr, "arm_only_mask")):
            if buf is not None:
                return int(buf.array(key).chunks[0])
        return 1

    def _absolute(self, outputs: dict[str, str]) -> dict[str, str]:
        return {k: str((self.layout.root / v).resolve()) for k, v in outputs.items()}

    def combine_ytvis(self) -> None:
        """Rebuild the files that cover all done episodes (ytvis/annotations.json, the sam3
        annotation files and the split records of sam3 and grounding)."""
        with self._lock:
            done = sorted(self.done)
        n, opts = self.source.n_episodes, self.options
        try:
            if "ytvis" in self.outputs:
                combine(self.layout, done, opts.fsync)
            if "sam3" in self.outputs:
                sam3_out.combine(self.layout, done, n, opts)
            if "grounding" in self.outputs:
                grounding_out.combine(self.layout, done, n, opts)
        except OSError as exc:
            raise os_error(exc, "combined annotation files (ytvis/sam3/grounding)") from exc

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Wait (at most wait_s) for finishes in progress, write ytvis/annotations.json, drop
        held masks, release the folder lock and the source. Finishes still running after wait_s
        keep them: the last one to end releases them."""
        end = time.monotonic() + wait_s
        with self._lock:
            self._closing = True
            while self._finishing and (left := end - time.monotonic()) > 0:
                self._finished.wait(left)
            busy = sorted(self._finishing)
            self._release_left = bool(busy)
        if busy:
            log.warning("export %s closed while episode(s) %s were still being finished; the "
                        "folder lock is released when they end", self.id, busy)  # fmt: skip
            return
        try:
            if COMBINED.intersection(self.outputs):
                self.combine_ytvis()
            self.write_zip()
        finally:
            self._release()

    def write_zip(self) -> None:
        """options.rgbm_zip: rgbm.zarr.zip from rgbm.zarr (done episodes), rebuilt when the
        last episode is done and at close_export."""
        if not (self.options.rgbm_zip and self.rgbm is not None):
            return
        try:
            with self.rgbm._lock:  # no region write while the folder is packed
                write_zip(self.layout.rgbm_zarr, self.layout.root / "rgbm.zarr.zip",
                          self.options.fsync)  # fmt: skip
        except OSError as exc:
            raise os_error(exc, "rgbm.zarr.zip") from exc

    def _release(self) -> None:
        """Drop held masks, release the folder lock and the source (once)."""
        with self._lock:
            dropped = list(self._held)
            nbytes = sum(h.nbytes for h in self._held.values())
            self._held.clear()
            lock, self._out_lock = self._out_lock, None
        self.budget.release(nbytes)
        if dropped:
            log.warning(
                "export %s closed with unfinished episodes %s (masks dropped)", self.id, dropped
            )
        if lock is not None:
            lock.release()
            self.source.close()
