"""What a run tells its user: a log line every --log-every steps, train.log, tqdm only on a terminal."""
from __future__ import annotations

import os
import re
import sys

import torch

from cn_clip_ext.synth.toys import make_toy_pairs
from cn_clip_ext.training import TrainConfig, train
from cn_clip_ext.training.progress import StepMeter, progress_bar, step_line
from cn_clip_ext.training.recorder import read_metrics, series
from test_train_support import TEST_MODEL, model_config_dir

LINE = re.compile(r"step (\d+)/6 loss (\d+\.\d{4}) lr (\S+) samples/s (\d+\.\d) data wait (\d+\.\d)%$")


def test_log_line_every_log_every_steps_and_train_log(tmp_path):
    cfg = TrainConfig.tiny(model=TEST_MODEL, model_config_dir=str(model_config_dir(tmp_path)),
                           output_dir=str(tmp_path / "run"), batch_size=4, max_steps=6, num_workers=1,
                           valid_every=0, save_every=6, log_every=2, progress=True, plot=False,
                           tensorboard=False, seed=2)
    train(cfg, make_toy_pairs(32, 64, seed=1), None)
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    found = [LINE.search(line) for line in log.splitlines()]
    steps = [int(m.group(1)) for m in found if m]
    assert steps == [2, 4, 6], log
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    losses = dict(series(rows, "train", "loss"))
    for m in (m for m in found if m):
        step = int(m.group(1))
        assert abs(float(m.group(2)) - losses[step]) < 1e-4  # the line shows the recorded loss
        assert float(m.group(4)) > 0 and 0.0 <= float(m.group(5)) <= 100.0
    assert [s for s, _ in series(rows, "train", "data_wait_pct")] == [2, 4, 6]
    assert "training " in log and "global batch 4" in log  # the run's other INFO lines are kept too
    assert "\r" not in log  # stderr is not a terminal here: no progress bar


def test_progress_bar_only_on_a_terminal(monkeypatch):
    assert progress_bar(True, 10, 0) is None  # pytest's captured stderr is no terminal
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        bar = progress_bar(True, 10, 3)
        assert bar is not None and bar.n == 3
        bar.close()
        assert progress_bar(False, 10, 0) is None  # --no-progress
    os.close(master)


def test_step_line_fields():
    meter = StepMeter(samples_per_step=64, device=torch.device("cpu"))
    with meter.waiting():
        sum(range(10000))
    meter.step_done()
    stats = meter.window()
    assert stats["samples_per_s"] > 0 and 0 < stats["data_wait_pct"] <= 100 and "gpu_mem_gib" not in stats
    line = step_line(7, 100, 3.46574, 1.5e-4, {**stats, "gpu_mem_gib": 17.5})
    assert line.startswith("step 7/100 loss 3.4657 lr 1.50e-04 samples/s ")
    assert line.endswith(" gpu mem 17.50 GiB")
