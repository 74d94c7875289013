"""The library entry points: run a pipeline, dry-run it, report the mesh's status.

Usage:
    from orchestrator.run import run_pipeline
    report = run_pipeline("configs/pipelines/rgbm.yaml", "data/demo/demo.zarr", "out/rgbm",
                          "configs/services.yaml", episodes="0-2")
    report["totals"]["done"], report["totals"]["frames_per_s"]

Everything is validated before any work (config, prompts against the buffer's episodes and
image size, services answering); a problem raises RunError with every issue listed.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.calls import RetryPolicy
from orchestrator.claim import ClaimError, OutputClaim, run_key, session_prefix
from orchestrator.config import (
    PipelineConfig,
    PipelineConfigError,
    _merge,
    as_pipeline,
    raw_pipeline,
)
from orchestrator.plan import (
    DatasetInfo,
    EpisodePlan,
    PlanError,
    build_plans,
    parse_episode_spec,
)
from orchestrator.prompt_frame import FrameError, needs_resolution, resolve_frames
from orchestrator.report import EpisodeRecord, Progress, build_report, write_report
from orchestrator.resume import decide, rerun_note
from orchestrator.scheduler import Mesh, Scheduler
from orchestrator.sources import (
    SourceError,
    check_buffer_tie,
    describe_sources,
    prompts_override,
    vlm_prompt_sources,
)
from protocol.client import Client
from protocol.config import (
    ConfigError,
    ServiceConfig,
    ServicesConfig,
    load_services,
)
from protocol.errors import RemoteError, ServiceUnavailable
from protocol.prompts_file import PromptsFile, PromptsFileError, load_prompts_file
from services.exporter.api import CONTRACT as EXPORTER
from services.reader.api import CONTRACT as READER
from services.sam.api import CONTRACT as SAM

log = logging.getLogger(__name__)

SETUP_TIMEOUT_S = 30.0  # open/status calls before the run starts
PING_TIMEOUT_S = 3.0  # pre-flight ping of every replica


class RunError(Exception):
    """The run cannot start (bad config or prompts, a service missing); nothing was done."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run after a clean shutdown; `.report` is what was written."""

    def __init__(self, report: dict):
        super().__init__("interrupted")
        self.report = report


def _services(services_cfg: ServicesConfig | str | os.PathLike) -> ServicesConfig:
    if isinstance(services_cfg, ServicesConfig):
        return services_cfg
    return load_services(services_cfg)


def _needs_vlm(cfg: PipelineConfig) -> bool:
    return cfg.pipeline == "rgbm" and cfg.prompt.source == "vlm"


def _needed(cfg: PipelineConfig) -> list[str]:
    need = ["reader", "sam", "exporter"]
    if _needs_vlm(cfg):
        need.append("vlm")
    return need


def _check_services(cfg: PipelineConfig, svcs: ServicesConfig) -> None:
    missing = [n for n in _needed(cfg) if n not in svcs.services]
    if missing:
        raise RunError(f"{svcs.path}: services.{missing[0]}: missing; the {cfg.pipeline} pipeline "
                       f"needs {', '.join(_needed(cfg))}")  # fmt: skip


def replica_client(sc: ServiceConfig, endpoint: str, **kw: Any) -> Client:
    """A Client bound to ONE replica of a service (SAM sessions live on one replica)."""
    return sc.client(endpoints=[endpoint], **kw)


def _load_prompts(cfg: PipelineConfig) -> PromptsFile | None:
    if not cfg.prompts_file:
        return None
    try:
        pf = load_prompts_file(cfg.prompts_file)
    except PromptsFileError as e:
        raise RunError(f"prompts_file: {e}") from None
    check_prompts_use(cfg, pf)
    return pf


