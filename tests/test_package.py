"""Package-wide rules, read from the source with ``ast``: no import cycle among the package's
modules, modules and classes of a readable size, a docstring per module, a resolvable
``__all__``, and an ``import guru_analytics`` that loads nothing heavy.

Known failures in modules another change is reshaping are marked ``xfail(strict=True)`` case
by case (``_KNOWN``), so fixing one turns its case red until the mark is removed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path

import pytest

import guru_analytics

PACKAGE = "guru_analytics"
ROOT = Path(guru_analytics.__file__).resolve().parent
MAX_MODULE_LINES = 900
MAX_CLASS_LINES = 450
HEAVY = ("pandas", "duckdb", "matplotlib", "requests", "numpy", "ipywidgets", "tqdm")

# (test, module) -> why it fails today. Remove the entry with the fix.
_KNOWN: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _sources() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


@cache
def _tree(module: str) -> ast.Module:
    path = _sources()[module]
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _is_package(module: str) -> bool:
    return _sources()[module].name == "__init__.py"


def _node(module: str) -> str:
    """The graph node of a module: a subpackage's private modules count as the subpackage
    (its ``__init__`` is their one face, and importing any of them runs it)."""
    parts = module.split(".")
    while len(parts) > 2 and parts[-1].startswith("_"):
        parts.pop()
    return ".".join(parts)


def _family(node: str) -> str:
    """The subpackage a node belongs to (a top-level module is its own family)."""
    return ".".join(node.split(".")[:2])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements at any depth (functions included), except under ``if TYPE_CHECKING``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports(other)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _imports(child)


def _targets(module: str) -> set[str]:
    """Package modules ``module`` imports (``from .x import y`` -> ``.x``, or ``.x.y`` when
    ``y`` is itself a module)."""
    known = _sources()
    package = module if _is_package(module) else module.rpartition(".")[0]
    found: set[str] = set()
    for stmt in _imports(_tree(module)):
        if isinstance(stmt, ast.Import):
            found.update(a.name for a in stmt.names if a.name.split(".")[0] == PACKAGE)
            continue
        if stmt.level:
            base = package.split(".")
            base = base[: len(base) - (stmt.level - 1)]
            source = ".".join([*base, stmt.module] if stmt.module else base)
        else:
            source = stmt.module or ""
        if source.split(".")[0] != PACKAGE:
            continue
        for alias in stmt.names:
            sub = f"{source}.{alias.name}"
            found.add(sub if sub in known else source)
    return {t for t in found if t in known}


@cache
def _graph() -> dict[str, frozenset[str]]:
    """Module -> the package modules it imports. Edges inside one subpackage are left out: its
    ``__init__`` imports its parts and they import its private helpers by design."""
    edges: dict[str, set[str]] = {}
    for module in _sources():
        src = _node(module)
        edges.setdefault(src, set()).update(
            dst for dst in map(_node, _targets(module)) if _family(dst) != _family(src)
        )
    return {k: frozenset(v) for k, v in edges.items()}


def _cycle_through(start: str, graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """The shortest import cycle through ``start`` (as a path ending where it began), or None."""
    paths: dict[str, list[str]] = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for mod in frontier:
            for dst in sorted(graph.get(mod, ())):
                if dst == start:
                    return [*paths[mod], start]
                if dst not in paths:
                    paths[dst] = [*paths[mod], dst]
                    nxt.append(dst)
        frontier = nxt
    return None


def _cases(test: str, modules: list[str]) -> list[object]:
    return [
        pytest.param(
            m,
            id=m,
            marks=[pytest.mark.xfail(strict=True, reason=_KNOWN[(test, m)])]
            if (test, m) in _KNOWN
            else [],
        )
        for m in modules
    ]


def test_the_import_graph_is_read() -> None:
    """Guards the parser: known edges are found, TYPE_CHECKING ones are not, private modules
    fold into their subpackage."""
    graph = _graph()
    assert "guru_analytics.errors" in graph["guru_analytics.timestamps"]
    assert "guru_analytics.store" in graph["guru_analytics.sync"]  # store/_x -> store
    assert "guru_analytics.store" in graph["guru_analytics.frames.activity"]
    assert "guru_analytics.frames" not in graph["guru_analytics.frames.activity"]  # family
    assert not any(n.rpartition(".")[2].startswith("_") for n in graph if n.count(".") > 1)
    assert "guru_analytics.progress" not in graph["guru_analytics.guru"]  # TYPE_CHECKING only
    assert _KNOWN.keys() <= {(t, m) for t in ("cycle",) for m in graph} | {
        (t, m) for t in ("module_size", "class_size") for m in _sources()
    }


def test_a_cycle_is_found_and_named() -> None:
    graph = {"a": ["b"], "b": ["c", "d"], "c": ["a"], "d": []}
    assert _cycle_through("a", graph) == ["a", "b", "c", "a"]
    assert _cycle_through("d", graph) is None


@pytest.mark.parametrize("module", _cases("cycle", sorted(_graph())))
def test_no_import_cycle(module: str) -> None:
    cycle = _cycle_through(module, _graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", _cases("module_size", sorted(_sources())))
def test_module_size(module: str) -> None:
    n = len(_sources()[module].read_text(encoding="utf-8").splitlines())
    assert n <= MAX_MODULE_LINES, f"{module} has {n} lines (> {MAX_MODULE_LINES}): split it"


@pytest.mark.parametrize("module", _cases("class_size", sorted(_sources())))
def test_class_size(module: str) -> None:
    big = {
        c.name: (c.end_lineno or c.lineno) - c.lineno + 1
        for c in ast.walk(_tree(module))
        if isinstance(c, ast.ClassDef)
    }
    over = {name: n for name, n in big.items() if n > MAX_CLASS_LINES}
    assert not over, f"classes over {MAX_CLASS_LINES} lines in {module}: {over}"


@pytest.mark.parametrize("module", _cases("docstring", sorted(_sources())))
def test_module_docstring(module: str) -> None:
    doc = ast.get_docstring(_tree(module))
    assert doc and doc.strip(), f"{module} has no module docstring: say its one responsibility"


def test_all_names_resolve() -> None:
    assert guru_analytics.__all__ == sorted(set(guru_analytics.__all__))
    for name in guru_analytics.__all__:
        assert getattr(guru_analytics, name) is not None, name


@pytest.mark.parametrize("module", ["guru_analytics", "guru_analytics.cli"])
def test_import_loads_nothing_heavy(module: str) -> None:
    """``import guru_analytics`` (and reading ``__version__``) is instant, and so is the CLI's
    start (``--help``, a typo): no heavy library loads until a command needs it. A fresh
    interpreter, so this test's own imports do not count."""
    code = (
        f"import sys, guru_analytics, {module}\n"
        "assert guru_analytics.__version__\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", f"import {module} loaded {out.stdout.strip()}"


def test_version_is_the_installed_one() -> None:
    """The version lives in ``__init__`` only; the installed metadata reads it from there."""
    from importlib.metadata import version

    assert version("guru-analytics") == guru_analytics.__version__
