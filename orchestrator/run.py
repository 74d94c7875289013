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

from orchestrator.config import PipelineConfig, PipelineConfigError, as_pipeline
from orchestrator.plan import (
    DatasetInfo,
    EpisodePlan,
    PlanError,
    build_plans,
    describe_plans,
    parse_episode_spec,
)
from orchestrator.report import EpisodeRecord, Progress, build_report, write_report
from orchestrator.scheduler import Mesh, Scheduler
from orchestrator.sources import (
    SourceError,
    buffer_entry_text,
    check_buffer_tie,
    dataset_fingerprint,
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
from services.vlm.prompts_file import PromptsFile, PromptsFileError, load_prompts_file

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
        return load_prompts_file(cfg.prompts_file)
    except PromptsFileError as e:
        raise RunError(f"prompts_file: {e}") from None


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
    """The pipeline config with overrides; --prompts applied (prompts_override)."""
    try:
        base = as_pipeline(pipeline_cfg, overrides)
        over, note = prompts_override(base, prompts_file)
        return (as_pipeline(base, over) if over else base), note
    except PipelineConfigError as e:
        raise RunError(str(e)) from None
    except SourceError as e:
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
        reply = _setup_call(reader, "open", {"path": path}, f"reader: open {input}")
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
            plans = build_plans(cfg, ds, eps, prompts)
        except (PlanError, SourceError) as e:
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
    pr = prepare(pipeline_cfg, input, services_cfg, episodes, overrides, prompts_file)
    cfg, svcs, ds, plans, sam_live = pr.cfg, pr.svcs, pr.ds, pr.plans, pr.sam_live
    for n in pr.notes:
        log.info("%s", n)
        if echo is not None:
            echo(n)
    run_id = uuid.uuid4().hex[:8]
    log.info("run %s: pipeline %s, %d episode(s) of %s -> %s; config %s", run_id, cfg.pipeline,
             len(plans), input, output, cfg.to_dict())  # fmt: skip
    out_dir = str(Path(output).resolve())
    open_body = {"output": out_dir, "source": ds.path, "camera_key": ds.camera_key,
                 "outputs": list(cfg.effective_outputs),
                 "options": {**cfg.effective_export_options(), "pipeline": cfg.result_dict()}}  # fmt: skip
    exporter = svcs.services["exporter"].client(timeout=SETUP_TIMEOUT_S)
    try:  # finished episodes: the exporter's `status` (open_export resumes the same folder)
        st = _setup_call(exporter, "status", {"output": out_dir}, f"exporter: status {output}")
        opened = _setup_call(exporter, "open_export", open_body, f"exporter: open_export {output}")
    finally:
        exporter.close()
    done = {int(e) for e in [*st.get("done", []), *opened.get("done", [])]}
    todo = [p for p in plans if p.episode not in done]
    skipped = [
        EpisodeRecord(p.episode, p.n_frames, result="skipped") for p in plans if p.episode in done
    ]
    skipped += [EpisodeRecord(e, 0, result="skipped", error="empty episode (no frames)")
                for e in pr.empty]  # fmt: skip
    if skipped:
        log.info("skipping %d finished episode(s): %s", len(skipped), [r.episode for r in skipped])
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
        records = sched.run()
    finally:
        bar.close()
    meta = {"pipeline": cfg.pipeline, "input": ds.path, "output": out_dir, "run_id": run_id,
            "started": started, "interrupted": sched.interrupted, "config": cfg.to_dict(),
            "services_config": svcs.path, "sources": pr.notes}  # fmt: skip
    threads = {"read": cfg.run.reader_threads, "vlm": cfg.run.reader_threads,
               "sam": len(sam_live), "export": 1}  # fmt: skip
    report = build_report([*records.values(), *skipped], meta=meta, wall_s=sched.wall_s,
                          busy=sched.busy, threads=threads)  # fmt: skip
    path = write_report(report, out_dir)
    log.info("report written to %s", path)
    if sched.interrupted:
        raise RunInterrupted(report)
    return report


def _kinds(plans: list[EpisodePlan]) -> set[str]:
    kinds: set[str] = set()
    for p in plans:
        for s in p.stages:
            for op in s.prompts:
                kinds |= {k for k, v in (("text", op.text), ("box", op.box or op.vlm),
                                         ("points", op.points)) if v}  # fmt: skip
    return kinds


def mesh_status(svcs: ServicesConfig, names: list[str] | None = None) -> list[dict]:
    """Ask every replica of every service for `info`; one row per replica (error on failure)."""
    rows = []
    for name, sc in svcs.services.items():
        if names is not None and name not in names:
            continue
        for ep in sc.endpoints:
            c = replica_client(sc, ep, timeout=3.0, retries=0)
            try:
                info = c.call("info", {})
                rows.append({"service": name, "endpoint": ep, "ok": True, "info": info})
            except (RemoteError, ServiceUnavailable) as e:
                rows.append({"service": name, "endpoint": ep, "ok": False, "error": str(e)})
            finally:
                c.close()
    return rows


def format_status(rows: list[dict]) -> str:
    lines = [f"{'service':<9} {'endpoint':<24} {'state':<6} detail"]
    for r in rows:
        if not r["ok"]:
            lines.append(f"{r['service']:<9} {r['endpoint']:<24} {'DOWN':<6} {r['error']}")
            continue
        i = r["info"]
        detail = f"backend={i.get('backend')} v{i.get('version')} queue={i.get('queue_depth')} in_flight={i.get('in_flight')}"
        if "sessions" in i:
            detail += f" sessions={len(i['sessions'])}"
        lines.append(f"{r['service']:<9} {r['endpoint']:<24} {'up':<6} {detail}")
    return "\n".join(lines)


def dry_run(pipeline_cfg: Any, input: str, output: str, services_cfg: Any,
            episodes: Any = None, *, prompts_file: str | None = None) -> str:  # fmt: skip
    """Validate config and prompts, check every service answers, return the plan as text:
    which services config, where every prompt comes from (file and entry, or the VLM
    endpoint and backend), what would run."""
    cfg, _ = _config(pipeline_cfg, None, prompts_file)
    try:
        svcs = _services(services_cfg)
    except ConfigError as e:
        raise RunError(str(e)) from None
    _check_services(cfg, svcs)
    rows = mesh_status(svcs, _needed(cfg))
    down = [r for r in rows if not r["ok"]]
    if down:
        raise RunError(
            "service(s) not answering (start them with `make up`):\n" + format_status(rows)
        )
    pr = prepare(pipeline_cfg, input, svcs, episodes, None, prompts_file)
    cfg, ds, plans = pr.cfg, pr.ds, pr.plans
    problems = []
    need = _kinds(plans)
    for r in rows:
        if r["service"] == "sam":
            have = set((r["info"].get("capabilities") or {}).get("prompt_kinds", need))
            if need - have:
                problems.append(f"sam {r['endpoint']} (backend {r['info'].get('backend')}) does not "
                                f"support prompt kind(s) {sorted(need - have)}; it supports "
                                f"{sorted(have)} - use another backend or prompt source")  # fmt: skip
    if problems:
        raise RunError("\n".join(problems))
    exporter = svcs.services["exporter"].client(timeout=SETUP_TIMEOUT_S)
    try:
        st = _setup_call(
            exporter, "status", {"output": str(Path(output).resolve())}, "exporter: status"
        )
    finally:
        exporter.close()
    done = {int(e) for e in st.get("done", [])}
    todo = [p for p in plans if p.episode not in done]
    head = [
        f"pipeline {cfg.pipeline} ({cfg.origin}): OK",
        f"input {ds.path}: {ds.n_episodes} episodes, camera data/{ds.camera_key} "
        f"{ds.width}x{ds.height}, fingerprint {dataset_fingerprint(ds)}",
        *pr.notes,
        f"output {output}: outputs {list(cfg.effective_outputs)}, {len(done & {p.episode for p in plans})} "
        f"selected episode(s) already done",
        f"services: all {len(rows)} replica(s) answer; SAM replicas {len(svcs.services['sam'].endpoints)}",
        f"plan: {len(todo)} episode(s), {sum(p.n_frames for p in todo)} frames to run; "
        f"propagate {cfg.direction} (each frame takes each object's mask from the nearest prompted "
        "keyframe; ties go to the forward pass)",
    ]
    return (
        "\n".join(head)
        + "\n"
        + format_status(rows)
        + "\n"
        + describe_plans(plans, done, cfg.direction)
    )


def fingerprint(input: str, services_cfg: Any, camera_key: str | None = None) -> str:
    """The `buffer:` entry of a prompts file written for `input` (asks the reader to open it)."""
    svcs = _services(services_cfg)
    reader = svcs.services["reader"].client(timeout=SETUP_TIMEOUT_S)
    try:
        path = str(Path(input).resolve())
        reply = _setup_call(reader, "open", {"path": path}, f"reader: open {input}")
    finally:
        reader.close()
    try:
        ds = DatasetInfo.from_open(reply, path=path, camera_key=camera_key)
    except PlanError as e:
        raise RunError(str(e).replace("set camera_key in the pipeline config",
                                      "pass --camera-key"))  from None  # fmt: skip
    return buffer_entry_text(ds)
