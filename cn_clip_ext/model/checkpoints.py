"""Load a model from a checkpoint file: our training checkpoints (CLIP or tripartite), cn_clip-format
``.pt`` files and RET-CLIP's released weights.

Everything is read with ``torch.load(weights_only=True)``: a file that needs arbitrary
unpickling is refused, never executed. The file's format is recognised by :data:`FORMATS`
(first match wins): our checkpoints and cn_clip's must fit the architecture exactly; RET-CLIP
state dicts (bare or under ``state_dict``, with or without ``module.``) are mapped to
:class:`~cn_clip_ext.model.tripartite.TripartiteCLIP` by name, missing and unexpected keys are logged,
and nothing matching is an error.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..errors import UserError, describe
from .factory import UnknownModelError, add_model_config, create_model, get_model_config
from .tripartite import create_tripartite_model, is_tripartite_state
from .weights import load_lenient, load_strict, retclip_state_to_ours, strip_module, without

logger = logging.getLogger(__name__)

RETCLIP_MODEL = "ViT-B-16@RoBERTa-wwm-ext-base-chinese"
"""The architecture of RET-CLIP's released weights (used when a RET-CLIP file is given no model name)."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    allow_bare: bool = False) -> dict[str, Any]:
    """Load with ``weights_only=True``; a missing or unreadable file is a one-line :class:`UserError`.

    ``allow_bare`` also accepts a bare state dict (name -> tensor, as RET-CLIP releases its
    weights) and returns it as ``{"state_dict": ...}``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, foreign object ...
        raise UserError(f"{path}: corrupted or unreadable checkpoint ({describe(exc)})") from None
    if allow_bare and isinstance(ckpt, dict) and "state_dict" not in ckpt and ckpt \
            and all(torch.is_tensor(v) for v in ckpt.values()):
        return {"state_dict": ckpt}
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a training checkpoint (no 'state_dict' key)")
    return ckpt


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model built from a checkpoint, with what the checkpoint says about itself."""

    model: torch.nn.Module
    name: str
    config: Mapping[str, Any] = field(default_factory=dict)  # the saved training config ({} for cn_clip's)
    step: int | None = None
    epoch: int | None = None
    format: str = "visionclip"  # a name in FORMATS

    @property
    def is_visionclip(self) -> bool:
        """Whether the checkpoint was written by our trainer (it records its training config)."""
        return bool(self.config)


def _as_int(value: Any) -> int | None:
    """A step or epoch count as saved (int, float or one-element tensor), else ``None``."""
    if isinstance(value, (int, float)) or (torch.is_tensor(value) and value.numel() == 1):
        return int(value)
    return None


def _register_towers(config: Mapping[str, Any], path: Path) -> None:
    """Make a checkpoint's custom tower folder (``model_config_dir``) known, when it still exists."""
    folder, name = config.get("model_config_dir"), config.get("model")
    if not folder or not name:
        return
    try:
        get_model_config(name)
    except UnknownModelError:
        if Path(folder).exists():
            logger.info("%s: registering tower configs from %s", path, folder)
            add_model_config(folder)


@dataclass(frozen=True)
class CheckpointFormat:
    """One kind of checkpoint file: how to recognise it and how strictly its weights must fit."""

    name: str
    matches: Callable[[Mapping[str, Any], Mapping[str, Any]], bool]  # (file contents, state dict)
    strict: bool
    default_model: str | None = None
    rename: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]] = dict


FORMATS: tuple[CheckpointFormat, ...] = (
    CheckpointFormat("visionclip", lambda ckpt, state: bool(ckpt.get("config")), strict=True),
    CheckpointFormat("retclip", lambda ckpt, state: is_tripartite_state(state), strict=False,
                     default_model=RETCLIP_MODEL, rename=retclip_state_to_ours),
    CheckpointFormat("cn_clip", lambda ckpt, state: True, strict=True),
)
"""Checkpoint formats in matching order (our trainer's first, cn_clip's as the fallback)."""


def checkpoint_format(name: str) -> CheckpointFormat:
    """The format called ``name`` (one of :data:`FORMATS`)."""
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise UserError(f"unknown checkpoint format {name!r} (choose from {[f.name for f in FORMATS]})")


def load_checkpoint_full(path: str | Path, model_name: str | None = None,
                         device: str | torch.device = "cpu", format: str | None = None) -> LoadedCheckpoint:
    """Build the model of a checkpoint (eval mode, fp32) and keep its config, step and epoch.

    ``format`` (a name in :data:`FORMATS`) reads the file as that format; ``None`` recognises it.
    A state dict with RET-CLIP's heads builds a :class:`~cn_clip_ext.model.tripartite.TripartiteCLIP`.
    """
    ckpt = load_checkpoint(path, allow_bare=True)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    raw = strip_module(ckpt["state_dict"])
    fmt = checkpoint_format(format) if format else next(f for f in FORMATS if f.matches(ckpt, raw))
    state = without(fmt.rename(raw))
    name = model_name or config.get("model") or fmt.default_model
    if not name:
        raise UserError(f"{path}: the checkpoint does not record its architecture; pass the model name "
                        "(e.g. RN50@RoBERTa-wwm-ext-base-chinese)")
    if not (model_name or config.get("model")):
        logger.info("%s: %s weights, architecture %s assumed (pass a model name to override)", path, fmt.name, name)
    _register_towers(config, Path(path))
    build = create_tripartite_model if is_tripartite_state(state) else create_model
    try:  # a strict format fills every weight: skip the random initialisation (3 s for RN50 on a CPU)
        model = build(name, context_length=int(config.get("context_length") or 52),
                      device="meta" if fmt.strict else "cpu")
    except (UnknownModelError, ValueError) as exc:
        raise UserError(f"{path}: {exc}") from None
    if fmt.strict:
        load_strict(model, state, path, name)
    else:
        load_lenient(model, state, path, name)
    return LoadedCheckpoint(model.float().to(device).eval(), name, dict(config),
                            _as_int(ckpt.get("step")), _as_int(ckpt.get("epoch")), fmt.name)


def load_checkpoint_model(path: str | Path, model_name: str | None = None,
                          device: str | torch.device = "cpu") -> tuple[torch.nn.Module, str]:
    """``(model in eval mode, architecture name)`` from a checkpoint.

    The architecture comes from the checkpoint's saved training config, else ``model_name``
    (needed for cn_clip's own checkpoints, which do not record it), else :data:`RETCLIP_MODEL`
    for RET-CLIP weights.
    """
    loaded = load_checkpoint_full(path, model_name, device)
    return loaded.model, loaded.name
