"""The READMEs' commands, run (issue 14 item 18: the old test only checked that paths exist).

Every `python -m MODULE [SUB]` line of a ```bash block of the READMEs is run: the cheap ones as
written, in a sandbox folder (configs/ linked from the repo, data/demo = a small generated
buffer, services on free ports instead of the fixed ones), and the rest (a GPU, vLLM, a
remote host, the whole test suite) with `--help` at least, so their entry point, arguments
and module name are real. `make demo` and `make test` are run by CI (.ci/run) itself.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from protocol.spawn import start
from tests.integration.test_orchestrator_pipeline import demo_buffer, local_mesh
from tests.unit.test_readme import READMES

ROOT = Path(__file__).resolve().parents[2]
NOT_RUN = {  # command -> why it only gets --help here
    "services.vlm --backend vllm": "needs vLLM and a GPU",
    "services.vlm --backend openai": "needs a chat-completions server",
    "services.remote.yaml": "needs the remote GPU host gpu-box",
    "python3 -m pytest": "the test suite itself",
    "tools.davis_run": "reads DAVIS, minutes of work (tests/e2e covers it)",
    "tools.sam3_sets": "needs the DAVIS run first",
    "tools.grounding": "needs the DAVIS run first",
}


def commands(readme: Path) -> list[str]:
    """Every command line of the README's bash blocks, continuations joined, comments cut."""
    out, inside, buf = [], False, ""
    for line in readme.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() in ("```bash", "```sh", "```shell") if not inside else False
            continue
        if not inside:
            continue
        text = line.split("#", 1)[0].rstrip()
        if text.endswith("\\"):
            buf += text[:-1] + " "
            continue
        buf = (buf + text).strip()
        if buf:
            out.append(buf)
        buf = ""
    return out


def python_lines() -> list[tuple[str, str]]:
    return [(p.relative_to(ROOT).as_posix(), c) for p in READMES for c in commands(p)
            if re.search(r"\bpython3? -m ", c)]  # fmt: skip


def _env(cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SERVICES_CONFIG", None)
    return env


def _run(cmd: str | list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    args = shlex.split(cmd) if isinstance(cmd, str) else cmd
    if args[0] in ("python", "python3"):
        args[0] = sys.executable
    return subprocess.run(args, cwd=cwd, env=_env(cwd), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _strip_optional(cmd: str) -> str:
    return re.sub(r"\s*\[[^\]]*\]", "", cmd)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """cwd for the README's commands: configs/ from the repo, data/demo a small buffer, and a
    mesh on free ports whose VLM answers from that buffer's prompts."""
    box = tmp_path_factory.mktemp("readme")
    (box / "configs").symlink_to(ROOT / "configs")
    data = demo_buffer(box / "data" / "demo")
    with local_mesh(box, prompts=data["prompts"]) as m:
        yield box, m, data


def test_every_python_command_has_a_working_entry_point(tmp_path):
    lines = python_lines()
    assert len(lines) >= 8, lines
    seen = set()
    for where, cmd in lines:
        m = re.search(r"\bpython3? -m ([\w.]+)((?:\s+[a-z][\w-]*)?)", cmd)
        mod, sub = m.group(1), m.group(2).strip()
        if mod in ("pip", "venv") or (mod, sub) in seen:
            continue
        seen.add((mod, sub))
        r = _run([sys.executable, "-m", mod, *([sub] if sub else []), "--help"], tmp_path, 120)
        assert r.returncode == 0, f"{where}: `{cmd}`: --help failed:\n{r.stderr[-2000:]}"
        assert f"-m {mod}" in r.stdout or mod == "pytest", (
            f"{where}: help of {mod}: {r.stdout[:300]}"
        )


def test_pipeline_commands_run_as_written(sandbox):
    box, m, data = sandbox
    block = [c for c in commands(ROOT / "README.md") if c.startswith("python -m orchestrator")
             and "services.remote" not in c]  # fmt: skip
    run = [c for c in block if " run " in c]
    status = [c for c in block if " status " in c]
    assert run and status, block
    for cmd in run:  # as written, optional [...] parts left out; the test mesh's services
        plain = _strip_optional(cmd) + f" --services {m.services}"
        r = _run(plain + " --dry-run", box)
        assert r.returncode == 0, f"`{plain} --dry-run`:\n{r.stderr[-3000:]}"
        assert "pipeline rgbm" in r.stdout and "<- vlm bbox" in r.stdout
        r = _run(plain, box)
        assert r.returncode == 0, f"`{plain}`:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        assert "2 done, 0 failed" in r.stdout
    for cmd in status:
        r = _run(cmd + f" --services {m.services}", box)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "out/rgbm: 2 of 2 episode(s) done" in r.stdout
    assert (box / "out" / "rgbm" / "rgbm.zarr" / "data" / "rgbm").is_dir()


def test_key_generation_as_written(tmp_path):
    lines = [c for c in commands(ROOT / "README.md") if "protocol.keys generate" in c]
    assert lines
    for cmd in lines:
        r = _run(cmd, tmp_path)
        assert r.returncode == 0, r.stderr
        name = re.search(r"--name (\w+)", cmd).group(1)
        assert (tmp_path / "keys" / f"{name}.key").is_file()
        assert (tmp_path / "keys" / f"{name}.key_secret").is_file()


def _free_bind(cmd: str) -> list[str]:
    """The command with its service on a free loopback port (the fixed ones are shared)."""
    args = shlex.split(re.sub(r"--bind \S+", "", cmd))
    args[0] = sys.executable
    return [*args, "--bind", "tcp://127.0.0.1:0"]


def test_service_start_commands_start(tmp_path):
    started = 0
    for where, cmd in python_lines():
        if not re.search(r"-m (services\.\w+|protocol\.echo)\b", cmd):
            continue
        if any(k in cmd for k in NOT_RUN):
            continue
        args = _free_bind(cmd)
        svc = start(args, name=where, log_path=tmp_path / f"svc{started}.log", ready_timeout=90,
                    cwd=ROOT, env=_env(ROOT), setting="README command")  # fmt: skip
        try:
            from protocol.client import Client

            c = Client([svc.endpoint], timeout=10.0)
            try:
                assert c.call("ping", {})["service"]
            finally:
                c.close()
        finally:
            svc.proc.terminate()
            svc.proc.wait(30)
        started += 1
    assert started >= 3  # exporter (twice), vlm prompts, echo


def test_readme_figures_state_their_conditions():
    """Timing figures in the README come with where and how they were measured."""
    text = (ROOT / "README.md").read_text()
    demo = re.findall(r"`make demo`[^|\n]*\|[^\n]*", text)
    assert demo, "the benchmark table lost its make demo row"
    assert re.search(r"make demo.{0,400}(quiet|loaded|other work)", text, re.S)
    assert "in 40 s on a fresh clone" not in text  # the old figure without its conditions
    cfg = yaml.safe_load((ROOT / "configs/services.yaml").read_text())
    assert cfg["services"]  # the file the README's make up reads
