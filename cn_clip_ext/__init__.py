"""cn_clip_ext: the VisionCLIP library on top of Chinese-CLIP (``cn_clip``).

Public API::

    model, train_tf, eval_tf = create_model_and_transforms(VISIONCLIP)
    tokenizer = get_tokenizer(VISIONCLIP)
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from . import compat as _compat

if importlib.util.find_spec("cn_clip") is None:  # pragma: no cover - only without the set-up script
    raise ImportError("cn_clip_ext needs cn_clip 1.6.0: pip install --no-deps cn_clip==1.6.0 "
                      "(run_scripts/setup.sh does this)")

_EXPORTS = {
    "model.factory": ("VISIONCLIP", "VISIONCLIP_TINY", "ModelConfig", "UnknownModelError", "add_model_config",
                "create_model", "create_model_and_transforms", "get_model_config", "get_tokenizer", "list_models",
                "list_towers"),
    "model.pretrained": ("load_pretrained",),
    "model.tokenizer": ("Tokenizer",),
    "model.transforms": ("CLIP_MEAN", "CLIP_STD", "AugmentConfig", "FundusPreprocess", "eval_transform", "train_transform"),
    "model.tripartite": ("TripartiteCLIP", "create_tripartite_model"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    """The public API, imported on first use: programs that only pack data never load torch."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])


_compat.install()

__version__ = "0.1.0"

__all__ = [
    "AugmentConfig", "CLIP_MEAN", "CLIP_STD", "FundusPreprocess", "ModelConfig", "Tokenizer",
    "TripartiteCLIP", "UnknownModelError", "VISIONCLIP", "VISIONCLIP_TINY", "add_model_config", "create_model",
    "create_model_and_transforms", "create_tripartite_model", "eval_transform", "get_model_config", "get_tokenizer",
    "list_models", "list_towers", "load_pretrained", "train_transform",
]
