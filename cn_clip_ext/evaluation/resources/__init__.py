"""The library's evaluation resources, as data: prompt sets (``prompts/*.yaml``) and the dataset table
(``datasets.yaml``). The trainer (in-training zero-shot), the evaluator and the exporter all read them
from here."""
from __future__ import annotations

from pathlib import Path

from ...errors import UserError

RESOURCES = Path(__file__).resolve().parent
PROMPTS_DIR = RESOURCES / "prompts"
"""The built-in prompt sets, one YAML file each (``plain``, ``expert``, ...): Chinese at the top,
other languages in a folder named by the language (``en/plain.yaml``), with the same class keys."""
PROMPT_LANGUAGES = {"zh": PROMPTS_DIR, "en": PROMPTS_DIR / "en"}
"""Prompt language -> the folder of its built-in sets."""
DATASETS_TABLE = RESOURCES / "datasets.yaml"
"""The built-in dataset table: one entry per dataset, naming its reader and its classes."""


def builtin_prompt_sets() -> list[Path]:
    """The built-in prompt set files, sorted by name."""
    return sorted(PROMPTS_DIR.glob("*.yaml"))


def prompt_set_path(value: str, language: str = "zh") -> Path:
    """The prompt set file ``value`` names: a ``.yaml``/``.yml``/``.json`` path as it is, else a built-in
    set of ``language`` (``auto`` is ``plain``, the short diagnosis names)."""
    path = Path(value)
    if path.suffix in (".yaml", ".yml", ".json"):
        return path
    folder = PROMPT_LANGUAGES.get(language)
    if folder is None:
        raise UserError(f"no built-in prompt sets in language {language!r} (there are {sorted(PROMPT_LANGUAGES)})")
    candidate = folder / f"{'plain' if value == 'auto' else value}.yaml"
    if not candidate.is_file():
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise UserError(f"unknown prompt set {value!r} (choose from {names}, auto, or give a file)")
    return candidate


__all__ = ["DATASETS_TABLE", "PROMPTS_DIR", "PROMPT_LANGUAGES", "RESOURCES", "builtin_prompt_sets", "prompt_set_path"]
