"""cn_clip_ext: the VisionCLIP library on top of Chinese-CLIP (``cn_clip``).

Public API::

    model, train_tf, eval_tf = create_model_and_transforms(VISIONCLIP)
    tokenizer = get_tokenizer(VISIONCLIP)
"""
from __future__ import annotations

try:
    import cn_clip.clip  # noqa: F401  (the dependency everything here builds on)
except ImportError as exc:  # pragma: no cover - only without the set-up script
    raise ImportError(
        "cn_clip_ext needs cn_clip 1.6.0: pip install --no-deps cn_clip==1.6.0 "
        "(run_scripts/setup.sh does this)"
    ) from exc

from .factory import (
    VISIONCLIP,
    VISIONCLIP_TINY,
    ModelConfig,
    UnknownModelError,
    add_model_config,
    create_model,
    create_model_and_transforms,
    get_model_config,
    get_tokenizer,
    list_models,
    list_towers,
)
from .pretrained import load_pretrained
from .tokenizer import Tokenizer
from .transforms import CLIP_MEAN, CLIP_STD, AugmentConfig, FundusPreprocess, eval_transform, train_transform
from .tripartite import TripartiteCLIP, create_tripartite_model

__version__ = "0.1.0"

__all__ = [
    "AugmentConfig", "CLIP_MEAN", "CLIP_STD", "FundusPreprocess", "ModelConfig", "Tokenizer",
    "TripartiteCLIP", "UnknownModelError", "VISIONCLIP", "VISIONCLIP_TINY", "add_model_config", "create_model",
    "create_model_and_transforms", "create_tripartite_model", "eval_transform", "get_model_config", "get_tokenizer",
    "list_models", "list_towers", "load_pretrained", "train_transform",
]
