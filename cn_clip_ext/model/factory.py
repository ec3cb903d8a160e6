"""Model factory: tower configs as JSON, architectures named ``"<vision>@<text>"``.

Tower configs are found by scanning folders: cn_clip's own ``clip/model_configs`` first,
then this package's ``model_configs`` (the towers cn_clip lacks), then any folder a user
registers with :func:`add_model_config`. A file is a vision tower when it has
``vision_layers`` and a text tower when it has ``vocab_size``. Every model is cn_clip's
own :class:`cn_clip.clip.model.CLIP`, randomly initialised, in fp32.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import torch

from ..errors import UserError
from .tokenizer import Tokenizer
from .transforms import CLIP_MEAN, CLIP_STD, AugmentConfig, eval_transform, train_transform

logger = logging.getLogger(__name__)

VISIONCLIP = "RN50@RoBERTa-wwm-ext-base-chinese"
"""The paper's architecture: ResNet-50 image tower, RoBERTa-wwm-ext-base-chinese text tower."""
VISIONCLIP_TINY = "RN-tiny@BERT-tiny-chinese"
"""A small member of the same family for CPU demos and tests (same code path)."""

_CONFIG_DIRS: list[Path] = []
_VISION: dict[str, Mapping[str, Any]] = {}
_TEXT: dict[str, Mapping[str, Any]] = {}


class ModelConfigError(UserError, ValueError):
    """An architecture that cannot be built as asked (reported in one line by the programs)."""


class UnknownModelError(ModelConfigError):
    """Raised for a model name that names no registered vision or text tower."""


def _builtin_dirs() -> list[Path]:
    import cn_clip.clip

    return [Path(cn_clip.clip.__file__).parent / "model_configs", Path(__file__).parent / "model_configs"]


def _parse_tower(path: Path) -> tuple[str, Mapping[str, Any]] | None:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON model config ({exc})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a model config must be a JSON object")
    if isinstance(cfg.get("vision_layers"), str):
        cfg["vision_layers"] = json.loads(cfg["vision_layers"])
    if isinstance(cfg.get("vision_layers"), list):
        cfg["vision_layers"] = tuple(cfg["vision_layers"])
    if "vision_layers" in cfg:
        return "vision", MappingProxyType(cfg)
    if "vocab_size" in cfg:
        return "text", MappingProxyType(cfg)
    return None


def _scan(folder: Path) -> None:
    for path in sorted(folder.glob("*.json")):
        parsed = _parse_tower(path)
        if parsed is None:
            logger.debug("skipping %s: neither a vision nor a text tower config", path)
            continue
        kind, cfg = parsed
        (_VISION if kind == "vision" else _TEXT)[path.stem] = cfg


def _ensure_loaded() -> None:
    if not _CONFIG_DIRS:
        for folder in _builtin_dirs():
            _CONFIG_DIRS.append(folder)
            _scan(folder)


def add_model_config(path: str | Path) -> None:
    """Register a user folder (or a single JSON file) of tower configs; later files win."""
    _ensure_loaded()
    path = Path(path)
    if path.is_file():
        parsed = _parse_tower(path)
        if parsed is None:
            raise ValueError(f"{path}: neither a vision (vision_layers) nor a text (vocab_size) config")
        kind, cfg = parsed
        (_VISION if kind == "vision" else _TEXT)[path.stem] = cfg
    elif path.is_dir():
        _CONFIG_DIRS.append(path)
        _scan(path)
    else:
        raise FileNotFoundError(f"{path}: no such model config file or folder")


def list_towers() -> tuple[list[str], list[str]]:
    """Names of the registered vision towers and text towers."""
    _ensure_loaded()
    return sorted(_VISION), sorted(_TEXT)


def list_models() -> list[str]:
    """Every selectable architecture: each vision tower paired with each text tower."""
    vision, text = list_towers()
    return [f"{v}@{t}" for v in vision for t in text]


