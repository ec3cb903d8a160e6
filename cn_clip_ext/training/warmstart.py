"""Optional warm start from local weights, loud about what did and did not load.

Accepted sources:

* a cn_clip-format checkpoint file (``{"state_dict": ...}`` with or without ``module.``, or a
  bare state dict) - every matching key of both towers is loaded;
* a Hugging Face ``chinese-roberta-wwm-ext`` folder (``pytorch_model.bin`` or
  ``model.safetensors``) - its BERT keys are renamed to cn_clip's ``bert.*`` keys and only the
  text tower is loaded.

Reading, renaming and the lenient load are :mod:`cn_clip_ext.model.weights`'; missing and
unexpected keys are logged, and nothing matching at all is an error, so a wrong path can never
leave the encoders silently random.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import UserError
from ..model.weights import hf_bert_to_cn_clip, load_lenient, read_state_file, strip_module

logger = logging.getLogger(__name__)

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_warm_start(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """``(state_dict in cn_clip keys, kind)`` with kind ``"cn_clip"`` or ``"hf_bert"``."""
    path = Path(path)
    if path.is_dir():
        for name in HF_WEIGHT_FILES:
            if (path / name).is_file():
                return hf_bert_to_cn_clip(read_state_file(path / name, "warm-start weights")), "hf_bert"
        raise UserError(f"{path}: warm-start folder has none of {list(HF_WEIGHT_FILES)}")
    if not path.is_file():
        raise UserError(f"{path}: warm-start path not found")
    sd = strip_module(read_state_file(path, "warm-start weights"))
    if not any(k.startswith(("visual.", "bert.", "text_projection", "logit_scale")) for k in sd):
        converted = hf_bert_to_cn_clip(sd)
        if converted:
            return converted, "hf_bert"
    return sd, "cn_clip"


def warm_start(model: torch.nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load matching weights into ``model``; returns ``{"loaded", "missing", "unexpected", "mismatched"}``."""
    source, kind = read_warm_start(path)
    report = load_lenient(model, source, path, f"the model (warm start, {kind} keys)",
                          what="warm-start weights", target="model keys")
    return report.as_dict()


__all__ = ["hf_bert_to_cn_clip", "read_warm_start", "warm_start"]
