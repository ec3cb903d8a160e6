"""What a model family is: how its files load into ``(model, preprocess, tokenizer)``.

Every family's ``model`` has ``encode_image(batch)`` and ``encode_text(strings or token ids)``
returning L2-normalised embeddings, and ``logit_scale`` (the log temperature); ``preprocess`` is
the family's own image transform and ``tokenizer`` its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from ...errors import UserError


class Loaded(NamedTuple):
    """``(model, preprocess, tokenizer)`` of one loaded model."""

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable


Loader = Callable[..., Loaded]
"""``load(path, device, **options) -> Loaded``."""


@dataclass(frozen=True)
class Family:
    """One family of weights: its loader, the options it takes and the language it is prompted in."""

    name: str
    load: Loader
    options: tuple[str, ...]
    language: str  # "zh" or "en": picks the prompt sets of ``prompts: auto``
    description: str
    missing: str = "no such {family} weights"  # the error for a path that does not exist
    fetch_hint: str = ""  # what to download, and from where, when the file is missing

    def __call__(self, path: Path, device: str | torch.device = "cpu", **options: Any) -> Loaded:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise UserError(f"{path}: option {unknown[0]!r} is not one of the {self.name} family's "
                            f"({', '.join(self.options) or 'none'})")
        if not path.exists():
            hint = f"; {self.fetch_hint}" if self.fetch_hint else ""
            raise UserError(f"{path}: {self.missing.format(family=self.name)}{hint}")
        return self.load(path, device, **options)


__all__ = ["Family", "Loaded", "Loader"]
