"""Putting weights into a model: the one strict and the one lenient state-dict loader, the one
reader of weight files, and every key-rename rule between the layouts we read.

Rename rules (each written once, here):

* :func:`strip_module` - DDP's ``module.`` prefix (cn_clip's and RET-CLIP's files carry it);
* :func:`is_pooler` - BERT's pooler, which cn_clip's ``CLIP`` builds but never uses: never required,
  never exported, dropped on reading;
* :func:`hf_bert_to_cn_clip` - a Hugging Face BERT/RoBERTa state dict -> cn_clip's ``bert.*`` keys;
* :func:`retclip_state_to_ours` - RET-CLIP's released layout (flash-attention fused projections)
  -> :class:`~cn_clip_ext.model.tripartite.TripartiteCLIP`'s names;
* :func:`is_hf_position_ids` - the ``embeddings.position_ids`` buffer older ``transformers`` saved
  (a constant the model rebuilds).

Loaders: :func:`load_strict` - every weight must come from the file (the model may be built on the
meta device); :func:`load_lenient` - what fits by name and shape is loaded, the rest is logged, and
nothing fitting is an error, so a wrong file can never leave a model silently random.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..errors import UserError, describe

logger = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]


# -- key rules ---------------------------------------------------------------------------------
def is_pooler(key: str) -> bool:
    """Whether ``key`` belongs to BERT's pooler (unused by every model here)."""
    return "bert.pooler" in key


def is_hf_position_ids(key: str) -> bool:
    """Whether ``key`` is the constant ``position_ids`` buffer of a Hugging Face BERT's embeddings."""
    return key.endswith("embeddings.position_ids")


def without(state: StateDict, drop: Callable[[str], bool] = is_pooler) -> dict[str, torch.Tensor]:
    """``state`` without the keys ``drop`` names (the pooler by default)."""
    return {k: v for k, v in state.items() if not drop(k)}


def strip_module(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix DDP adds (cn_clip's checkpoints carry it)."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def hf_bert_to_cn_clip(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face BERT/RoBERTa state dict to cn_clip's ``bert.*`` keys.

    Handles ``bert.``-prefixed (``BertForMaskedLM``/``BertForPreTraining``) and bare
    (``BertModel``) layouts and old ``LayerNorm.gamma/beta`` names; drops the pooler and heads.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(("cls.", "pooler.")) or is_pooler(key):
            continue
        if not key.startswith("bert."):
            if not key.startswith(("embeddings.", "encoder.")):
                continue
            key = "bert." + key
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[key] = value
    return out


_FUSED_BERT_QKV = re.compile(r"^(bert\.encoder\.layer\.\d+\.attention\.)self\.Wqkv\.(weight|bias)$")
_FUSED_BERT_OUT = re.compile(r"^(bert\.encoder\.layer\.\d+\.attention\.)self\.out_proj\.(weight|bias)$")
_FUSED_VIT_QKV = re.compile(r"^(visual\.transformer\.resblocks\.\d+\.attn\.)Wqkv\.(weight|bias)$")


def retclip_state_to_ours(state: StateDict) -> dict[str, torch.Tensor]:
    """A RET-CLIP state dict in :class:`~cn_clip_ext.model.tripartite.TripartiteCLIP`'s names.

    The head and tower names are already ours; this drops DDP's ``module.`` prefix and BERT's
    unused pooler, and undoes the flash-attention layout (fused ``Wqkv`` in the ViT and BERT
    attention) that RET-CLIP writes when trained with ``--use-flash-attention``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in without(strip_module(state)).items():
        if m := _FUSED_BERT_QKV.match(key):
            for part, chunk in zip(("query", "key", "value"), value.chunk(3)):
                out[f"{m[1]}self.{part}.{m[2]}"] = chunk
        elif m := _FUSED_BERT_OUT.match(key):
            out[f"{m[1]}output.dense.{m[2]}"] = value
        elif m := _FUSED_VIT_QKV.match(key):
            out[f"{m[1]}in_proj_{m[2]}"] = value
        else:
            out[key] = value
    return out


# -- reading -----------------------------------------------------------------------------------
def read_state_file(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (``weights_only=True``:
    nothing is unpickled that is not tensors and containers); a ``{"state_dict": ...}`` wrapper is
    opened. A missing, unreadable or non-state-dict file is a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, foreign object ...
        raise UserError(f"{path}: unreadable {what} ({describe(exc)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path}: {what} file holds no state dict")
    return obj


# -- loading -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadReport:
    """What a lenient load did: keys loaded, left as they were, ignored, and of another shape."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[str, ...]

    def as_dict(self) -> dict[str, list[str]]:
        return {"loaded": list(self.loaded), "missing": list(self.missing), "unexpected": list(self.unexpected),
                "mismatched": list(self.mismatched)}


def load_strict(model: torch.nn.Module, state: StateDict, source: str | Path, name: str, *,
                optional: Callable[[str], bool] = is_pooler) -> None:
    """Every weight of ``model`` (except keys ``optional`` names) must come from ``state``, and
    nothing else may be there. The tensors are assigned as they are, so ``model`` may be built on
    the meta device (no random initialisation to overwrite)."""
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not optional(k)]
    if len(state) == len(result.unexpected_keys):
        raise UserError(f"{source}: no weights match architecture {name}")
    if missing or result.unexpected_keys:
        example = (missing or result.unexpected_keys)[0]
        raise UserError(f"{source}: weights do not fit {name} ({len(missing)} missing, "
                        f"{len(result.unexpected_keys)} unexpected, e.g. {example!r})")


def load_lenient(model: torch.nn.Module, state: StateDict, source: str | Path, name: str, *,
                 what: str = "weights", target: str | None = None) -> LoadReport:
    """Load every key whose name and shape fit; log the rest; nothing fitting is a
    :class:`UserError` ("no {what} match {target}")."""
    own = model.state_dict()
    wrong_shape = sorted(k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape))
    fitting = {k: v for k, v in state.items() if k in own and k not in wrong_shape}
    if not fitting:
        raise UserError(f"{source}: no {what} match {target or f'architecture {name}'} ({len(state)} keys in the "
                        f"file, e.g. {sorted(state)[:2]})")
    result = model.load_state_dict(fitting, strict=False)
    unexpected = sorted(k for k in state if k not in own)
    logger.info("%s: loaded %d of %d tensors of %s", source, len(fitting), len(own), name)
    for label, keys in (("missing (left as initialised)", result.missing_keys), ("unexpected (ignored)", unexpected),
                        ("of another shape (ignored)", wrong_shape)):
        if keys:
            logger.warning("%s: %d keys %s, e.g. %s", source, len(keys), label, ", ".join(keys[:5]))
    return LoadReport(tuple(sorted(fitting)), tuple(sorted(result.missing_keys)), tuple(unexpected),
                      tuple(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong_shape))


__all__ = ["LoadReport", "hf_bert_to_cn_clip", "is_hf_position_ids", "is_pooler", "load_lenient", "load_strict",
           "read_state_file", "retclip_state_to_ours", "strip_module", "without"]
