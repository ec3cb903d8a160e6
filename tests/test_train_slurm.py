"""srun without torchrun: SLURM's task variables make N processes one N-process run."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from cn_clip_ext.errors import UserError
from cn_clip_ext.training import load_checkpoint
from cn_clip_ext.training.checkpoint import LATEST
from cn_clip_ext.training.launch import DEFAULT_PORT_BASE, read_launch
from test_train_support import PYTHON, ROOT, TEST_MODEL, cpu_env, model_config_dir, train_losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_env(rank: int, ntasks: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in cpu_env().items() if not k.startswith("SLURM_")}
    env.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(ntasks), SLURM_LOCALID=str(rank), SLURM_JOB_ID="4242",
               **extra)
    return env


def test_two_srun_tasks_form_one_two_process_run(tmp_path):
    out = tmp_path / "slurm"
    port = str(_free_port())
    cmd = [str(PYTHON), "-m", "vclip_train.train", "--preset", "tiny", "--data", "toy:64", "--model", TEST_MODEL,
           "--model-config-dir", str(model_config_dir(tmp_path)), "--output-dir", str(out), "--batch-size", "4",
           "--num-workers", "0", "--max-steps", "4", "--valid-every", "0", "--save-every", "2", "--log-every", "1",
           "--no-progress", "--no-plot", "--no-tensorboard", "--seed", "1"]
    procs = [subprocess.Popen(cmd, env=_slurm_env(r, 2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    assert "2 process(es)" in results[0][1]  # rank 0 joined a world of two
    assert "launched by slurm" in results[0][1]
    state = load_checkpoint(out / "checkpoints" / LATEST)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 4
    assert sorted(train_losses(out / "metrics.csv")) == [1, 2, 3, 4]  # one run's records, not two


def test_rendezvous_defaults_from_the_node_list(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # the cluster's tool, reduced to its 'show hostnames' answer
    scontrol.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] || exit 1\necho gpu017\necho gpu018\n")
    scontrol.chmod(0o755)
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3", "SLURM_JOB_ID": "123456",
           "SLURM_JOB_NODELIST": "gpu[017-018]", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    old_path = os.environ["PATH"]
    os.environ["PATH"] = env["PATH"]
    try:
        launch = read_launch(env)
    finally:
        os.environ["PATH"] = old_path
    assert (launch.rank, launch.world_size, launch.local_rank, launch.launcher) == (3, 16, 3, "slurm")
    assert launch.master_addr == "gpu017" and launch.master_port == DEFAULT_PORT_BASE + 123456 % 20000
    # torchrun's variables win (srun starting torchrun, one task per node)
    env.update(RANK="5", WORLD_SIZE="8", LOCAL_RANK="5", MASTER_ADDR="10.0.0.1", MASTER_PORT="29500")
    assert read_launch(env).launcher == "torchrun" and read_launch(env).world_size == 8


def test_several_tasks_without_a_rendezvous_are_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="SLURM_NTASKS=2 but no rendezvous"):
        read_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "PATH": str(tmp_path)})
    env = _slurm_env(1, 2, PATH=str(tmp_path) + os.pathsep + "/usr/bin:/bin")
    proc = subprocess.run([sys.executable, "-m", "vclip_train.train", "--preset", "tiny", "--data", "toy:16",
                           "--output-dir", str(tmp_path / "run"), "--device", "cpu"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no rendezvous" in lines[0] and "Traceback" not in proc.stderr
