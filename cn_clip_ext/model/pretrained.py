"""``load_pretrained``: a model in one call, from any registered family's files
(:mod:`cn_clip_ext.model.families`).

::

    model, preprocess, tokenizer = load_pretrained("visionclip-bundle")
    image_emb = model.encode_image(preprocess(pil_image)[None])   # L2-normalised
    text_emb = model.encode_text(["疑似青光眼。"])                  # strings or token ids

Nothing is unpickled: bundles are safetensors + JSON, checkpoints are read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .bundle import resolve_bundle_folder
from .families import detect_family, get_family
from .families.base import Loaded
from .families.visionclip import MissingTowerError, VisionCLIPModel


def load_pretrained(path: str | Path, device: str | torch.device = "cpu", model_name: str | None = None, *,
                    family: str | None = None, **options: Any) -> Loaded:
    """``(model, preprocess, tokenizer)`` from the files of one model family.

    ``family`` names a family of :data:`~cn_clip_ext.model.families.FAMILIES`; ``None`` recognises
    a bundle folder or a checkpoint file (ours, Chinese-CLIP's, RET-CLIP's) by its contents.
    ``model`` encodes images and texts (strings or token ids) to L2-normalised embeddings,
    ``preprocess`` is the family's image transform and ``tokenizer`` its tokenizer. ``options`` are
    the family's (for the cn_clip families: ``preprocess`` overrides the recorded preprocessing mode,
    ``verify`` checks a bundle's file hashes); ``model_name`` names the architecture of cn_clip-format
    checkpoints, which do not record it.

    ``path`` may also be a bundle in a local Hugging Face cache: the repository folder
    (``models--ORG--NAME``, resolved through ``refs/main``) or one of its ``snapshots/<commit>`` folders.
    """
    path = resolve_bundle_folder(path)  # before family detection: a cache folder stands for its snapshot
    chosen = detect_family(path) if family is None else get_family(family)
    if model_name is not None:
        options["model_name"] = model_name
    return chosen(path, device, **options)


__all__ = ["MissingTowerError", "VisionCLIPModel", "load_pretrained"]
