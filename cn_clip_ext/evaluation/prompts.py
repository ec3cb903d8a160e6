"""Prompt sets as data: templates and per-class descriptions read from YAML or JSON files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

from ..errors import UserError, excerpt
from ..files import read_structured


@dataclass(frozen=True)
class PromptSet:
    """Templates with one ``{}`` and, per prompt class, the names that fill them."""

    name: str
    templates: tuple[str, ...]
    classes: Mapping[str, tuple[str, ...]]

    def prompts(self, class_key: str) -> tuple[str, ...]:
        """Every template filled with every name of one class."""
        try:
            names = self.classes[class_key]
        except KeyError:
            raise UserError(f"prompt set {self.name!r} has no class {class_key!r} "
                            f"(it has {sorted(self.classes)})") from None
        return tuple(t.format(n) for n in names for t in self.templates)

    def for_classes(self, class_keys: Sequence[str]) -> list[tuple[str, ...]]:
        """Prompts grouped by class, in the given order."""
        return [self.prompts(k) for k in class_keys]


def load_prompt_set(path: str | Path) -> PromptSet:
    """Read a prompt set: ``name``, ``templates`` (each with ``{}``), ``classes: {key: [names]}``."""
    data = read_structured(path)
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict):
        raise UserError(f"{path}: a prompt set needs a 'classes' mapping")
    templates = tuple(data.get("templates") or ("{}",))
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise UserError(f"{path}: every template needs exactly one '{{}}' (bad: {excerpt(bad[0])})")
    classes = {}
    for key, names in data["classes"].items():
        names = [names] if isinstance(names, str) else names
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise UserError(f"{path}: class {excerpt(key)} needs one or more non-empty names")
        classes[str(key)] = tuple(names)
    return PromptSet(str(data.get("name") or Path(path).stem), templates, MappingProxyType(classes))
