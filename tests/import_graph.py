"""The import graph of the repository, read from the source with ``ast`` (nothing is imported or run).

Every ``import``/``from ... import`` counts wherever it stands: at module level, inside a function or method, or under
``if TYPE_CHECKING:``; so does a call that names a module in a string (``importlib.import_module("x")``,
``importlib.resources.files("x")``, ``importlib.util.find_spec("x")``). An edge points at the module that is named
(``from a.b import c`` points at ``a.b.c`` when that is a module of the tree, else at the package ``a.b``); the parent
packages Python also runs on the way are not counted, so a package ``__init__`` that re-exports its modules does not
make every module of the package a cycle of its own.

Used by ``tests/test_architecture.py`` (the house rules) and ``bench/bench_architecture.py`` (the figures).
"""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Iterable, Iterator

LIBRARY = "cn_clip_ext"
MODULE_LEVEL = "module"  # runs when the importing module is imported
FUNCTION_LEVEL = "function"  # runs when a function is called (or never: TYPE_CHECKING and string-named imports)
_STRING_IMPORTERS = {"import_module", "files", "find_spec"}


@dataclasses.dataclass(frozen=True)
class Edge:
    source: str
    target: str
    level: str  # MODULE_LEVEL or FUNCTION_LEVEL
    line: int


@dataclasses.dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module


def program_packages(root: Path) -> dict[str, str]:
    """Installed program package name -> folder in the repository, from setup.py's ``PROGRAMS`` table."""
    tree = ast.parse((root / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PROGRAMS" for t in node.targets):
            return dict(ast.literal_eval(node.value))
    raise LookupError(f"{root / 'setup.py'}: no PROGRAMS table")


def read_modules(root: Path) -> dict[str, Module]:
    """Every module of the library and of the programs, by its importable name."""
    folders = {LIBRARY: LIBRARY, **program_packages(root)}
    modules: dict[str, Module] = {}
    for package, folder in folders.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join([package, *parts])
            modules[name] = Module(name, path, is_package, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return modules


def _resolve(importer: Module, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    package = importer.name.split(".") if importer.is_package else importer.name.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _target(name: str, known: dict[str, Module]) -> str | None:
    """The longest prefix of ``name`` that is a module of the tree (None for outside modules)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def _walk(node: ast.AST, level: str) -> Iterator[tuple[ast.AST, str]]:
    """Every node below ``node`` with the level its imports run at."""
    for child in ast.iter_child_nodes(node):
        child_level = level
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            child_level = FUNCTION_LEVEL
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from ((n, FUNCTION_LEVEL) for n in ast.walk(child) if n is not child)
            continue
        yield child, child_level
        yield from _walk(child, child_level)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_edges(importer: Module, known: dict[str, Module]) -> Iterator[Edge]:
    for node, level in _walk(importer.tree, MODULE_LEVEL):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(importer, node.module, node.level)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in _STRING_IMPORTERS and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        for name in names:
            target = _target(name, known)
            if target is not None and target != importer.name:
                yield Edge(importer.name, target, level, getattr(node, "lineno", 0))


def all_edges(modules: dict[str, Module]) -> list[Edge]:
    return list(dict.fromkeys(edge for module in modules.values() for edge in module_edges(module, modules)))


def strongly_connected(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The cycles of a directed graph: its strongly connected components of two or more nodes (Tarjan)."""
    graph: dict[str, set[str]] = {node: set() for node in nodes}
    for source, target in edges:
        if source != target:
            graph.setdefault(source, set()).add(target)
            graph.setdefault(target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def room(module: str) -> str:
    """The package a library module lives in (``cn_clip_ext.model.factory`` -> ``model``); top-level modules and the
    package itself are rooms of their own (``cn_clip_ext.errors`` -> ``errors``); a program -> its package."""
    parts = module.split(".")
    if parts[0] != LIBRARY:
        return parts[0]
    return parts[1] if len(parts) > 1 else LIBRARY


def room_edges(edges: Iterable[Edge]) -> set[tuple[str, str]]:
    return {(room(e.source), room(e.target)) for e in edges
            if e.source.startswith(LIBRARY) and e.target.startswith(LIBRARY)
            and e.target != LIBRARY and room(e.source) != room(e.target)}


def functions(modules: dict[str, Module]) -> Iterator[tuple[str, int]]:
    """Every function and method of the given modules: qualified name, lines from ``def`` to its last line."""
    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}.{child.name}"
                yield name, child.end_lineno - child.lineno + 1
                yield from visit(child, name)
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}.{child.name}")
            else:
                yield from visit(child, prefix)

    for module in modules.values():
        yield from visit(module.tree, module.name)
