"""AdamW with decay only on weight matrices, and warm-up + cosine learning rate.

The schedule is cn_clip's own :func:`cn_clip.training.scheduler.cosine_lr` (device-agnostic):
linear warm-up to the peak, then half a cosine down to zero at the last step.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from cn_clip.training.scheduler import cosine_lr

logger = logging.getLogger(__name__)


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Norm weights, biases, embeddings and the logit scale are not decayed.

    Every parameter with fewer than two dimensions is a norm gain, a bias or the logit scale;
    embedding tables (word, position, token type, attention-pool positions) are found by name.
    """
    return param.ndim < 2 or "embedding" in name or name.endswith("logit_scale") or ".bn" in name or \
        "LayerNorm" in name


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights and the rest (trainable parameters only)."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (keep if no_decay(name, p) else decay).append(p)
    logger.debug("%d decayed and %d non-decayed parameter tensors", len(decay), len(keep))
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": keep, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`: fused on CUDA; on the CPU the multi-tensor (``foreach``)
    update, about twice as fast as PyTorch's CPU default for the tiny model's ~200 tensors."""
    groups = param_groups(model, weight_decay)
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    kwargs = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, lr: float, warmup_steps: int,
                    total_steps: int) -> Callable[[int], float]:
    """``schedule(step)`` sets and returns the lr for 0-based optimizer step ``step``."""
    warmup = min(warmup_steps, total_steps - 1)  # the cosine needs at least one step
    adjust = cosine_lr(optimizer, lr, max(0, warmup), max(1, total_steps))

    def schedule(step: int) -> float:
        value = float(adjust(step))  # cn_clip computes a NumPy scalar; keep checkpoints plain
        for group in optimizer.param_groups:
            group["lr"] = value
        return value

    return schedule


__all__ = ["build_optimizer", "build_scheduler", "no_decay", "param_groups"]
