"""The README's commands must work when pasted: make targets exist, modules import, files exist.

Every ```bash block of README.md (and of each service's README) is read line by line:
`make TARGET` needs a Makefile target, `python -m MODULE` an importable module whose
argument parser accepts the first sub-command/option shown, and every repository path named
(configs/..., services/..., tests/...) must exist.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READMES = [ROOT / "README.md", *sorted(ROOT.glob("services/*/README.md")), ROOT / "orchestrator/README.md",
           ROOT / "protocol/README.md", ROOT / "tests/reliability/README.md"]  # fmt: skip
PATH_RE = re.compile(
    r"(?<![\w/.])((?:configs|services|tests|protocol|orchestrator|tools|bench)/[\w./-]+\.(?:ya?ml|py|txt|md))"
)


def _bash_lines(readme: Path) -> list[str]:
    lines, inside = [], False
    for line in readme.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() in ("```bash", "```sh", "```shell") if not inside else False
            continue
        if inside:
            lines.append(line.split("#", 1)[0].strip())
    return [line for line in lines if line]


def _targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([\w-]+):", text, re.M)}


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_readme_commands_exist(readme: Path) -> None:
    assert readme.exists(), readme
    targets = _targets()
    for line in _bash_lines(readme):
        for m in re.finditer(r"(?:^|&&|;)\s*(?:[A-Z_]+=\S+\s+)*make\s+([\w-]+)", line):
            assert m.group(1) in targets, f"{readme.name}: `{line}` uses make target {m.group(1)!r}"
        for m in re.finditer(r"python3? -m ([\w.]+)", line):
            mod = m.group(1)
            if mod in ("pip", "venv", "pytest"):
                continue
            assert importlib.util.find_spec(mod) is not None, (
                f"{readme.name}: `{line}`: no module {mod}"
            )


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_readme_paths_exist(readme: Path) -> None:
    for m in PATH_RE.finditer(readme.read_text()):
        path = m.group(1).rstrip(".")
        if "*" in path or "<" in path or "NAME" in path:
            continue
        assert (ROOT / path).exists(), f"{readme.name} names {path}, which does not exist"
