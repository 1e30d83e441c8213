"""The package layout keeps its seams: no import cycles, experiments only behind the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in sorted((SRC / "prunelab").rglob("*.py")):
        parts = p.relative_to(SRC).with_suffix("").parts
        is_pkg = p.name == "__init__.py"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _imports(name: str, *, top_level_only: bool) -> set[str]:
    """prunelab modules that ``name`` imports (at module level, or anywhere)."""
    path, is_pkg = MODULES[name]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                cand = f"{mod}.{alias.name}"
                found.add(cand if cand in MODULES else mod)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in MODULES and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return [*stack[stack.index(w):], w]
            if w not in state and (c := visit(w)) is not None:
                return c
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (c := visit(v)) is not None:
            return c
    return None


def test_layout_test_sees_the_package() -> None:
    assert {"prunelab.masks", "prunelab.training", "prunelab.experiments.runner",
            "prunelab.cli"} <= set(MODULES)


def test_no_import_cycles_at_module_level() -> None:
    graph = {m: _imports(m, top_level_only=True) for m in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["prunelab.experiments.runner", "prunelab.experiments.han"])
def test_only_the_cli_imports_the_runner(module: str) -> None:
    users = sorted(m for m in MODULES if module in _imports(m, top_level_only=False))
    allowed = [m for m in users if m.startswith("prunelab.cli") or m == "prunelab.experiments"]
    if module == "prunelab.experiments.han":
        allowed += ["prunelab.experiments.runner"]
    assert sorted(set(users) - set(allowed)) == []


def test_report_never_trains() -> None:
    """report/ renders: it imports no training, pruning or experiment code (configs aside)."""
    allowed = {"prunelab.experiments.rethink.config"}
    for m in MODULES:
        if m.startswith("prunelab.report"):
            bad = {d for d in _imports(m, top_level_only=False) - allowed
                   if d.startswith(("prunelab.experiments", "prunelab.training",
                                    "prunelab.pruner"))}
            assert bad == set(), (m, bad)
