"""The cn_clip family of weights: our bundles and training checkpoints (``visionclip``), Chinese-CLIP's
own ``.pt`` files (``cn_clip``) and RET-CLIP's released weights (``retclip``). All build cn_clip's
``CLIP`` (or the tripartite model on its towers) and wrap it in :class:`VisionCLIPModel`.

Nothing is unpickled: bundles are safetensors + JSON, checkpoints are read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError, first_line
from ..bundle import TOWERS, BundleConfig, check_shapes, is_bundle, read_bundle, tower_of
from ..checkpoints import load_checkpoint_full
from ..factory import ModelConfig, build_clip
from ..tokenizer import Tokenizer
from ..transforms import PREPROCESS_MODES, eval_transform
from ..tripartite import IMAGE_HEADS, TEXT_HEADS, TripartiteCLIP, to_tripartite
from ..weights import is_pooler, load_strict
from .base import Family, Loaded

logger = logging.getLogger(__name__)


class MissingTowerError(UserError, RuntimeError):
    """A tower was used that the loaded bundle does not contain (exported image- or text-only)."""


class VisionCLIPModel(nn.Module):
    """Inference wrapper around cn_clip's ``CLIP`` (``self.clip``) with normalised encoders.

    ``encode_image(images)`` takes a ``[B, 3, S, S]`` batch from ``preprocess``;
    ``encode_text(texts)`` takes token ids ``[B, L]`` or strings. Both return L2-normalised
    ``[B, embed_dim]`` float tensors. A tower left out of the bundle is ``None`` in ``self.clip``
    and using it raises :class:`MissingTowerError`.
    """

    def __init__(self, clip: nn.Module, config: ModelConfig, towers: Sequence[str] = TOWERS,
                 tokenizer: Tokenizer | None = None, preprocess: str = "fov"):
        super().__init__()
        self.clip = clip
        self.vclip_config = config
        self.towers = tuple(towers)
        self.preprocess_mode = preprocess
        self.tokenizer = tokenizer or Tokenizer(config.context_length)
        tripartite = isinstance(clip, TripartiteCLIP)
        if "image" not in self.towers:
            for name in ("visual", *(IMAGE_HEADS if tripartite else ())):
                setattr(clip, name, None)
        if "text" not in self.towers:
            for name in ("bert", *(TEXT_HEADS if tripartite else ("text_projection",))):
                setattr(clip, name, None)

    @property
    def logit_scale(self) -> torch.Tensor:
        """The learned log temperature (``logit_scale.exp()`` scales cosine similarities)."""
        return self.clip.logit_scale

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    def require_tower(self, tower: str) -> None:
        """Raise :class:`MissingTowerError` unless this model has ``tower`` ("image" or "text")."""
        if tower not in self.towers:
            other = "text" if tower == "image" else "image"
            raise MissingTowerError(f"this {self.vclip_config.name} model has no {tower} tower (it was exported "
                                    f"{other}-only); use encode_{other} or a bundle with both towers")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings of a preprocessed batch."""
        self.require_tower("image")
        if isinstance(self.clip, TripartiteCLIP):  # the single-eye head decides the space
            return F.normalize(self.clip.encode_image(images.to(self.device)).float(), dim=-1)
        visual = self.clip.visual
        x = images.to(device=self.device, dtype=visual.conv1.weight.dtype)
        return F.normalize(visual(x).float(), dim=-1)

    def encode_text(self, texts: torch.Tensor | str | Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings of token ids (``[B, L]``) or of strings (tokenized here)."""
        self.require_tower("text")
        ids = texts if torch.is_tensor(texts) else self.tokenizer(texts)
        ids = ids.to(self.device)
        if isinstance(self.clip, TripartiteCLIP):
            return F.normalize(self.clip.encode_text(ids).float(), dim=-1)
        bert = self.clip.bert
        dtype = self.clip.text_projection.dtype
        pad = self.clip.tokenizer.vocab["[PAD]"]
        hidden = bert(ids, attention_mask=ids.ne(pad).to(dtype))[0].to(dtype)
        return F.normalize((hidden[:, 0, :] @ self.clip.text_projection).float(), dim=-1)

    def forward(self, images: torch.Tensor, texts: torch.Tensor | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image embeddings, text embeddings)``, both normalised."""
        return self.encode_image(images), self.encode_text(texts)

    def extra_repr(self) -> str:
        return f"architecture={self.vclip_config.name!r}, towers={self.towers}, preprocess={self.preprocess_mode!r}"


def _from_bundle(path: Path, verify: bool) -> tuple[nn.Module, BundleConfig]:
    cfg, state = read_bundle(path, verify=verify)
    mc = cfg.model_config()
    try:
        clip = build_clip(mc, device="meta")
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"{path / 'config.json'}: tower configs do not build a CLIP model ({first_line(exc)})") from None
    if cfg.heads == "tripartite":
        clip = to_tripartite(clip)
        clip.set_single_eye_head(cfg.single_eye_head)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    check_shapes(path, cfg, clip.state_dict(), state)
    # a left-out tower stays on meta, then is dropped by VisionCLIPModel
    load_strict(clip, state, path / "model.safetensors", cfg.architecture,
                optional=lambda key: is_pooler(key) or tower_of(key) not in cfg.towers)
    return clip, cfg


