"""RET-CLIP's tripartite model on any factory architecture: one image encoder for both eyes and
three heads that align the left eye, the right eye and the patient with the clinical report.

The module and parameter names follow RET-CLIP's released state dicts (Du et al., MICCAI 2024),
so its weights load by name:

============================  ==============================================================
``visual.*``, ``bert.*``      cn_clip's towers, shared by all heads
``text_projection.{0,2}.*``   report -> patient (global) space: Linear(H, H), ReLU, Linear(H, D)
``text_projection_left.*``    report -> left-eye space (same shape)
``text_projection_right.*``   report -> right-eye space (same shape)
``global_feature_mapping``    Linear(2D, D, bias=False) on ``[left feature, right feature]``
``left_feature_mapping``      Linear(D, D, bias=False) on the left eye's feature
``right_feature_mapping``     Linear(D, D, bias=False) on the right eye's feature
``logit_scale{,_left,_right}``  one learnable log temperature per head
============================  ==============================================================

A missing eye never enters the image encoder (its placeholder image is skipped). Its left/right
head row is zero and masked out of that head's loss; for the patient (global) head, a one-eyed
patient's missing eye takes the present eye's feature, i.e. the global feature is
``global_feature_mapping([f, f])``. A single image outside a patient (zero-shot, linear probe)
is treated the same way, as a patient with only that eye: see :data:`SINGLE_EYE_HEADS`.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .factory import ModelConfig, create_model
from .weights import retclip_state_to_ours  # noqa: F401  (the rename rule lives with the other rules)

logger = logging.getLogger(__name__)

HEADS = ("global", "left", "right")
LOGIT_SCALES = ("logit_scale", "logit_scale_left", "logit_scale_right")
IMAGE_HEADS = ("global_feature_mapping", "left_feature_mapping", "right_feature_mapping")
TEXT_HEADS = ("text_projection", "text_projection_left", "text_projection_right")
TRIPARTITE_MARKER = "global_feature_mapping.weight"
"""A state dict holding this key is a tripartite (RET-CLIP-layout) model."""


class TripartiteOutput(NamedTuple):
    """Normalised features of one batch of patients, per head, with the eye masks."""

    image_global: torch.Tensor
    image_left: torch.Tensor
    image_right: torch.Tensor
    text_global: torch.Tensor
    text_left: torch.Tensor
    text_right: torch.Tensor
    scale_global: torch.Tensor  # exponentiated temperatures
    scale_left: torch.Tensor
    scale_right: torch.Tensor
    has_left: torch.Tensor
    has_right: torch.Tensor


def _text_head(hidden: int, embed: int) -> nn.Sequential:
    head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, embed))
    for layer in (head[0], head[2]):
        nn.init.normal_(layer.weight, std=hidden ** -0.5)
    return head


class TripartiteCLIP(nn.Module):
    """cn_clip's towers (taken over from a ``CLIP``) with RET-CLIP's three heads.

    ``forward(left, right, has_left, has_right, tokens)`` returns a :class:`TripartiteOutput`;
    ``encode_image``/``encode_text``/``logit_scale`` give the single-eye view chosen by
    :attr:`single_eye_head` (default ``"global"``), so evaluation code written for ``CLIP``
    works unchanged.
    """

    def __init__(self, clip: nn.Module, single_eye_head: str = "global"):
        super().__init__()
        config: ModelConfig = clip.vclip_config
        embed, hidden = config.embed_dim, int(config.text["text_hidden_size"])
        self.visual = clip.visual
        self.bert = clip.bert
        self.tokenizer = clip.tokenizer
        self.text_projection = _text_head(hidden, embed)
        self.text_projection_left = _text_head(hidden, embed)
        self.text_projection_right = _text_head(hidden, embed)
        start = clip.logit_scale.detach().clone()
        self.logit_scale = nn.Parameter(start.clone())
        self.logit_scale_left = nn.Parameter(start.clone())
        self.logit_scale_right = nn.Parameter(start.clone())
        self.global_feature_mapping = nn.Linear(2 * embed, embed, bias=False)
        self.left_feature_mapping = nn.Linear(embed, embed, bias=False)
        self.right_feature_mapping = nn.Linear(embed, embed, bias=False)
        self.vclip_config = config
        self.logit_scale_names = LOGIT_SCALES
        self.set_single_eye_head(single_eye_head)

    # -- towers ----------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """The towers' parameter dtype (the text tower's in a text-only bundle)."""
        if self.visual is not None:
            return self.visual.conv1.weight.dtype
        return next(self.bert.parameters()).dtype

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.bert.set_grad_checkpointing(enable)

    def eye_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unmapped image-encoder features ``[N, D]`` of single eyes."""
        return self.visual(images.type(self.dtype))

    def report_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """The text encoder's [CLS] hidden state ``[N, H]``."""
        pad = self.tokenizer.vocab["[PAD]"]
        hidden = self.bert(tokens, attention_mask=tokens.ne(pad).type(self.dtype))[0]
        return hidden[:, 0, :].type(self.dtype)

    # -- patients --------------------------------------------------------------------------
    def forward(self, left: torch.Tensor, right: torch.Tensor, has_left: torch.Tensor, has_right: torch.Tensor,
                tokens: torch.Tensor) -> TripartiteOutput:  # type: ignore[override]
        has_left, has_right = has_left.bool().view(-1), has_right.bool().view(-1)
        if not bool((has_left | has_right).all()):
            raise UserError("a patient in this batch has neither a left nor a right eye image")
        rows_l, rows_r = has_left.nonzero().view(-1), has_right.nonzero().view(-1)
        present = self.eye_features(torch.cat([left[rows_l], right[rows_r]]))
        feat_l, feat_r = present.split([rows_l.numel(), rows_r.numel()])
        n, dim = left.shape[0], present.shape[1]
        f_l = present.new_zeros(n, dim).index_copy(0, rows_l, feat_l)
        f_r = present.new_zeros(n, dim).index_copy(0, rows_r, feat_r)
        # the patient head sees the present eye twice when the other is missing
        both = torch.cat([torch.where(has_left[:, None], f_l, f_r), torch.where(has_right[:, None], f_r, f_l)], 1)
        cls = self.report_states(tokens)
        return TripartiteOutput(
            F.normalize(self.global_feature_mapping(both), dim=-1),
            F.normalize(self.left_feature_mapping(f_l), dim=-1),
            F.normalize(self.right_feature_mapping(f_r), dim=-1),
            F.normalize(self.text_projection(cls), dim=-1),
            F.normalize(self.text_projection_left(cls), dim=-1),
            F.normalize(self.text_projection_right(cls), dim=-1),
            self.logit_scale.exp(), self.logit_scale_left.exp(), self.logit_scale_right.exp(),
            has_left, has_right)

    # -- single eyes (evaluation) ------------------------------------------------------------
    def set_single_eye_head(self, head: str) -> None:
        """Choose the head :meth:`encode_image`/:meth:`encode_text` use (see :data:`SINGLE_EYE_HEADS`)."""
        if head not in SINGLE_EYE_HEADS:
            raise UserError(f"unknown single-eye head {head!r}; choose from {sorted(SINGLE_EYE_HEADS)}")
        self.single_eye_head = head

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings of single eye images in the chosen head's space."""
        return SINGLE_EYE_HEADS[self.single_eye_head].image(self, self.eye_features(images))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings of reports/prompts in the chosen head's space."""
        return SINGLE_EYE_HEADS[self.single_eye_head].text(self, self.report_states(tokens))

    @property
    def single_eye_scale(self) -> torch.Tensor:
        """The chosen head's log temperature."""
        return getattr(self, SINGLE_EYE_HEADS[self.single_eye_head].scale)


