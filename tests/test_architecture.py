"""The layering rules of docs/architecture.md, read from the source (no imports executed).

Every ``import`` and ``from ... import`` counts, also those inside functions: a lazy import is
still a dependency, and a cycle through one is still a cycle.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO

PACKAGES = ("streamer", "server", "client")
#: the command root: it sits on top of every package and registers each one's subcommands
COMMAND_ROOT = "server.cli"
#: not part of the runtime: the tooling itself, and the seams tests and benchmarks use
OFFLINE = "streamer.offline"
OUTSIDE_RUNTIME = (OFFLINE, "streamer.testing", COMMAND_ROOT)
PROTOCOL = "streamer.protocol"


def _module_files() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


@cache
def _modules() -> dict[str, Path]:
    return dict(_module_files())


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imported_names(module: str, path: Path) -> set[str]:
    """Every absolute module name ``module`` imports (``from a import b`` gives a and a.b)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not _is_package(path):
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def _lazy_exports(path: Path) -> set[str]:
    """The modules a package's PEP 562 ``_EXPORTS`` map imports on attribute access."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "_EXPORTS" and node.value is not None:
            return set(ast.literal_eval(node.value).values())
    return set()


@cache
def _graph() -> dict[str, frozenset[str]]:
    """module -> the project modules it imports (a package's lazy exports count as imports)."""
    modules = _modules()
    graph: dict[str, frozenset[str]] = {}
    for module, path in modules.items():
        targets = {name for name in _imported_names(module, path) if name in modules}
        if _is_package(path):
            targets |= _lazy_exports(path)
        graph[module] = frozenset(targets - {module})
    return graph


def _top(module: str) -> str:
    return module.split(".")[0]


def _within(module: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _edges() -> Iterator[tuple[str, str]]:
    for module, targets in _graph().items():
        for target in sorted(targets):
            yield module, target


def test_streamer_imports_neither_server_nor_client() -> None:
    """streamer turns audio into events: it never imports server or client."""
    bad = [(a, b) for a, b in _edges() if _top(a) == "streamer" and _top(b) != "streamer"]
    assert bad == []


def test_client_imports_only_the_protocol_home() -> None:
    """client uses the wire schema and nothing else of ours (no numpy, torch or engine)."""
    bad = [
        (a, b) for a, b in _edges()
        if _top(a) == "client" and _top(b) != "client" and not _within(b, PROTOCOL)
        and b != "streamer"  # the package itself: importing it runs a lazy, empty __init__
    ]
    assert bad == []


def test_server_imports_no_client_code() -> None:
    """Only the command root, which registers every package's commands, may reach client."""
    bad = [(a, b) for a, b in _edges()
           if _top(a) == "server" and _top(b) == "client" and a != COMMAND_ROOT]
    assert bad == []


def test_protocol_imports_only_the_standard_library() -> None:
    """The protocol home is light: standard library and itself, so any process can load it."""
    bad = []
    for module, path in _modules().items():
        if not _within(module, PROTOCOL):
            continue
        for name in _imported_names(module, path):
            root = name.split(".")[0]
            if root == "__future__" or root in sys.stdlib_module_names:
                continue
            if _within(name, PROTOCOL) or name == "streamer":
                continue
            bad.append((module, name))
    assert bad == []


def test_runtime_never_imports_offline_tooling() -> None:
    """Training, evaluation, datasets and export stay out of the monitor's process."""
    bad = [(a, b) for a, b in _edges()
           if _within(b, OFFLINE) and not _within(a, OUTSIDE_RUNTIME)
           and a != "streamer"]  # the root package's lazy map may name nothing offline
    assert bad == []
    root_exports = _lazy_exports(_modules()["streamer"])
    assert [m for m in root_exports if _within(m, OFFLINE)] == []


def test_no_import_cycles() -> None:
    """The module graph (lazy imports and package export maps included) has no cycle."""
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []


# -- public surfaces ---------------------------------------------------------------------------


def _declared_all(path: Path) -> list[str] | None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            try:
                return list(ast.literal_eval(node.value))
            except ValueError:
                return None  # computed, e.g. sorted(_EXPORTS): checked on the live package
    return None


def _defined_public(path: Path) -> set[str]:
    """Public names a module defines at top level (classes, functions, constants)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    # a module's logger is plumbing, not API
    return {n for n in names if not n.startswith("_") and n not in {"logger", "__all__"}}


MODULES = sorted(m for m, p in _modules().items()
                 if not _is_package(p) and not m.endswith(".__main__"))  # a script, no API
#: packages with code (streamer.bundled and server.static hold data files only)
PACKAGE_NAMES = sorted(m for m, p in _modules().items() if _is_package(p) and any(
    sub.startswith(m + ".") for sub in MODULES))


@pytest.mark.parametrize("module", MODULES)
def test_module_all_is_its_public_surface(module: str) -> None:
    """A module's ``__all__`` lists exactly the public names it defines."""
    path = _modules()[module]
    declared = _declared_all(path)
    assert declared is not None, f"{module} has no literal __all__"
    assert len(declared) == len(set(declared)), "duplicates in __all__"
    assert set(declared) == _defined_public(path)


def _submodules(package: str) -> list[str]:
    depth = package.count(".") + 1
    return [m for m in MODULES if m.startswith(package + ".") and m.count(".") == depth
            and not m.rsplit(".", 1)[1].startswith("_")]


@pytest.mark.parametrize("package", PACKAGE_NAMES)
def test_package_all_is_its_full_public_surface(package: str) -> None:
    """A package exports every public name of its modules, each from the module defining it."""
    loaded = importlib.import_module(package)
    exported = list(loaded.__all__)
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    expected: dict[str, str] = {}
    for module in _submodules(package):
        for name in _declared_all(_modules()[module]) or []:
            assert name not in expected, f"{name} is public in {expected[name]} and {module}"
            expected[name] = module
    assert sorted(exported) == sorted(expected)
    for name, module in expected.items():
        assert getattr(loaded, name) is getattr(importlib.import_module(module), name)
    # dir() shows the public surface, nothing more (httpx's tests/test_exported_members.py)
    assert sorted(n for n in dir(loaded) if not n.startswith("_")) == sorted(expected)