def check_prompts_use(cfg: PipelineConfig, pf: PromptsFile) -> None:
    """An rgbm config whose prompt.source is vlm or text reads a prompts file ONLY for its
    per-episode `frame:` overrides: a target box (or objects) there would be silently
    ignored, so such a file is refused rather than run with prompts it does not use."""
    if cfg.pipeline != "rgbm" or cfg.prompt.source == "file":
        return
    for ep, entry in sorted(pf.episodes.items()):
        for key, val in (("target", entry.target), ("objects", entry.objects),
                         ("refinements", entry.refinements)):  # fmt: skip
            if val:
                raise RunError(
                    f"prompts_file: {pf.source}: episodes.{ep}.{key} would not be read: "
                    f"prompt.source is {cfg.prompt.source!r}, which takes only per-episode "
                    "`frame:` overrides from a prompts file; set prompt.source: file to use "
                    "its boxes (--prompts FILE does both), or remove the entry"
                )


def _setup_call(client: Client, op: str, body: dict, what: str) -> dict:
    try:
        return client.call(op, body, timeout=SETUP_TIMEOUT_S)
    except ServiceUnavailable as e:
        raise RunError(
            f"{what}: the service does not answer ({e}); start it with `make up`"
        ) from None
    except RemoteError as e:
        raise RunError(f"{what}: {e}") from None


def _preflight(cfg: PipelineConfig, svcs: ServicesConfig) -> list[str]:
    """Fail fast (seconds, not retries x timeouts) when a needed service does not answer.
    Every replica of reader/vlm/exporter and at least one SAM replica must answer `ping`;
    returns the SAM endpoints that answered (the run uses those)."""
    down = []
    sam_up: list[str] = []
    pings = []  # all in flight at once: the whole check takes at most one PING_TIMEOUT_S
    for name in _needed(cfg):
        sc = svcs.services[name]
        for ep in sc.endpoints:
            c = replica_client(sc, ep, retries=0)
            pings.append((name, ep, c, c.submit("ping", {}, timeout=PING_TIMEOUT_S)))
    for name, ep, c, fut in pings:
        try:
            fut.result()
            if name == "sam":
                sam_up.append(ep)
        except (RemoteError, ServiceUnavailable):
            down.append(f"{name} at {ep}")
        finally:
            c.close()
    if any(not d.startswith("sam ") for d in down) or not sam_up:
        raise RunError(f"{', '.join(down)}: not answering; start the services (`make up`) or fix "
                       f"{svcs.path}")  # fmt: skip
    for d in down:
        log.warning("%s does not answer; running on the other replicas", d)
    return sam_up


@dataclass
class Prepared:
    """What a run starts from, all validated (see prepare())."""

    cfg: PipelineConfig
    svcs: ServicesConfig
    ds: DatasetInfo
    plans: list[EpisodePlan]
    sam_live: list[str]
    prompts: PromptsFile | None = None
    vlm_rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # where config and prompts come from
    empty: list[int] = field(default_factory=list)  # selected episodes with no frames


def _config(pipeline_cfg: Any, overrides: dict | None,
            prompts_file: str | None) -> tuple[PipelineConfig, str | None]:  # fmt: skip
    """The pipeline config with overrides and --prompts applied (prompts_override)."""
    try:
        raw = raw_pipeline(pipeline_cfg)
        over, note = prompts_override(raw, prompts_file)
        return as_pipeline(pipeline_cfg, _merge(overrides or {}, over) or None), note
    except (PipelineConfigError, SourceError) as e:
        raise RunError(str(e)) from None


