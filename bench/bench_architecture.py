"""The shape of the code in figures: library files and lines, the largest functions, import cycles, layer breaches.

    .venv/bin/python bench/bench_architecture.py [ROOT]      # ROOT: a checkout (default: this repository)

Reads the source with ``ast`` (tests/import_graph.py); nothing is imported. A cycle is a strongly connected component
of the module graph: "module level" counts only the imports that run when a module is imported, "any level" adds
function-level, ``TYPE_CHECKING`` and string-named (``importlib``) imports.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import import_graph as ig  # noqa: E402

INFERENCE_ROOMS = ("model", "evaluation", "audit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--top", type=int, default=5, help="how many of the largest functions to list")
    args = parser.parse_args(argv)
    root = Path(args.root)
    modules = ig.read_modules(root)
    library = {name: m for name, m in modules.items() if name.startswith(ig.LIBRARY)}
    programs = {name: m for name, m in modules.items() if not name.startswith(ig.LIBRARY)}
    edges = ig.all_edges(modules)
    lib_lines = sum(len(m.path.read_text(encoding="utf-8").splitlines()) for m in library.values())
    prog_lines = sum(len(m.path.read_text(encoding="utf-8").splitlines()) for m in programs.values())
    sizes = sorted(ig.functions(library), key=lambda item: -item[1])
    module_cycles = ig.strongly_connected(library, [(e.source, e.target) for e in edges
                                                    if e.level == ig.MODULE_LEVEL and e.source in library])
    any_cycles = ig.strongly_connected(library, [(e.source, e.target) for e in edges if e.source in library])
    rooms = ig.room_edges(edges)
    room_cycles = ig.strongly_connected({r for pair in rooms for r in pair}, rooms)
    breaches = {
        "model imports training": [e for e in edges if ig.room(e.source) == "model" and ig.room(e.target) == "training"
                                   and e.source.startswith(ig.LIBRARY)],
        "inference side (model, evaluation, audit) imports training": [
            e for e in edges if e.source.startswith(ig.LIBRARY) and ig.room(e.source) in INFERENCE_ROOMS
            and e.target.startswith(ig.LIBRARY) and ig.room(e.target) == "training"],
        "library modules outside training that import training": [
            e for e in edges if e.source in library and ig.room(e.source) not in ("training", ig.LIBRARY)
            and e.target.startswith(ig.LIBRARY) and ig.room(e.target) == "training"],
        "library imports a program": [e for e in edges if e.source in library and e.target in programs],
        "program imports another program": [e for e in edges if e.source in programs and e.target in programs
                                            and ig.room(e.source) != ig.room(e.target)],
    }
    print(f"root: {root}")
    print(f"library: {len(library)} .py files, {lib_lines} lines; programs: {len(programs)} .py files, "
          f"{prog_lines} lines")
    print(f"functions in the library: {len(sizes)}; over 100 lines: {sum(1 for _, n in sizes if n > 100)}; "
          f"over 60 lines: {sum(1 for _, n in sizes if n > 60)}")
    for name, n in sizes[: args.top]:
        print(f"  {n:4d} lines  {name}")
    print(f"import cycles, module level: {len(module_cycles)}")
    for cycle in module_cycles:
        print("  " + " <-> ".join(cycle))
    print(f"import cycles, any level (function-level imports included): {len(any_cycles)}")
    for cycle in any_cycles:
        print("  " + " <-> ".join(cycle))
    print(f"package (room) cycles, any level: {len(room_cycles)}")
    for cycle in room_cycles:
        print("  " + " <-> ".join(cycle))
        for e in edges:
            if e.source.startswith(ig.LIBRARY) and e.target.startswith(ig.LIBRARY) and e.target != ig.LIBRARY \
                    and ig.room(e.source) in cycle and ig.room(e.target) in cycle \
                    and ig.room(e.source) != ig.room(e.target):
                print(f"    {e.source}:{e.line} -> {e.target} ({e.level} level)")
    for what, found in breaches.items():
        print(f"{what}: {len(found)}")
        for e in found:
            print(f"  {e.source}:{e.line} -> {e.target} ({e.level} level)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
