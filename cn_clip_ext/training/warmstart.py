"""Optional warm start from local weights, loud about what did and did not load.

Accepted sources:

* a cn_clip-format checkpoint file (``{"state_dict": ...}`` with or without ``module.``, or a
  bare state dict) - every matching key of both towers is loaded;
* a Hugging Face ``chinese-roberta-wwm-ext`` folder (``pytorch_model.bin`` or
  ``model.safetensors``) - its BERT keys are renamed to cn_clip's ``bert.*`` keys and only the
  text tower is loaded.

Missing and unexpected keys are logged; nothing matching at all is an error, so a wrong path
can never leave the encoders silently random.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch

from ..errors import UserError, describe
from .checkpoint import strip_module

logger = logging.getLogger(__name__)

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _load_file(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: unreadable warm-start weights ({describe(exc)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{path}: warm-start file holds no state dict")
    return obj


def hf_bert_to_cn_clip(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face BERT/RoBERTa state dict to cn_clip's ``bert.*`` keys.

    Handles ``bert.``-prefixed (``BertForMaskedLM``/``BertForPreTraining``) and bare
    (``BertModel``) layouts and old ``LayerNorm.gamma/beta`` names; drops the pooler and heads.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(("cls.", "bert.pooler", "pooler.")):
            continue
        if not key.startswith("bert."):
            if not key.startswith(("embeddings.", "encoder.")):
                continue
            key = "bert." + key
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[key] = value
    return out


def read_warm_start(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """``(state_dict in cn_clip keys, kind)`` with kind ``"cn_clip"`` or ``"hf_bert"``."""
    path = Path(path)
    if path.is_dir():
        for name in HF_WEIGHT_FILES:
            if (path / name).is_file():
                return hf_bert_to_cn_clip(_load_file(path / name)), "hf_bert"
        raise UserError(f"{path}: warm-start folder has none of {list(HF_WEIGHT_FILES)}")
    if not path.is_file():
        raise UserError(f"{path}: warm-start path not found")
    sd = strip_module(_load_file(path))
    if not any(k.startswith(("visual.", "bert.", "text_projection", "logit_scale")) for k in sd):
        converted = hf_bert_to_cn_clip(sd)
        if converted:
            return converted, "hf_bert"
    return sd, "cn_clip"


def warm_start(model: torch.nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load matching weights into ``model``; returns ``{"loaded", "missing", "unexpected", "mismatched"}``."""
    source, kind = read_warm_start(path)
    own = model.state_dict()
    loaded, mismatched = {}, []
    for key, value in source.items():
        if key in own:
            if own[key].shape == value.shape:
                loaded[key] = value
            else:
                mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
    if not loaded:
        raise UserError(f"{path}: no warm-start weights match model keys ({len(source)} keys read as {kind}, "
                        f"e.g. {sorted(source)[:2]})")
    model.load_state_dict(loaded, strict=False)
    missing = sorted(set(own) - set(loaded))
    unexpected = sorted(set(source) - set(own))
    logger.info("warm start from %s (%s): loaded %d of %d model tensors", path, kind, len(loaded), len(own))
    if missing:
        logger.warning("warm start: %d model keys not in %s (kept random), e.g. %s", len(missing), path, missing[:5])
    if unexpected:
        logger.warning("warm start: %d keys of %s unused, e.g. %s", len(unexpected), path, unexpected[:5])
    if mismatched:
        logger.warning("warm start: %d keys with mismatched shapes skipped, e.g. %s", len(mismatched), mismatched[:3])
    return {"loaded": sorted(loaded), "missing": missing, "unexpected": unexpected, "mismatched": mismatched}


__all__ = ["hf_bert_to_cn_clip", "read_warm_start", "warm_start"]
