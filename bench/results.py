"""bench/RESULTS.md: each benchmark owns a section between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``."""
from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(name: str, text: str, results: Path = RESULTS) -> None:
    """Replace the ``name`` section of ``results`` with ``text``, or append it when there is none yet."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = results.read_text(encoding="utf-8") if results.is_file() else "# Benchmark results\n"
    block = f"{begin}\n{text.strip()}\n{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    results.write_text(new, encoding="utf-8")
