"""``load_pretrained``: a trained VisionCLIP model in one call, from a bundle or a checkpoint.

::

    model, preprocess, tokenizer = load_pretrained("visionclip-bundle")
    image_emb = model.encode_image(preprocess(pil_image)[None])   # L2-normalised
    text_emb = model.encode_text(["疑似青光眼。"])                  # strings or token ids

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

from .bundle import TOWERS, BundleConfig, check_shapes, is_bundle, read_bundle, tower_of
from ..errors import UserError, first_line
from .factory import ModelConfig
from .tokenizer import Tokenizer
from .transforms import PREPROCESS_MODES, eval_transform
from .tripartite import IMAGE_HEADS, TEXT_HEADS, TripartiteCLIP, to_tripartite

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


def _build_clip(config: ModelConfig) -> nn.Module:
    """cn_clip's ``CLIP`` for a config on the meta device: no random initialisation (3 s for RN50
    on a CPU) for the bundle's weights to overwrite; they are assigned by ``load_state_dict``."""
    from cn_clip.clip.model import CLIP

    with torch.device("meta"):
        clip = CLIP(**config.clip_kwargs())
    clip.vclip_config = config
    return clip


def _from_bundle(path: Path, verify: bool) -> tuple[nn.Module, BundleConfig]:
    cfg, state = read_bundle(path, verify=verify)
    mc = cfg.model_config()
    try:
        clip = _build_clip(mc)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"{path / 'config.json'}: tower configs do not build a CLIP model ({first_line(exc)})") from None
    if cfg.heads == "tripartite":
        clip = to_tripartite(clip)
        clip.set_single_eye_head(cfg.single_eye_head)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    check_shapes(path, cfg, clip.state_dict(), state)
    result = clip.load_state_dict(state, strict=False, assign=True)  # a left-out tower stays on meta, then is dropped
    missing = [k for k in result.missing_keys if "bert.pooler" not in k and tower_of(k) in cfg.towers]
    if missing or result.unexpected_keys:
        example = (missing or result.unexpected_keys)[0]
        raise UserError(f"{path / 'model.safetensors'}: weights do not fit {cfg.architecture} "
                        f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected, e.g. {example!r})")
    return clip, cfg


def load_pretrained(path: str | Path, device: str | torch.device = "cpu", model_name: str | None = None, *,
                    preprocess: str | None = None, verify: bool = True):
    """``(model, preprocess, tokenizer)`` from a bundle folder, a training checkpoint or a cn_clip ``.pt``.

    - ``model``: :class:`VisionCLIPModel` in eval mode, fp32, parameters frozen
      (``model.requires_grad_(True)`` to fine-tune);
    - ``preprocess``: PIL image -> normalised tensor (:func:`eval_transform` at the model's resolution);
    - ``tokenizer``: :class:`Tokenizer` with the model's context length.

    ``model_name`` names the architecture of cn_clip-format checkpoints, which do not record it.
    ``preprocess`` overrides the recorded preprocessing mode (a cn_clip checkpoint defaults to
    ``"squash"``, cn_clip's own resize). ``verify`` checks a bundle's file hashes.
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
        from .checkpoints import load_checkpoint_full

        loaded = load_checkpoint_full(path, model_name)
        clip, towers, mc = loaded.model, TOWERS, loaded.model.vclip_config
        mode = preprocess or loaded.config.get("preprocess") or ("fov" if loaded.is_visionclip else "squash")
        logger.info("loaded checkpoint %s (%s, step %s)", path, loaded.name, loaded.step)
    else:
        raise UserError(f"{path}: no such bundle folder or checkpoint file")
    tokenizer = Tokenizer(mc.context_length)
    model = VisionCLIPModel(clip, mc, towers, tokenizer, mode)
    model = model.to(device).eval().requires_grad_(False)
    return model, eval_transform(mc.image_size, preprocess=mode), tokenizer


__all__ = ["MissingTowerError", "VisionCLIPModel", "load_pretrained"]
