"""Feature-cached contrastive accumulation: K micro-batches give the gradient and the loss of one
K-times larger batch (one process, and two gloo processes under torchrun)."""
from __future__ import annotations

import contextlib
import math
import socket
import subprocess

import pytest
import torch

from cn_clip_ext.model.factory import add_model_config, create_model
from cn_clip_ext.model.tripartite import to_tripartite
from cn_clip_ext.synth.toys import make_toy_patients, make_toy_pairs
from cn_clip_ext.training import TrainConfig, train
from cn_clip_ext.training.accumulation import cached_step, plain_step
from cn_clip_ext.training.objectives import ClipObjective, TripartiteObjective
from test_train_support import ROOT, TEST_MODEL, TORCHRUN, cpu_env, model_config_dir, train_losses


class _NoScaling:
    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss


def _ok(_: float) -> None:
    pass


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want) and len(want) > 20
    for name, ref in want.items():
        diff = float((got[name] - ref).abs().max())
        assert diff <= 1e-5, (name, diff, float(ref.abs().max()))


def _frozen_model(tmp_path, tripartite: bool = False) -> torch.nn.Module:
    add_model_config(model_config_dir(tmp_path))
    model = create_model(TEST_MODEL, seed=0)
    if tripartite:
        model = to_tripartite(model, seed=0)
    return model.eval()  # dropout off, BatchNorm on its running statistics


def test_accumulated_8x4_gradients_equal_one_batch_of_32(tmp_path):
    model = _frozen_model(tmp_path)
    data = make_toy_pairs(32, 64, seed=1)
    images, tokens = data.images, data.tokens
    objective = ClipObjective()

    model.zero_grad()
    whole = plain_step(model, objective, [images, tokens], contextlib.nullcontext, _NoScaling(), _ok)
    want = _grads(model)

    model.zero_grad()
    micro = [[images[i:i + 4], tokens[i:i + 4]] for i in range(0, 32, 4)]
    accumulated = cached_step(model, objective, micro, contextlib.nullcontext, _NoScaling(), _ok)
    got = _grads(model)

    assert abs(accumulated.loss - whole.loss) < 1e-5
    _assert_same_grads(got, want)
    assert "logit_scale" in got  # the temperature's gradient is counted once, not eight times


def test_accumulated_tripartite_equals_one_batch(tmp_path):
    model = _frozen_model(tmp_path, tripartite=True)
    patients = make_toy_patients(16, 64, seed=2)
    batch = [torch.stack(col) if torch.is_tensor(col[0]) else torch.tensor(col)
             for col in zip(*(patients[i] for i in range(16)))]
    batch[2], batch[3], batch[4] = batch[2].bool(), batch[3].bool(), batch[4].long()
    assert not bool(batch[2].all() and batch[3].all())  # some patients lack an eye
    objective = TripartiteObjective()

    model.zero_grad()
    whole = plain_step(model, objective, batch, contextlib.nullcontext, _NoScaling(), _ok)
    want = _grads(model)
    model.zero_grad()
    micro = [[t[i:i + 4] for t in batch] for i in range(0, 16, 4)]
    accumulated = cached_step(model, objective, micro, contextlib.nullcontext, _NoScaling(), _ok)

    assert abs(accumulated.loss - whole.loss) < 1e-5
    assert set(accumulated.parts) == {"global", "left", "right"}
    for name in accumulated.parts:
        assert abs(accumulated.parts[name] - whole.parts[name]) < 1e-5
    _assert_same_grads(_grads(model), want)


def test_batchnorm_statistics_are_updated_once_per_micro_batch(tmp_path):
    add_model_config(model_config_dir(tmp_path))
    model = create_model(TEST_MODEL, seed=0).train()
    data = make_toy_pairs(16, 64, seed=1)
    micro = [[data.images[i:i + 4], data.tokens[i:i + 4]] for i in range(0, 16, 4)]
    bn = model.visual.bn1
    cached_step(model, ClipObjective(), micro, contextlib.nullcontext, _NoScaling(), _ok)
    assert int(bn.num_batches_tracked) == 4  # the gradient pass's updates were undone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accumulation_under_two_gloo_processes(tmp_path):
    config_dir = model_config_dir(tmp_path)
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
           str(_free_port()), str(ROOT / "tests" / "accumulation_worker.py"), str(config_dir), TEST_MODEL]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cpu_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank compared its DDP-averaged gradients with the single-process batch of 32
    assert proc.stdout.count("gradients equal") == 2, proc.stdout


def test_logged_loss_of_an_accumulated_step_is_the_whole_batch_loss(tmp_path):
    cfg = TrainConfig.tiny(model=TEST_MODEL, model_config_dir=str(model_config_dir(tmp_path)),
                           output_dir=str(tmp_path / "run"), batch_size=4, accum_steps=8, max_steps=1,
                           lr=1e-6, warmup_steps=0, num_workers=0, valid_every=0, save_every=1, log_every=1,
                           progress=False, plot=False, tensorboard=False, seed=3)
    train(cfg, make_toy_pairs(32, 64, seed=5), None)
    loss = train_losses(tmp_path / "run" / "metrics.csv")[1]
    assert abs(loss - math.log(32)) < 0.25, loss  # 32 candidates per sample at initialisation
    assert loss > math.log(8) + 1.0  # not the mean of eight 4-sample losses
