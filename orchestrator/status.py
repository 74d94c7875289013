"""Looking without running: dry-run, the mesh's status, an output's progress, fingerprints.

Usage:
    from orchestrator.status import dry_run, mesh_status, format_status, export_progress
    print(dry_run("configs/pipelines/rgbm.yaml", "mine.zarr", "out/rgbm", "configs/services.yaml"))
    print(format_status(mesh_status(load_services("configs/services.yaml"))))
    print(export_progress(svcs, "out/rgbm"))      # N of M episode(s) done, during a run too
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.claim import describe_holder, holder
from orchestrator.plan import DatasetInfo, EpisodePlan, PlanError, describe_plans
from orchestrator.resume import decide
from orchestrator.run import (
    SETUP_TIMEOUT_S,
    RunError,
    _check_services,
    _config,
    _needed,
    _services,
    _setup_call,
    prepare,
    replica_client,
)
from orchestrator.sources import buffer_entry_text, dataset_fingerprint
from protocol.config import ConfigError, ServicesConfig
from protocol.errors import RemoteError, ServiceUnavailable
from services.exporter.api import CONTRACT as EXPORTER
from services.reader.api import CONTRACT as READER


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
        body = EXPORTER.request("status", output=str(Path(output).resolve()))
        st = _setup_call(exporter, "status", body, "exporter: status")
    finally:
        exporter.close()
    done = {int(e) for e in st.get("done", [])}
    todo, _skipped, reopen = decide(plans, done, st.get("records") or {})
    held = holder(str(Path(output).resolve()))
    head = [
        f"pipeline {cfg.pipeline} ({cfg.origin}): OK",
        f"input {ds.path}: {ds.n_episodes} episodes, camera data/{ds.camera_key} "
        f"{ds.width}x{ds.height}, fingerprint {dataset_fingerprint(ds)}",
        *pr.notes,
        f"output {output}: outputs {list(cfg.effective_outputs)}, {len(done & {p.episode for p in plans})} "
        f"selected episode(s) already done"
        + (
            f", {len(reopen)} of them re-run (prompts changed): {[p.episode for p in reopen]}"
            if reopen
            else ""
        ),
        *(
            [f"output claim: held now by {describe_holder(held)}; a run would be refused"]
            if held
            else []
        ),
        f"services: all {len(rows)} replica(s) answer; SAM replicas {len(svcs.services['sam'].endpoints)}",
        f"plan: {len(todo)} episode(s), {sum(p.n_frames for p in todo)} frames to run; "
        f"propagate {cfg.direction}"
        + (
            " (backward from a prompt on the last frame, else both)"
            if cfg.direction == "auto"
            else ""
        )
        + " (each frame takes each object's mask from the nearest prompted "
        "keyframe; ties go to the forward pass)",
    ]
    return (
        "\n".join(head)
        + "\n"
        + format_status(rows)
        + "\n"
        + describe_plans(plans, done - {p.episode for p in reopen}, cfg.direction)
    )


def fingerprint(input: str, services_cfg: Any, camera_key: str | None = None) -> str:
    """The `buffer:` entry of a prompts file written for `input` (asks the reader to open it)."""
    svcs = _services(services_cfg)
    reader = svcs.services["reader"].client(timeout=SETUP_TIMEOUT_S)
    try:
        path = str(Path(input).resolve())
        reply = _setup_call(reader, "open", READER.request("open", path=path),
                            f"reader: open {input}")  # fmt: skip
    finally:
        reader.close()
    try:
        ds = DatasetInfo.from_open(reply, path=path, camera_key=camera_key)
    except PlanError as e:
        raise RunError(str(e).replace("set camera_key in the pipeline config",
                                      "pass --camera-key"))  from None  # fmt: skip
    return buffer_entry_text(ds)


def export_progress(svcs: ServicesConfig, output: str) -> str:
    """What an output folder holds now, from the exporter's done records (so it shows progress
    during a run, before report.json is written): `N of M episodes done: [...]`."""
    out = str(Path(output).resolve())
    st = None
    if "exporter" in svcs.services:
        c = svcs.services["exporter"].client(timeout=5.0, retries=0)
        try:
            st = c.call("status", EXPORTER.request("status", output=out))
        except (RemoteError, ServiceUnavailable):
            st = None
        finally:
            c.close()
    if st is None:  # the exporter is down: read the done records of the folder itself
        done_dir = Path(out) / "done"
        if not Path(out).exists():
            return f"{output}: no such output folder yet"
        done = (
            sorted(int(p.stem) for p in done_dir.glob("[0-9]*.json")) if done_dir.is_dir() else []
        )
        return f"{output}: {len(done)} episode(s) done {_short(done)} (read from {done_dir})"
    if not st.get("exists"):
        return f"{output}: no such output folder yet"
    done, n = list(st.get("done", [])), st.get("n_episodes")
    report = Path(out) / "report.json"
    tail = (
        "" if report.is_file() else " (no report.json yet: a run in progress, or one that stopped)"
    )
    return f"{output}: {len(done)} of {n} episode(s) done {_short(done)}{tail}"


def _short(eps: list[int]) -> str:
    return str(eps) if len(eps) <= 20 else f"{eps[:20]}..."