def prepare(pipeline_cfg: Any, input: str, services_cfg: Any, episodes: Any = None,
            overrides: dict | None = None, prompts_file: str | None = None) -> Prepared:  # fmt: skip
    """Validate config, services config, buffer and prompts (tied to this buffer); check the
    services answer. Raises RunError listing the problems."""
    cfg, note = _config(pipeline_cfg, overrides, prompts_file)
    try:
        svcs = _services(services_cfg)
    except ConfigError as e:
        raise RunError(str(e)) from None
    _check_services(cfg, svcs)
    prompts = _load_prompts(cfg)
    sam_live = _preflight(cfg, svcs)
    reader = svcs.services["reader"].client(timeout=SETUP_TIMEOUT_S)
    try:
        path = str(Path(input).resolve())
        reply = _setup_call(reader, "open", READER.request("open", path=path),
                            f"reader: open {input}")  # fmt: skip
        try:
            ds = DatasetInfo.from_open(reply, path=path, camera_key=cfg.camera_key)
            eps = parse_episode_spec(episodes, ds.n_episodes)
            empty = [e for e in eps if ds.bounds(e)[1] <= ds.bounds(e)[0]]
            eps = [e for e in eps if e not in empty]
            if not eps:
                raise PlanError(f"--episodes: every selected episode of {path} is empty "
                                f"(no frames): {empty}")  # fmt: skip
            if prompts is not None:
                check_buffer_tie(prompts, ds)
            rows = vlm_prompt_sources(svcs, ds) if _needs_vlm(cfg) else []
            frames, errors = None, []
            if needs_resolution(cfg, prompts, eps):  # last / negative / grasp / overrides
                frames, errors = resolve_frames(cfg, ds, eps, prompts, reply.get("keys") or {},
                                                reader, RetryPolicy.from_run(cfg.run))  # fmt: skip
            plans = build_plans(cfg, ds, eps, prompts, frames, errors)
        except (PlanError, SourceError, FrameError) as e:
            raise RunError(str(e)) from None
    finally:
        reader.close()
    notes = [note] if note else []
    notes.append(describe_sources(cfg, prompts, rows))
    if empty:
        notes.append(f"skipping empty episode(s) {empty}: meta/episode_ends repeats a value "
                     "there (no frames to mask)")  # fmt: skip
    return Prepared(cfg, svcs, ds, plans, sam_live, prompts, rows, notes, empty)


def run_pipeline(pipeline_cfg: PipelineConfig | dict | str | os.PathLike, input: str,
                 output: str, services_cfg: ServicesConfig | str | os.PathLike,
                 episodes: str | list[int] | None = None, *, prompts_file: str | None = None,
                 fail_fast: bool | None = None, progress: bool | None = None,
                 echo: Callable[[str], None] | None = None) -> dict:  # fmt: skip
    """Run the pipeline over the selected episodes; writes <output>/report.json, returns it.

    Finished episodes (the exporter's `status`) are skipped. Ctrl-C stops cleanly: SAM sessions
    are closed, finished episodes kept, the report written, then KeyboardInterrupt re-raised.
    `echo` gets one line per note (which services config and prompts the run uses).
    """
    overrides: dict[str, Any] = {}
    run_o = {k: v for k, v in (("fail_fast", fail_fast), ("progress", progress)) if v is not None}
    if run_o:
        overrides["run"] = run_o
    out_dir = str(Path(output).resolve())
    run_id = f"{run_key(out_dir)}-{uuid.uuid4().hex[:8]}"  # sessions: orc-<run_id>-e<ep>-a<n>
    try:
        claim = OutputClaim.acquire(out_dir, run_id)  # one orchestrator per output, first
    except ClaimError as e:
        raise RunError(str(e)) from None
    try:
        pr = prepare(pipeline_cfg, input, services_cfg, episodes, overrides, prompts_file)
        svcs, sam_live = pr.svcs, pr.sam_live
        for n in pr.notes:
            log.info("%s", n)
            if echo is not None:
                echo(n)
        closed = close_stale_sessions(svcs, sam_live, session_prefix(out_dir))
        if closed:
            n = f"closed {len(closed)} SAM session(s) left open by an earlier run of this output"
            pr.notes.append(n)
            if echo is not None:
                echo(n)
        return _run(pr, input, output, out_dir, run_id)
    finally:
        claim.release()


def close_stale_sessions(svcs: ServicesConfig, endpoints: list[str], prefix: str) -> list[str]:
    """close_sessions(prefix) on every live SAM replica: sessions of an earlier run of the same
    output (killed before it could close them). Only called while holding the output's claim,
    so no live run owns them. A replica without the op is skipped with a warning."""
    closed: list[str] = []
    sc = svcs.services["sam"]
    for ep in endpoints:
        c = replica_client(sc, ep, timeout=SETUP_TIMEOUT_S, retries=0)
        try:
            body = SAM.request("close_sessions", prefix=prefix)
            closed += list(c.call("close_sessions", body).get("closed", []))
        except (RemoteError, ServiceUnavailable) as e:
            log.warning("sam %s: close_sessions(%s) failed (%s); sessions of an earlier run of "
                        "this output stay until they expire", ep, prefix, e)  # fmt: skip
        finally:
            c.close()
    if closed:
        log.warning("closed %d SAM session(s) of an earlier run of this output: %s", len(closed),
                    closed)  # fmt: skip
    return closed


