"""A 2-process gloo run under torchrun trains (its loss falls) and writes its records."""
from __future__ import annotations

import socket
import subprocess

from cn_clip_ext.training import TrainConfig, load_checkpoint
from cn_clip_ext.training.checkpoint import LATEST
from cn_clip_ext.training.recorder import read_metrics, series
from test_train_support import ROOT, TEST_MODEL, TORCHRUN, cpu_env, model_config_dir, train_losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_under_torchrun(tmp_path):
    out = tmp_path / "ddp"
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
           str(_free_port()), "-m", "vclip_train.train", "--preset", "tiny", "--data", "toy:128",
           "--model", TEST_MODEL, "--model-config-dir", str(model_config_dir(tmp_path)),
           "--output-dir", str(out), "--batch-size", "4", "--num-workers", "1", "--max-steps", "30",
           "--lr", "2e-3", "--warmup-steps", "3", "--valid-every", "15", "--valid-batch-size", "16",
           "--save-every", "15", "--log-every", "1", "--no-progress", "--seed", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cpu_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr  # rank 0 reports the world it joined

    losses = train_losses(out / "metrics.csv")
    assert sorted(losses) == list(range(1, 31))
    first, last = sum(losses[s] for s in range(1, 6)) / 5, sum(losses[s] for s in range(26, 31)) / 5
    assert last < first - 0.2, losses

    rows = read_metrics(out / "metrics.csv")
    valid_steps = [s for s, _ in series(rows, "valid", "i2t_r1")]
    assert valid_steps == [15, 30]
    assert series(rows, "valid", "zs_dr_grade_bacc")
    state = load_checkpoint(out / "checkpoints" / LATEST)
    assert state["step"] == 30 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert TrainConfig.from_file(out / "config.json").batch_size == 4
    assert (out / "curves.png").stat().st_size > 0
