"""Kill-and-resume: a run stopped after its last checkpoint and resumed with ``resume=auto``
reproduces the uninterrupted run's loss trajectory and final weights exactly (fp32, CPU)."""
from __future__ import annotations

import torch

from cn_clip_ext.training import TrainConfig, load_checkpoint, make_toy_pairs, train
from cn_clip_ext.training.checkpoint import LATEST, list_step_checkpoints
from test_train_support import TEST_MODEL, NoisyPairs, model_config_dir, train_losses


def _config(tmp_path, out: str, **kw) -> TrainConfig:
    base = dict(model=TEST_MODEL, model_config_dir=str(model_config_dir(tmp_path)), output_dir=str(tmp_path / out),
                batch_size=4, accum_steps=2, num_workers=1, max_steps=7, lr=2e-3, warmup_steps=2,
                valid_every=3, valid_batch_size=8, save_every=3, keep_last=2, log_every=1, progress=False,
                plot=False, tensorboard=False, seed=7)
    base.update(kw)
    return TrainConfig.tiny(**base)


def _data():
    # 32 items / (4 x 2) = 4 steps per epoch: 7 steps cross an epoch boundary; noise per item
    # stands in for random augmentation and must be the same after resuming
    return NoisyPairs(make_toy_pairs(32, 64, seed=3)), make_toy_pairs(8, 64, seed=4)


def test_resume_reproduces_uninterrupted_trajectory(tmp_path):
    full = train(_config(tmp_path, "full"), *_data())
    assert full.step == 7

    crashed = train(_config(tmp_path, "split", stop_after=5), *_data())  # "killed" after step 5
    assert crashed.step == 5
    folder = tmp_path / "split" / "checkpoints"
    assert [s for s, _ in list_step_checkpoints(folder)] == [3]  # step 5 was never saved
    resumed = train(_config(tmp_path, "split", resume="auto"), *_data())
    assert resumed.step == 7
    assert [s for s, _ in resumed.losses] == [4, 5, 6, 7]  # continued from step 3, mid-epoch

    expected = train_losses(tmp_path / "full" / "metrics.csv")
    got = train_losses(tmp_path / "split" / "metrics.csv")
    assert list(expected) == list(range(1, 8))
    assert got == expected  # exact float equality, step by step
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / LATEST)["state_dict"]
    b = load_checkpoint(folder / LATEST)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_layout_and_keep_last(tmp_path):
    cfg = _config(tmp_path, "keep", max_steps=4, save_every=1, keep_last=2, valid_every=0, num_workers=0,
                  accum_steps=1)
    train(cfg, *_data())
    folder = tmp_path / "keep" / "checkpoints"
    assert [s for s, _ in list_step_checkpoints(folder)] == [3, 4]
    state = load_checkpoint(folder / LATEST)
    for key in ("epoch", "step", "name", "state_dict", "optimizer", "config", "rng", "position"):
        assert key in state
    assert state["step"] == 4 and state["name"] == TEST_MODEL
    assert state["position"] == {"epoch": 0, "batch": 4}
    assert not any(k.startswith("module.") for k in state["state_dict"])
    assert (tmp_path / "keep" / "config.json").is_file()
    assert TrainConfig.from_file(tmp_path / "keep" / "config.json") == cfg
    assert not list(folder.glob("*.tmp"))
