"""protocol/ has no import cycles: every import between its modules, module level or inside a
function, forms a graph without a circle (issue 13: server.py and runner.py imported each other).

Usage: pytest -q tests/unit/test_protocol_imports.py
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "protocol"


def _imports(path: Path, pkg: Path) -> set[str]:
    """The modules of `pkg` that `path` imports anywhere in its body (relative or absolute)."""
    names = {p.stem for p in pkg.glob("*.py")} - {"__init__"}
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x, y
                mods = [node.module] if node.module else [a.name for a in node.names]
            elif node.level == 0 and node.module and node.module.split(".")[0] == "protocol":
                parts = node.module.split(".")
                mods = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            else:
                continue
            out.update(m.split(".")[0] for m in mods if m)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "protocol" and len(parts) > 1:
                    out.add(parts[1])
    return (out & names) - {path.stem}


def graph(pkg: Path = PKG) -> dict[str, set[str]]:
    return {p.stem: _imports(p, pkg) for p in sorted(pkg.glob("*.py")) if p.stem != "__init__"}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_protocol_import_graph_has_no_cycle():
    g = graph()
    assert {"server", "runner", "client", "wire"} <= set(g), sorted(g)
    assert "server" in g["runner"]  # the graph is read, not empty
    cycle = find_cycle(g)
    assert cycle is None, "import cycle in protocol/: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "src,expect",
    [
        ({"a": "from .b import x\n", "b": "def f():\n    from .a import y\n"}, ["a", "b", "a"]),
        (
            {"a": "import protocol.b\n", "b": "from protocol import c\n", "c": "from . import a\n"},
            ["a", "b", "c", "a"],
        ),  # fmt: skip
        ({"a": "from .b import x\n", "b": "import os\n"}, None),
    ],
)
def test_cycle_finder_sees_function_level_and_absolute_imports(tmp_path, src, expect):
    for name, text in src.items():
        (tmp_path / f"{name}.py").write_text(text)
    assert find_cycle(graph(tmp_path)) == expect
