"""The house rules on imports, checked on the source of every library and program module.

Data flows one way: synth/lmdb -> training -> checkpoints -> model (loading) -> evaluation/audit/export. Every import
counts, wherever it stands (module level, inside a function, under ``TYPE_CHECKING``, or named in a string to
``importlib``): see tests/import_graph.py.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import import_graph as ig

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("model", "lmdb", "synth", "training", "evaluation", "audit")
INFERENCE_ROOMS = ("model", "evaluation", "audit")
LAYERS = {"model": 1, "lmdb": 2, "synth": 3, "evaluation": 3, "audit": 4, "training": 5}
"""A room imports only rooms of lower layers (and the shared primitives, which import no room): ARCHITECTURE.md."""


@pytest.fixture(scope="module")
def tree() -> tuple[dict[str, ig.Module], list[ig.Edge]]:
    modules = ig.read_modules(ROOT)
    return modules, ig.all_edges(modules)


def _library(name: str) -> bool:
    return name == ig.LIBRARY or name.startswith(ig.LIBRARY + ".")


def _lines(edges: list[ig.Edge]) -> str:
    return "\n".join(f"{e.source}:{e.line} imports {e.target} ({e.level} level)" for e in edges)


def test_the_walk_sees_every_room_and_program(tree):
    modules, edges = tree
    rooms = {ig.room(name) for name in modules if _library(name)}
    assert set(ROOMS) <= rooms
    assert set(ig.program_packages(ROOT)) <= {ig.room(name) for name in modules if not _library(name)}
    assert any(e.level == ig.FUNCTION_LEVEL for e in edges) and any(e.level == ig.MODULE_LEVEL for e in edges)


def test_no_import_cycle_between_library_modules_at_any_level(tree):
    modules, edges = tree
    library = [name for name in modules if _library(name)]
    cycles = ig.strongly_connected(library, [(e.source, e.target) for e in edges if _library(e.source)])
    assert cycles == [], "import cycles (function-level imports included):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_no_import_cycle_between_rooms(tree):
    _, edges = tree
    pairs = ig.room_edges(edges)
    cycles = ig.strongly_connected({r for pair in pairs for r in pair}, pairs)
    assert cycles == [], "rooms importing each other:\n" + _lines(
        [e for e in edges if _library(e.source) and _library(e.target) and e.target != ig.LIBRARY
         and any(ig.room(e.source) in c and ig.room(e.target) in c and ig.room(e.source) != ig.room(e.target)
                 for c in cycles)])


def test_model_and_the_inference_side_never_import_training(tree):
    _, edges = tree
    found = [e for e in edges if _library(e.source) and ig.room(e.source) in INFERENCE_ROOMS
             and _library(e.target) and ig.room(e.target) == "training"]
    assert found == [], _lines(found)


def test_rooms_import_only_lower_layers_and_primitives_no_room(tree):
    _, edges = tree
    inside = [e for e in edges if _library(e.source) and _library(e.target) and e.target != ig.LIBRARY
              and e.source != ig.LIBRARY and ig.room(e.source) != ig.room(e.target)]
    upward = [e for e in inside if ig.room(e.source) in LAYERS and ig.room(e.target) in LAYERS
              and LAYERS[ig.room(e.target)] >= LAYERS[ig.room(e.source)]]
    assert upward == [], _lines(upward)
    from_primitives = [e for e in inside if ig.room(e.source) not in LAYERS and ig.room(e.target) in LAYERS]
    assert from_primitives == [], _lines(from_primitives)
    assert set(ROOMS) == set(LAYERS)


def test_no_library_module_imports_a_program(tree):
    modules, edges = tree
    found = [e for e in edges if _library(e.source) and not _library(e.target)]
    assert found == [], _lines(found)
    # the names of the programs appear in no import-like string of the library either
    assert all(not e.target.startswith("vclip_") for e in edges if _library(e.source))


def test_programs_never_import_each_other(tree):
    _, edges = tree
    found = [e for e in edges if not _library(e.source) and not _library(e.target)
             and ig.room(e.source) != ig.room(e.target)]
    assert found == [], _lines(found)


# ------------------------------------------------------------------ the walker itself, on a tree written here


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_the_walker_finds_cycles_hidden_in_functions_type_checking_and_strings(tmp_path):
    _write(tmp_path, {
        "setup.py": 'PROGRAMS = {"vclip_tool": "tool"}\n',
        "cn_clip_ext/__init__.py": "",
        "cn_clip_ext/model/__init__.py": "from .a import thing\n",
        "cn_clip_ext/model/a.py": "from . import b\nthing = 1\n",
        "cn_clip_ext/model/b.py": """
            def late():
                from .a import thing  # function level: closes a <-> b
                return thing
            """,
        "cn_clip_ext/model/c.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from ..training.loop import Trainer
            """,
        "cn_clip_ext/training/__init__.py": "",
        "cn_clip_ext/training/loop.py": "import cn_clip_ext.model.c\nclass Trainer: ...\n",
        "cn_clip_ext/evaluation/__init__.py": "",
        "cn_clip_ext/evaluation/res.py": """
            import importlib.resources
            def where():
                return importlib.resources.files("vclip_tool")
            """,
        "tool/__init__.py": "",
        "tool/main.py": "from cn_clip_ext.model import a\n",
    })
    modules = ig.read_modules(tmp_path)
    assert set(modules) == {
        "cn_clip_ext", "cn_clip_ext.model", "cn_clip_ext.model.a", "cn_clip_ext.model.b", "cn_clip_ext.model.c",
        "cn_clip_ext.training", "cn_clip_ext.training.loop", "cn_clip_ext.evaluation", "cn_clip_ext.evaluation.res",
        "vclip_tool", "vclip_tool.main"}
    edges = ig.all_edges(modules)
    got = {(e.source, e.target, e.level) for e in edges}
    assert ("cn_clip_ext.model.a", "cn_clip_ext.model.b", ig.MODULE_LEVEL) in got
    assert ("cn_clip_ext.model.b", "cn_clip_ext.model.a", ig.FUNCTION_LEVEL) in got
    assert ("cn_clip_ext.model.c", "cn_clip_ext.training.loop", ig.FUNCTION_LEVEL) in got
    assert ("cn_clip_ext.evaluation.res", "vclip_tool", ig.FUNCTION_LEVEL) in got
    assert ("vclip_tool.main", "cn_clip_ext.model.a", ig.MODULE_LEVEL) in got
    # an __init__ that re-exports its modules is not a cycle with them
    assert ("cn_clip_ext.model", "cn_clip_ext.model.a", ig.MODULE_LEVEL) in got
    module_level = [(e.source, e.target) for e in edges if e.level == ig.MODULE_LEVEL]
    assert ig.strongly_connected(modules, module_level) == []
    assert ig.strongly_connected(modules, [(e.source, e.target) for e in edges]) == [
        ["cn_clip_ext.model.a", "cn_clip_ext.model.b"],
        ["cn_clip_ext.model.c", "cn_clip_ext.training.loop"]]
    assert ig.strongly_connected(set(), ig.room_edges(edges)) == [["model", "training"]]


def test_strongly_connected_components_of_a_longer_ring_and_a_tail():
    edges = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d"), ("f", "a")]
    assert ig.strongly_connected("abcdef", edges) == [["a", "b", "c"], ["d", "e"]]
    assert ig.strongly_connected("ab", [("a", "a"), ("a", "b")]) == []
