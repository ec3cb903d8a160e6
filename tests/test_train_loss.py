"""The contrastive loss: CLIP's formula, and the all-gathered loss equals the single-process one."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cn_clip_ext.training.loss import LOGIT_SCALE_MAX, ContrastiveLoss, clamp_logit_scale, clip_loss

N_PER_RANK, DIM, WORLD = 3, 8, 2


def _global_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(N_PER_RANK * WORLD, DIM, generator=g), dim=-1)
    txt = F.normalize(torch.randn(N_PER_RANK * WORLD, DIM, generator=g), dim=-1)
    return img, txt, torch.tensor(2.5)


def _towers(seed: int = 1):
    """Inputs and two linear 'towers' (the parameters DDP would average)."""
    g = torch.Generator().manual_seed(seed)
    x_img = torch.randn(N_PER_RANK * WORLD, 5, generator=g)
    x_txt = torch.randn(N_PER_RANK * WORLD, 4, generator=g)
    w_img = torch.randn(5, DIM, generator=g)
    w_txt = torch.randn(4, DIM, generator=g)
    return x_img, x_txt, w_img, w_txt, torch.tensor(2.5)


def _forward(x_img, x_txt, w_img, w_txt, log_scale, loss_fn):
    return loss_fn(F.normalize(x_img @ w_img, dim=-1), F.normalize(x_txt @ w_txt, dim=-1), log_scale.exp())


def test_clip_loss_matches_the_textbook_formula():
    img, txt, log_scale = _global_batch()
    logits = log_scale.exp() * img @ txt.t()
    target = torch.arange(len(img))
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    assert torch.allclose(clip_loss(img, txt, log_scale.exp()), expected)
    assert torch.equal(ContrastiveLoss()(img, txt, log_scale.exp()), clip_loss(img, txt, log_scale.exp()))


def test_logit_scale_is_clamped_to_ln_100():
    m = torch.nn.Module()
    m.logit_scale = torch.nn.Parameter(torch.tensor(9.0))
    clamp_logit_scale(m)
    assert float(m.logit_scale.detach()) == pytest.approx(LOGIT_SCALE_MAX)
    m.logit_scale.data.fill_(-1.0)
    clamp_logit_scale(m)
    assert float(m.logit_scale.detach()) == 0.0


def _single_process_reference():
    x_img, x_txt, *params = _towers()
    params = [p.requires_grad_() for p in params]
    loss = _forward(x_img, x_txt, *params, clip_loss)
    loss.backward()
    return loss.detach(), [p.grad for p in params]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x_img, x_txt, *params = _towers()
        params = [p.clone().requires_grad_() for p in params]
        sl = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)  # this rank's share of the global batch
        loss = _forward(x_img[sl], x_txt[sl], *params, ContrastiveLoss())
        loss.backward()
        grads = [p.grad.clone() for p in params]
        for g in grads:  # what DDP does: average parameter gradients over ranks
            dist.all_reduce(g)
            g /= WORLD
        torch.save({"loss": loss.detach(), "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_all_gather_loss_and_gradients_equal_single_process(tmp_path):
    """2 gloo processes with half the batch each == 1 process with the whole batch (loss and grads)."""
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.start_processes(_worker, args=(init_file, str(tmp_path)), nprocs=WORLD, start_method="spawn")
    ref_loss, ref_grads = _single_process_reference()
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(got["loss"], ref_loss, atol=1e-6)
        for name, g, ref in zip(("w_img", "w_txt", "logit_scale"), got["grads"], ref_grads):
            assert torch.allclose(g, ref, atol=1e-6), name
