"""The library's evaluation resources, as data: prompt sets (``prompts/*.yaml``) and the dataset table
(``datasets.yaml``). The trainer (in-training zero-shot), the evaluator and the exporter all read them
from here."""
from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent
PROMPTS_DIR = RESOURCES / "prompts"
"""The built-in prompt sets, one YAML file each (``plain``, ``expert``, ...)."""
DATASETS_TABLE = RESOURCES / "datasets.yaml"
"""The built-in dataset table: one entry per dataset, naming its reader and its classes."""


def builtin_prompt_sets() -> list[Path]:
    """The built-in prompt set files, sorted by name."""
    return sorted(PROMPTS_DIR.glob("*.yaml"))


def prompt_set_path(value: str | Path) -> Path:
    """A prompt set named by the user: a ``.yaml``/``.yml``/``.json`` file, or a built-in set's name."""
    from ...errors import UserError

    path = Path(value)
    if path.suffix in (".yaml", ".yml", ".json"):
        return path
    candidate = PROMPTS_DIR / f"{value}.yaml"
    if not candidate.is_file():
        names = [p.stem for p in builtin_prompt_sets()]
        raise UserError(f"unknown prompt set {str(value)!r} (choose from {names} or give a file)")
    return candidate


__all__ = ["DATASETS_TABLE", "PROMPTS_DIR", "RESOURCES", "builtin_prompt_sets", "prompt_set_path"]
