"""One optimizer step's forward and backward: plain, or contrastive accumulation with cached features.

A contrastive loss over K micro-batches of B samples is not the sum of K losses over B samples:
each sample's negatives are the whole batch. ``accum_steps = K > 1`` therefore computes the
loss of one K*B batch (times the number of processes) in three passes, the feature-cache idea
of GradCache (Gao et al., 2021) and open_clip's ``accum_freq``:

1. embed every micro-batch without gradients, keeping its features and the random-number state
   it started from;
2. gather the features of all micro-batches and ranks, compute the whole batch's loss on them as
   leaves and take its gradient with respect to every feature row and temperature;
3. re-run each micro-batch with gradients from the same random-number state (the same dropout
   masks), and back-propagate ``<features, d loss / d features>`` (plus the temperatures' share),
   so the parameters receive exactly the gradient of the whole-batch loss.

Only the last micro-batch's backward synchronises DDP. BatchNorm layers normalise each micro-batch
with its own statistics (as any accumulation does) and update their running statistics once per
micro-batch: the second pass's updates are undone. The objective decides what the features are
(:meth:`~cn_clip_ext.training.objectives.Objective.embed` and ``loss_of``), so CLIP pairs and
RET-CLIP's tripartite heads accumulate alike.

Differences from cn_clip's ``--accum-freq``: its re-run recomputes the whole loss once per
micro-batch and back-propagates it, so the temperature's gradient is counted K times; here the
loss is computed once and each temperature gets its gradient once.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .distributed import all_gather_tensor, is_dist
from .objectives import AutocastFactory, Objective


@dataclass(frozen=True)
class StepLoss:
    """The loss of one optimizer step's whole batch, and its parts (Python floats)."""

    loss: float
    parts: dict[str, float]


def inner_module(model: nn.Module) -> nn.Module:
    """The module DDP wraps (the model itself when it is not wrapped)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _batchnorm_stats(model: nn.Module) -> list[tuple[_BatchNorm, list[torch.Tensor]]]:
    """Copies of the running statistics of every training-mode BatchNorm that tracks them."""
    out = []
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats and m.running_mean is not None:
            out.append((m, [b.detach().clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)]))
    return out


@torch.no_grad()
def _restore_batchnorm(saved: list[tuple[_BatchNorm, list[torch.Tensor]]]) -> None:
    for m, (mean, var, count) in saved:
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count)


def _device_of(batch: Sequence[torch.Tensor]) -> torch.device:
    return next(t.device for t in batch if torch.is_tensor(t))


def plain_step(model: nn.Module, objective: Objective, batch: list[torch.Tensor], autocast: AutocastFactory,
               scaler: Any, check: Callable[[float], None]) -> StepLoss:
    """One micro-batch: the objective's loss (gathered across ranks with gradients) and its backward."""
    loss, parts = objective.loss(model, batch, autocast)
    value = float(loss.detach())
    check(value)
    scaler.scale(loss).backward()
    return StepLoss(value, {k: float(v.detach()) for k, v in parts.items()})


def cached_step(model: nn.Module, objective: Objective, batches: Sequence[list[torch.Tensor]],
                autocast: AutocastFactory, scaler: Any, check: Callable[[float], None]) -> StepLoss:
    """Feature-cached contrastive accumulation over ``batches`` (see the module docstring).

    ``model`` may be DDP-wrapped: the cache pass runs the wrapped module, the gradient pass the
    wrapper, synchronising on the last micro-batch only. ``check`` sees the whole-batch loss
    before any backward (it raises to stop a diverged run).
    """
    k = len(batches)
    device = _device_of(batches[0])
    inner = inner_module(model)
    # 1. the cache pass
    states, rows, scales = [], [], None
    with torch.no_grad():
        for batch in batches:
            states.append(_rng_state(device))
            emb = objective.embed(inner, batch, autocast)
            rows.append(emb.rows)
            scales = scales or emb.scales
    assert scales is not None
    end_state = _rng_state(device)
    bn_after_cache = _batchnorm_stats(inner)
    sizes = [next(iter(r.values())).shape[0] for r in rows]
    local = {name: torch.cat([r[name] for r in rows]) for name in rows[0]}

    # 2. the whole batch's loss on the cached features, and its gradient per feature row
    world, rank = (dist.get_world_size(), dist.get_rank()) if is_dist() else (1, 0)
    leaves: dict[str, torch.Tensor] = {}
    for name, value in local.items():
        if value.is_floating_point():
            leaves[name] = all_gather_tensor(value.float()).requires_grad_(True)
        else:
            leaves[name] = all_gather_tensor(value.to(torch.uint8)).to(value.dtype)
    scale_leaves = {name: s.detach().float().requires_grad_(True) for name, s in scales.items()}
    loss, parts = objective.loss_of(leaves, scale_leaves)
    value = float(loss.detach())
    check(value)
    wanted = [n for n, t in leaves.items() if t.requires_grad] + list(scale_leaves)
    grads = torch.autograd.grad(loss, [leaves[n] if n in leaves else scale_leaves[n] for n in wanted],
                                allow_unused=True)
    grad_of = {n: (g if g is not None else torch.zeros_like(leaves.get(n, scale_leaves.get(n))))
               for n, g in zip(wanted, grads)}
    n_local = sum(sizes)
    # DDP averages parameter gradients over ranks; each rank holds only its rows' share of the
    # whole loss, so its rows' gradients are scaled by the world size (the temperatures' are not:
    # every rank holds their full gradient)
    row_grads = {n: grad_of[n][rank * n_local:(rank + 1) * n_local] * world for n in leaves if n in grad_of}
    scale_grads = {n: grad_of[n] / k for n in scale_leaves}

    # 3. the gradient pass, micro-batch by micro-batch, from the cached random-number states
    start = 0
    for j, batch in enumerate(batches):
        _set_rng_state(states[j], device)
        last = j == k - 1
        sync = contextlib.nullcontext() if last or not isinstance(model, nn.parallel.DistributedDataParallel) \
            else model.no_sync()
        with sync:
            emb = objective.embed(model, batch, autocast)
            stop = start + sizes[j]
            surrogate = sum((emb.rows[n].float() * g[start:stop]).sum() for n, g in row_grads.items())
            surrogate = surrogate + sum((emb.scales[n].float() * g).sum() for n, g in scale_grads.items())
            scaler.scale(surrogate).backward()
        start = stop
    _restore_batchnorm(bn_after_cache)
    _set_rng_state(end_state, device)
    return StepLoss(value, {n: float(v.detach()) for n, v in parts.items()})


def train_step(model: nn.Module, objective: Objective, batches: Sequence[list[torch.Tensor]],
               autocast: AutocastFactory, scaler: Any, check: Callable[[float], None]) -> StepLoss:
    """Forward and backward of one optimizer step over its micro-batches (already on the device):
    :func:`plain_step` for one, :func:`cached_step` for several."""
    if len(batches) == 1:
        return plain_step(model, objective, batches[0], autocast, scaler, check)
    return cached_step(model, objective, batches, autocast, scaler, check)


__all__ = ["StepLoss", "cached_step", "inner_module", "plain_step", "train_step"]