def load_cn_clip_family(path: Path, device: str | torch.device = "cpu", model_name: str | None = None, *,
                        preprocess: str | None = None, verify: bool = True,
                        checkpoint_format: str | None = None, single_eye_head: str | None = None) -> Loaded:
    """``(model, preprocess, tokenizer)`` from a bundle folder or a checkpoint file.

    - ``model``: :class:`VisionCLIPModel` in eval mode, fp32, parameters frozen
      (``model.requires_grad_(True)`` to fine-tune);
    - ``preprocess``: PIL image -> normalised tensor (:func:`eval_transform` at the model's resolution);
    - ``tokenizer``: :class:`Tokenizer` with the model's context length.

    ``model_name`` names the architecture of cn_clip-format checkpoints, which do not record it.
    ``preprocess`` overrides the recorded preprocessing mode (a cn_clip checkpoint defaults to
    ``"squash"``, cn_clip's own resize). ``verify`` checks a bundle's file hashes.
    ``checkpoint_format`` reads a file as that format (``None``: recognised by its contents);
    ``single_eye_head`` chooses a tripartite model's head for single images.
    """
    path = Path(path)
    if preprocess is not None and preprocess not in PREPROCESS_MODES:
        raise UserError(f"unknown preprocess mode {preprocess!r}; choose from {sorted(PREPROCESS_MODES)}")
    if path.is_dir():
        if not is_bundle(path):
            raise UserError(f"{path}: not a VisionCLIP bundle (no config.json)")
        clip, cfg = _from_bundle(path, verify)
        if model_name and model_name != cfg.architecture:
            logger.warning("%s: bundle architecture %s overrides model_name %s", path, cfg.architecture, model_name)
        mode, towers, mc = preprocess or cfg.preprocess, cfg.towers, cfg.model_config()
        logger.info("loaded bundle %s (%s, %s)", path, cfg.architecture, "+".join(towers))
    elif path.is_file():
        loaded = load_checkpoint_full(path, model_name, format=checkpoint_format)
        clip, towers, mc = loaded.model, TOWERS, loaded.model.vclip_config
        mode = preprocess or loaded.config.get("preprocess") or ("fov" if loaded.is_visionclip else "squash")
        logger.info("loaded checkpoint %s (%s, step %s)", path, loaded.name, loaded.step)
    else:
        raise UserError(f"{path}: no such bundle folder or checkpoint file")
    if single_eye_head is not None:
        if not isinstance(clip, TripartiteCLIP):
            raise UserError(f"{path}: single_eye_head is for tripartite (RET-CLIP-layout) models; this is {mc.name}")
        clip.set_single_eye_head(single_eye_head)
    tokenizer = Tokenizer(mc.context_length)
    model = VisionCLIPModel(clip, mc, towers, tokenizer, mode)
    model = model.to(device).eval().requires_grad_(False)
    return Loaded(model, eval_transform(mc.image_size, preprocess=mode), tokenizer)


_OPTIONS = ("model_name", "preprocess", "verify", "single_eye_head")
_MISSING = "no such bundle folder or checkpoint file"

FAMILY = Family(
    "visionclip", lambda path, device, **o: load_cn_clip_family(path, device, checkpoint_format=(
        None if path.is_dir() else "visionclip"), **o),
    _OPTIONS, "zh", "VisionCLIP bundles and training checkpoints (cn_clip's CLIP, Chinese prompts)", _MISSING)

RECOGNISED = Family(
    "visionclip", lambda path, device, **o: load_cn_clip_family(path, device, **o),
    _OPTIONS, "zh", "a bundle, or a checkpoint of the cn_clip family recognised by its contents", _MISSING)
"""What ``family=None`` loads a bundle or a checkpoint file with: today's auto-detection."""


__all__ = ["FAMILY", "MissingTowerError", "RECOGNISED", "VisionCLIPModel", "load_cn_clip_family"]