@dataclass(frozen=True)
class ModelConfig:
    """The merged, immutable description of one architecture."""

    name: str
    vision: Mapping[str, Any]
    text: Mapping[str, Any]
    context_length: int = 52

    @property
    def embed_dim(self) -> int:
        return int(self.vision["embed_dim"])

    @property
    def image_size(self) -> int:
        return int(self.vision["image_resolution"])

    def clip_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for cn_clip's ``CLIP`` constructor."""
        return {**self.vision, **self.text}


def get_model_config(name: str, context_length: int = 52) -> ModelConfig:
    """Look up ``"<vision>@<text>"``; raises :class:`UnknownModelError` with the choices."""
    _ensure_loaded()
    vision, sep, text = name.partition("@")
    if not sep or vision not in _VISION or text not in _TEXT:
        raise UnknownModelError(
            f"unknown model {name!r}: expected '<vision>@<text>' with vision in {sorted(_VISION)} "
            f"and text in {sorted(_TEXT)}"
        )
    max_pos = int(_TEXT[text]["text_max_position_embeddings"])
    if context_length > max_pos:
        raise ModelConfigError(f"context length {context_length} exceeds the {max_pos} positions of {text} "
                               f"(model {name}); use --context-length {max_pos} or less")
    return ModelConfig(name, _VISION[vision], _TEXT[text], context_length)


def build_clip(config: ModelConfig, *, device: str | torch.device = "cpu", seed: int | None = None) -> torch.nn.Module:
    """cn_clip's ``CLIP`` for a config, in fp32, with ``vclip_config`` attached.

    On ``device="meta"`` nothing is allocated or initialised (shapes only: 3 s saved for RN50 on a
    CPU when a file's weights are assigned next, see :func:`cn_clip_ext.model.weights.load_strict`).
    Otherwise randomly initialised; ``seed`` makes that reproducible without touching the global RNG.
    """
    from cn_clip.clip.model import CLIP

    where = torch.device("meta") if torch.device(device).type == "meta" else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), where:
        if seed is not None:
            torch.manual_seed(seed)
        model = CLIP(**config.clip_kwargs())
    model.vclip_config = config  # travels with the model for transforms, export and logs
    return model.float().to(device)


def create_model(name: str, *, device: str | torch.device = "cpu", seed: int | None = None,
                 context_length: int = 52) -> torch.nn.Module:
    """Build cn_clip's ``CLIP`` for ``name``, randomly initialised in fp32.

    ``seed`` makes the initialisation reproducible without touching the global RNG. On
    ``device="meta"`` the model is built without allocating its weights (shapes only).
    """
    return build_clip(get_model_config(name, context_length), device=device, seed=seed)


def create_model_and_transforms(
    name: str,
    *,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    context_length: int = 52,
    preprocess: str = "fov",
    augment: AugmentConfig | None = None,
):
    """Return ``(model, train_transform, eval_transform)`` for an architecture name."""
    model = create_model(name, device=device, seed=seed, context_length=context_length)
    size = model.vclip_config.image_size
    return (
        model,
        train_transform(size, augment or AugmentConfig(), preprocess=preprocess),
        eval_transform(size, preprocess=preprocess),
    )


def get_tokenizer(name: str | None = None, *, context_length: int | None = None,
                  backend: str = "cn_clip") -> Tokenizer:
    """The tokenizer for a model (all cn_clip text towers share cn_clip's Chinese vocab)."""
    if name is not None:
        cfg = get_model_config(name)
        context_length = context_length or cfg.context_length
    return Tokenizer(context_length=context_length or 52, backend=backend)


__all__ = [
    "CLIP_MEAN", "CLIP_STD", "VISIONCLIP", "VISIONCLIP_TINY", "ModelConfig", "UnknownModelError",
    "add_model_config", "build_clip", "create_model", "create_model_and_transforms", "get_model_config",
    "get_tokenizer", "list_models", "list_towers",
]
