"""Where a run's prompts come from, and the check that they were written for this buffer.

Usage:
    overrides, note = prompts_override(base_cfg, "mine.yaml")   # what --prompts changes
    check_buffer_tie(prompts, ds)            # RunError unless the file names this buffer
    rows = vlm_prompt_sources(svcs, ds)      # per VLM replica: backend and file; RunError when
                                             # its `prompts` backend answers for another buffer
    print(describe_sources(cfg, prompts, rows))

A prompts file carries a `buffer` entry (docs/prompts-file.md): the fingerprint of the episode
boundaries, camera key and frame size it was written for. No run uses a file without one, or
one for another buffer: coordinates of another buffer's frames would mask the wrong thing and
still look like success.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config import PipelineConfig
from orchestrator.plan import DatasetInfo
from protocol.config import ServicesConfig
from protocol.errors import RemoteError, ServiceUnavailable
from protocol.prompts_file import PromptsFile, buffer_fingerprint

INFO_TIMEOUT_S = 10.0


class SourceError(Exception):
    """The prompts cannot be used for this input (wrong or unknown buffer)."""


def dataset_fingerprint(ds: DatasetInfo) -> str:
    return buffer_fingerprint(ds.episode_ends, ds.camera_key, ds.height, ds.width)


def buffer_entry_text(ds: DatasetInfo) -> str:
    """The `buffer:` entry to paste into a prompts file written for `ds`."""
    return (
        f"buffer: {{fingerprint: {dataset_fingerprint(ds)}, camera_key: {ds.camera_key}, "
        f"episodes: {ds.n_episodes}, size: [{ds.width}, {ds.height}], path: {ds.path}}}"
    )


def _input_desc(ds: DatasetInfo) -> str:
    return (f"{ds.path} (fingerprint {dataset_fingerprint(ds)[:12]}, camera data/{ds.camera_key} "
            f"{ds.width}x{ds.height}, {ds.n_episodes} episodes)")  # fmt: skip


def prompts_override(raw: dict, prompts_file: str | None) -> tuple[dict, str | None]:
    """The config overrides `--prompts FILE` stands for, and a note saying what it changed;
    `raw` is the config as plain data (config.raw_pipeline). rgbm: the target boxes then come
    from the file (prompt.source: file); with prompt.source text there is nothing a file could
    give, so it is refused."""
    if prompts_file is None:
        return {}, None
    over: dict[str, Any] = {"prompts_file": prompts_file}
    note = f"prompts: file {prompts_file} (--prompts)"
    prompt = raw.get("prompt") if isinstance(raw.get("prompt"), dict) else {}
    if raw.get("pipeline") == "rgbm":
        src, origin = prompt.get("source", "vlm"), raw.get("origin", "the config")
        if src == "text":
            raise SourceError(
                f"--prompts: {origin} has prompt.source: text (a SAM3 text prompt); a "
                "prompts file is not read by it. Drop --prompts, or use a config with "
                "prompt.source: file (configs/pipelines/rgbm_file.yaml)"
            )
        if src == "vlm":
            over["prompt"] = {"source": "file"}
            note += (f"; the target boxes come from its episodes.<i>.target, not from the VLM "
                     f"({origin} says prompt.source: vlm; --prompts sets it to file)")  # fmt: skip
    return over, note


def check_buffer_tie(pf: PromptsFile, ds: DatasetInfo, who: str = "") -> None:
    """SourceError unless `pf` says it was written for this buffer (fingerprint match)."""
    fp = dataset_fingerprint(ds)
    lead = f"{who}{pf.source}"
    if pf.buffer is None:
        raise SourceError(
            f"{lead}: buffer: missing; the prompts file does not say which replay buffer it was "
            f"written for, so its coordinates may be another buffer's. If it was written for "
            f"{_input_desc(ds)}, add this line at the top level of the file:\n    "
            f"{buffer_entry_text(ds)}\n  (`python -m orchestrator fingerprint --input "
            f"{ds.path}` prints it; docs/prompts-file.md)"
        )
    if pf.buffer.fingerprint != fp:
        why = ""
        if pf.buffer.camera_key != ds.camera_key:
            why = (f" It is for camera data/{pf.buffer.camera_key}, the run uses "
                   f"data/{ds.camera_key} (camera_key / --camera-key).")  # fmt: skip
        raise SourceError(
            f"{lead}: buffer: written for {pf.buffer.describe()}, not for the input "
            f"{_input_desc(ds)}.{why} Pass the prompts file written for this buffer "
            "(--prompts FILE), or write one (docs/prompts-file.md)"
        )


def vlm_prompt_sources(svcs: ServicesConfig, ds: DatasetInfo | None) -> list[dict]:
    """Ask every VLM replica what answers its `bbox`; for the `prompts` backend check that its
    file is this buffer's (SourceError naming the replica, its file and the fix)."""
    sc = svcs.services["vlm"]
    rows = []
    for ep in sc.endpoints:
        c = sc.client(endpoints=[ep], timeout=INFO_TIMEOUT_S, retries=0)
        try:
            info = c.call("info", {})
        except (RemoteError, ServiceUnavailable) as e:
            raise SourceError(f"vlm at {ep}: info failed ({e}); start it with `make up`") from None
        finally:
            c.close()
        vi = info.get("vlm") or {}
        row = {"endpoint": ep, "backend": info.get("backend"), "prompts_file": vi.get("prompts_file"),
               "buffer": vi.get("buffer")}  # fmt: skip
        rows.append(row)
        if row["backend"] != "prompts" or ds is None:
            continue
        where = f"vlm at {ep} (backend prompts, file {row['prompts_file']})"
        fix = ("pass the prompts file written for this buffer with --prompts FILE (the run then "
               "reads the target boxes from it), or restart the vlm with that file "
               "(configs/services.yaml: services.vlm.options.prompts_file)")  # fmt: skip
        tie = row["buffer"]
        if not tie:
            raise SourceError(f"{where}: its prompts file has no buffer entry, so its boxes may "
                              f"be another buffer's; the input is {_input_desc(ds)}; {fix}")  # fmt: skip
        if tie.get("fingerprint") != dataset_fingerprint(ds):
            raise SourceError(
                f"{where}: its prompts are for a buffer with fingerprint "
                f"{str(tie.get('fingerprint'))[:12]} (camera data/{tie.get('camera_key')}, "
                f"size {tie.get('size')}, {tie.get('episodes')} episodes, path {tie.get('path')}), "
                f"not for the input {_input_desc(ds)}; {fix}"
            )
    return rows


def describe_sources(cfg: PipelineConfig, pf: PromptsFile | None, vlm_rows: list[dict]) -> str:
    """One line: where this run's prompts come from."""
    if cfg.pipeline == "rgbm" and cfg.prompt.source == "vlm":
        reps = "; ".join(
            f"{r['endpoint']} backend {r['backend']}"
            + (f" answering from {r['prompts_file']}" if r["backend"] == "prompts" else "")
            for r in vlm_rows
        )
        return f"prompts: target boxes from the VLM's bbox on frame {cfg.prompt.frame} ({reps})"
    if cfg.pipeline == "rgbm" and cfg.prompt.source == "text":
        return f"prompts: SAM3 text {cfg.prompt.text!r} on frame {cfg.prompt.frame} ({cfg.origin})"
    if pf is not None:
        return f"prompts: file {pf.source} ({pf.buffer.describe() if pf.buffer else 'no buffer'})"
    return f"prompts: inline in {cfg.origin} (arm_only.objects / bootstrap_text)"
