"""Load a model from a checkpoint file: our training checkpoints and cn_clip-format ``.pt`` files.

Everything is read with ``torch.load(weights_only=True)``: a file that needs arbitrary
unpickling is refused, never executed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import UserError
from .factory import UnknownModelError, add_model_config, create_model, get_model_config
from .training.checkpoint import load_checkpoint, strip_module

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model built from a checkpoint, with what the checkpoint says about itself."""

    model: torch.nn.Module
    name: str
    config: Mapping[str, Any] = field(default_factory=dict)  # the saved training config ({} for cn_clip's)
    step: int | None = None
    epoch: int | None = None

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


def load_checkpoint_full(path: str | Path, model_name: str | None = None,
                         device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Build the model of a checkpoint (eval mode, fp32) and keep its config, step and epoch."""
    ckpt = load_checkpoint(path)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    name = model_name or config.get("model")
    if not name:
        raise UserError(f"{path}: the checkpoint does not record its architecture; pass the model name "
                        "(e.g. RN50@RoBERTa-wwm-ext-base-chinese)")
    _register_towers(config, Path(path))
    try:
        model = create_model(name, context_length=int(config.get("context_length") or 52))
    except (UnknownModelError, ValueError) as exc:
        raise UserError(f"{path}: {exc}") from None
    state = {k: v for k, v in strip_module(ckpt["state_dict"]).items() if "bert.pooler" not in k}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if "bert.pooler" not in k]
    if len(state) == len(result.unexpected_keys):
        raise UserError(f"{path}: no weights match architecture {name}")
    if missing or result.unexpected_keys:
        example = (missing or result.unexpected_keys)[0]
        raise UserError(f"{path}: weights do not fit {name} ({len(missing)} missing, "
                        f"{len(result.unexpected_keys)} unexpected, e.g. {example!r})")
    return LoadedCheckpoint(model.float().to(device).eval(), name, dict(config),
                            _as_int(ckpt.get("step")), _as_int(ckpt.get("epoch")))


def load_checkpoint_model(path: str | Path, model_name: str | None = None,
                          device: str | torch.device = "cpu") -> tuple[torch.nn.Module, str]:
    """``(model in eval mode, architecture name)`` from a checkpoint.

    The architecture comes from the checkpoint's saved training config, else ``model_name``
    (needed for cn_clip's own checkpoints, which do not record it).
    """
    loaded = load_checkpoint_full(path, model_name, device)
    return loaded.model, loaded.name