class SingleEyeHead(NamedTuple):
    """How one image and one text are embedded into a shared space."""

    image: Callable[[TripartiteCLIP, torch.Tensor], torch.Tensor]
    text: Callable[[TripartiteCLIP, torch.Tensor], torch.Tensor]
    scale: str
    description: str


SINGLE_EYE_HEADS: Mapping[str, SingleEyeHead] = {
    "global": SingleEyeHead(
        lambda m, f: m.global_feature_mapping(torch.cat([f, f], 1)), lambda m, h: m.text_projection(h),
        "logit_scale", "patient head; the eye is a one-eyed patient (its feature on both sides)"),
    "left": SingleEyeHead(
        lambda m, f: m.left_feature_mapping(f), lambda m, h: m.text_projection_left(h),
        "logit_scale_left", "left-eye head"),
    "right": SingleEyeHead(
        lambda m, f: m.right_feature_mapping(f), lambda m, h: m.text_projection_right(h),
        "logit_scale_right", "right-eye head"),
    "unmapped-left": SingleEyeHead(
        lambda m, f: f, lambda m, h: m.text_projection_left(h),
        "logit_scale_left", "unmapped encoder feature against the left text head (RET-CLIP's zero-shot script)"),
}
"""Single-eye views of a tripartite model; ``global`` is the default everywhere."""


def to_tripartite(clip: nn.Module, seed: int | None = None) -> TripartiteCLIP:
    """Wrap a factory ``CLIP`` (its towers are reused, not copied); new heads seeded by ``seed``."""
    if isinstance(clip, TripartiteCLIP):
        return clip
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed + 1)
        model = TripartiteCLIP(clip)
    return model.to(device=clip.logit_scale.device, dtype=clip.logit_scale.dtype)


def create_tripartite_model(name: str, *, device: str | torch.device = "cpu", seed: int | None = None,
                            context_length: int = 52) -> TripartiteCLIP:
    """A randomly initialised :class:`TripartiteCLIP` for a factory architecture name."""
    return to_tripartite(create_model(name, device=device, seed=seed, context_length=context_length), seed)


def is_tripartite_state(state: Mapping[str, object]) -> bool:
    """Whether a (prefix-stripped) state dict has RET-CLIP's tripartite heads."""
    return TRIPARTITE_MARKER in state


__all__ = ["HEADS", "IMAGE_HEADS", "LOGIT_SCALES", "TEXT_HEADS", "SINGLE_EYE_HEADS", "SingleEyeHead", "TripartiteCLIP", "TripartiteOutput",
           "create_tripartite_model", "is_tripartite_state", "retclip_state_to_ours", "to_tripartite"]