def _run(pr: Prepared, input: str, output: str, out_dir: str, run_id: str) -> dict:
    """The run itself, under the output's claim."""
    cfg, svcs, ds, plans, sam_live = pr.cfg, pr.svcs, pr.ds, pr.plans, pr.sam_live
    log.info("run %s: pipeline %s, %d episode(s) of %s -> %s; config %s", run_id, cfg.pipeline,
             len(plans), input, output, cfg.to_dict())  # fmt: skip
    open_body = EXPORTER.request(
        "open_export", output=out_dir, source=ds.path, camera_key=ds.camera_key,
        outputs=list(cfg.effective_outputs),
        options={**cfg.effective_export_options(), "pipeline": cfg.result_dict()},
    )  # fmt: skip
    exporter = svcs.services["exporter"].client(timeout=SETUP_TIMEOUT_S)
    try:  # finished episodes: the exporter's `status` (open_export resumes the same folder)
        st = _setup_call(exporter, "status", EXPORTER.request("status", output=out_dir),
                         f"exporter: status {output}")  # fmt: skip
        opened = _setup_call(exporter, "open_export", open_body, f"exporter: open_export {output}")
    finally:
        exporter.close()
    done = {int(e) for e in [*st.get("done", []), *opened.get("done", [])]}
    records = st.get("records") or {}
    todo, skipped, reopen = decide(plans, done, records)
    skipped += [EpisodeRecord(e, 0, result="skipped", note="empty episode (no frames)")
                for e in pr.empty]  # fmt: skip
    if reopen:
        _reopen(svcs, opened["export"], reopen, records)
    if skipped:
        log.info("skipping %d episode(s): %s", len(skipped), [r.episode for r in skipped])
    sam = svcs.services["sam"]
    mesh = Mesh(
        reader=lambda: svcs.services["reader"].client(),
        sam_endpoints=sam_live,
        sam=lambda ep: replica_client(sam, ep),
        exporter=lambda: svcs.services["exporter"].client(),
        vlm=(lambda: svcs.services["vlm"].client()) if any(p.vlm_prompts for p in todo) else None,
    )
    bar = Progress(cfg.run.progress, episodes=len(todo), frames=sum(p.n_frames for p in todo))
    sched = Scheduler(todo, mesh, ds, run_id=run_id, cfg=cfg, export_open=open_body,
                      export_id=opened["export"], progress=bar)  # fmt: skip
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    try:
        results = sched.run()
    finally:
        bar.close()
    for p in reopen:
        results[p.episode].note = rerun_note(p, records)
    meta = {"pipeline": cfg.pipeline, "input": ds.path, "output": out_dir, "run_id": run_id,
            "started": started, "interrupted": sched.interrupted, "config": cfg.to_dict(),
            "services_config": svcs.path, "sources": pr.notes}  # fmt: skip
    threads = {"read": cfg.run.reader_threads, "vlm": cfg.run.reader_threads,
               "sam": len(sam_live), "export": 1}  # fmt: skip
    report = build_report([*results.values(), *skipped], meta=meta, wall_s=sched.wall_s,
                          busy=sched.busy, threads=threads)  # fmt: skip
    path = write_report(report, out_dir)
    log.info("report written to %s", path)
    if sched.interrupted:
        raise RunInterrupted(report)
    return report


def _reopen(svcs: ServicesConfig, export_id: str, plans: list[EpisodePlan], records: dict) -> None:
    """Remove the done markers of episodes whose prompts changed, so they are exported again."""
    exporter = svcs.services["exporter"].client(timeout=SETUP_TIMEOUT_S)
    try:
        for p in plans:
            body = EXPORTER.request("reopen_episode", export=export_id, episode=p.episode)
            _setup_call(exporter, "reopen_episode", body, f"exporter: reopen_episode {p.episode}")
            log.warning("episode %d: %s", p.episode, rerun_note(p, records))
    finally:
        exporter.close()
