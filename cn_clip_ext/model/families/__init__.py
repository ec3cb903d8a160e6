"""The registry of model families: one small adapter module each, all behind
:func:`cn_clip_ext.load_pretrained` (``family=`` names one; ``None`` recognises the path).

============  ==================================================================================
``visionclip``  our bundles (safetensors + JSON folders) and training checkpoints
``cn_clip``     Chinese-CLIP's own ``.pt`` checkpoints
``retclip``     RET-CLIP's released weights (tripartite heads)
``open_clip``   OpenAI CLIP / open_clip weights and hub-layout folders (BiomedCLIP), via open_clip_torch
``flair``       FLAIR's released weights (ResNet-50 + Bio_ClinicalBERT)
============  ==================================================================================

Add a family by writing a module with a :class:`~cn_clip_ext.model.families.base.Family` called
``FAMILY`` and listing it in :data:`FAMILIES`.
"""
from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from ...errors import UserError
from . import cn_clip, flair, open_clip, retclip, visionclip
from .base import Family, Loaded

FAMILIES: Mapping[str, Family] = MappingProxyType({f.name: f for f in (
    visionclip.FAMILY, cn_clip.FAMILY, retclip.FAMILY, open_clip.FAMILY, flair.FAMILY)})
"""Family name -> :class:`Family`."""


def get_family(name: str) -> Family:
    """The family called ``name``; a one-line :class:`UserError` naming the choices otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(f"unknown model family {name!r} (choose from {sorted(FAMILIES)})") from None


def detect_family(path: Path) -> Family:
    """The family ``family=None`` loads ``path`` with: a folder in open_clip's hub layout, else a bundle
    folder or a checkpoint file of the cn_clip family recognised by its contents (ours, Chinese-CLIP's
    or RET-CLIP's)."""
    if (path / open_clip.CONFIG_FILE).is_file():
        return open_clip.FAMILY
    return visionclip.RECOGNISED


__all__ = ["FAMILIES", "Family", "Loaded", "detect_family", "get_family"]
