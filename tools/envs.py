"""Per-service virtual environments, built with uv. Standard library only (runs before any venv).

Usage:
    python3 tools/envs.py NAME REQUIREMENTS.txt [MORE.txt ...]   # build .venvs/NAME if missing/stale
    from tools.envs import ensure_env; ensure_env("sam-classical", [Path(...)])

An environment is rebuilt when its requirement files change (their text is stamped inside
it). uv comes from PATH, or is installed with pip into .venvs/_uv on first use.

A requirement file may carry install directives for packages whose source build needs
something present first (sam2's build imports torch):
    # maskmesh: install-first torch==2.15.0 torchvision==0.29.2
    # maskmesh: env SAM2_BUILD_CUDA=0
    # maskmesh: no-build-isolation
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENVS = ROOT / ".venvs"


def say(msg: str) -> None:
    print(msg, flush=True)


def uv_path() -> str:
    """uv from PATH, else a private copy installed with pip into .venvs/_uv."""
    found = shutil.which("uv")
    if found:
        return found
    private = VENVS / "_uv" / "bin" / "uv"
    if not private.exists():
        say("installing uv (a fast pip) into .venvs/_uv ...")
        subprocess.run([sys.executable, "-m", "venv", str(VENVS / "_uv")], check=True)
        subprocess.run([str(VENVS / "_uv" / "bin" / "pip"), "install", "-q", "uv"], check=True)
    return str(private)


def requirement_files(service: str, backend: str) -> list[Path]:
    """services/SERVICE/requirements.txt plus requirements-BACKEND.txt when it exists."""
    base = ROOT / "services" / service
    files = [base / "requirements.txt"]
    extra = base / f"requirements-{backend}.txt"
    if extra.exists():
        files.append(extra)
    missing = [f for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"requirements: {missing[0]} does not exist")
    return files


def _stamp_text(req_files: list[Path]) -> str:
    parts = []
    for f in req_files:
        parts.append(f"{f.resolve().relative_to(ROOT)}\n{f.read_text()}")
        for line in f.read_text().splitlines():  # nested -r files count too
            line = line.strip()
            if line.startswith("-r "):
                nested = (f.parent / line[3:].strip()).resolve()
                parts.append(_stamp_text([nested]))
    return "\n".join(parts)


def directives(req_files: list[Path]) -> tuple[list[str], dict[str, str], bool]:
    """(packages to install first, environment variables, no-build-isolation) of the files."""
    first: list[str] = []
    env: dict[str, str] = {}
    no_isolation = False
    for f in req_files:
        for line in f.read_text().splitlines():
            if not line.startswith("# maskmesh:"):
                continue
            words = line.split(":", 1)[1].split()
            if words[:1] == ["install-first"]:
                first += words[1:]
            elif words[:1] == ["env"]:
                env.update(w.split("=", 1) for w in words[1:] if "=" in w)
            elif words == ["no-build-isolation"]:
                no_isolation = True
            else:
                raise ValueError(f"{f}: unknown directive {line!r}")
    return first, env, no_isolation


def ensure_env(name: str, req_files: list[Path], *, rebuild: bool = False) -> Path:
    """Create or update .venvs/NAME from the requirement files; returns its python."""
    env = VENVS / name
    py = env / "bin" / "python"
    stamp = env / ".requirements"
    want = _stamp_text(req_files)
    if py.exists() and not rebuild and stamp.exists() and stamp.read_text() == want:
        return py
    uv = uv_path()
    rel = ", ".join(str(f.resolve().relative_to(ROOT)) for f in req_files)
    say(f"building environment .venvs/{name} from {rel}")
    t = time.monotonic()
    if not py.exists():
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(env)], check=True)
    first, env_vars, no_isolation = directives(req_files)
    if first:
        subprocess.run([uv, "pip", "install", "-q", "--python", str(py), *first], check=True)
    cmd = [uv, "pip", "install", "-q", "--python", str(py)]
    if no_isolation:
        cmd.append("--no-build-isolation")
    for f in req_files:
        cmd += ["-r", str(f)]
    subprocess.run(cmd, check=True, env={**os.environ, **env_vars})
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(py), "--no-deps", "-e", str(ROOT)], check=True
    )
    stamp.write_text(want)
    say(f"  .venvs/{name} ready in {time.monotonic() - t:.0f} s")
    return py


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        say("usage: python3 tools/envs.py NAME REQUIREMENTS.txt [MORE.txt ...]")
        return 2
    try:
        ensure_env(argv[0], [Path(a) for a in argv[1:]])
    except (FileNotFoundError, subprocess.CalledProcessError) as e:
        say(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
