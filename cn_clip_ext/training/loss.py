"""CLIP's symmetric contrastive loss over the global batch, gathered across ranks.

Every rank gathers all ranks' (L2-normalised) features and computes the same global loss. The
gather's backward sums the incoming gradients over ranks and keeps this rank's slice, so after
DDP averages gradients, each parameter receives exactly the gradient of the single-process loss
on the same global batch (the logit scale included).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..model.protocols import logit_scale_names
from .distributed import all_gather_tensor, is_dist, unwrap

LOGIT_SCALE_MAX = 4.6052  # ln(100): CLIP's clamp on the learnable log temperature


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's share of the summed gradient."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous())
        ctx.rank, ctx.n = rank, local.shape[0]
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's features
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_features(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-ordered global features; local gradients flow (identity on one process)."""
    if not is_dist():
        return image_features, text_features
    return _GatherWithGrad.apply(image_features), _GatherWithGrad.apply(text_features)


def contrastive_logits(image_features: torch.Tensor, text_features: torch.Tensor,
                       logit_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits_per_image, logits_per_text)`` for already normalised features."""
    logits_per_image = logit_scale * image_features @ text_features.t()
    return logits_per_image, logits_per_image.t()


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy; pair ``i`` is the positive of row ``i``.

    ``logit_scale`` is the already exponentiated temperature (what cn_clip's ``CLIP.forward``
    returns). Computed in fp32 whatever the autocast dtype.
    """
    image_features, text_features = image_features.float(), text_features.float()
    logits_i, logits_t = contrastive_logits(image_features, text_features, logit_scale.float())
    target = torch.arange(logits_i.shape[0], device=logits_i.device)
    return (F.cross_entropy(logits_i, target) + F.cross_entropy(logits_t, target)) / 2


class ContrastiveLoss(torch.nn.Module):
    """Global-batch CLIP loss: gather across ranks (with gradients), then :func:`clip_loss`."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        all_image, all_text = gather_features(image_features, text_features)
        return clip_loss(all_image, all_text, logit_scale.mean())


def masked_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                     present: torch.Tensor) -> torch.Tensor:
    """:func:`clip_loss` over the rows where ``present`` is true (the others take no part).

    With no present row the loss is a zero that still depends on every input, so each parameter
    gets a (zero) gradient and distributed data parallel sees the same graph on every step.
    """
    rows = present.nonzero().view(-1)
    if rows.numel() == 0:
        return (image_features.float().sum() + text_features.float().sum() + logit_scale.float()) * 0.0
    return clip_loss(image_features[rows], text_features[rows], logit_scale)


class TripartiteLoss(torch.nn.Module):
    """RET-CLIP's loss: patient + left-eye + right-eye CLIP losses over the global batch.

    Takes a :class:`cn_clip_ext.model.tripartite.TripartiteOutput`; each head's features are gathered
    across ranks with gradients (:func:`gather_features`) and the eye masks without. The patient
    loss uses every row; each eye loss only the patients that have that eye. Returns
    ``(sum of the three, {"global": ..., "left": ..., "right": ...})``.
    """

    def forward(self, out) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # type: ignore[override]
        img_g, txt_g = gather_features(out.image_global, out.text_global)
        img_l, txt_l = gather_features(out.image_left, out.text_left)
        img_r, txt_r = gather_features(out.image_right, out.text_right)
        has_l = all_gather_tensor(out.has_left.to(torch.uint8)).bool()
        has_r = all_gather_tensor(out.has_right.to(torch.uint8)).bool()
        rows = {"image_global": img_g, "text_global": txt_g, "image_left": img_l, "text_left": txt_l,
                "image_right": img_r, "text_right": txt_r, "has_left": has_l, "has_right": has_r}
        return tripartite_loss(rows, {"scale_global": out.scale_global, "scale_left": out.scale_left,
                                      "scale_right": out.scale_right})


def tripartite_loss(rows, scales) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RET-CLIP's three-part loss of already gathered rows (``image_global`` ... ``has_right``) and
    temperatures (``scale_global``, ``scale_left``, ``scale_right``); see :class:`TripartiteLoss`."""
    parts = {"global": clip_loss(rows["image_global"], rows["text_global"], scales["scale_global"].mean()),
             "left": masked_clip_loss(rows["image_left"], rows["text_left"], scales["scale_left"].mean(),
                                      rows["has_left"].bool()),
             "right": masked_clip_loss(rows["image_right"], rows["text_right"], scales["scale_right"].mean(),
                                       rows["has_right"].bool())}
    return parts["global"] + parts["left"] + parts["right"], parts


@torch.no_grad()
def clamp_logit_scale(model: torch.nn.Module) -> None:
    """Keep every log temperature (``logit_scale``, and those a model lists in ``logit_scale_names``)
    in ``[0, ln 100]`` as CLIP does after each step."""
    target = unwrap(model)
    for name in logit_scale_names(target):
        getattr(target, name).clamp_(0, LOGIT_SCALE_MAX)


__all__ = ["ContrastiveLoss", "LOGIT_SCALE_MAX", "TripartiteLoss", "clamp_logit_scale", "clip_loss",
           "contrastive_logits", "gather_features", "masked_clip_loss", "tripartite_loss"]
