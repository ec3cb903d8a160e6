"""The sbatch script: log folder, DATA/OUTPUT_DIR, srun without torchrun, requeue after a signal stop.

SLURM is not installed here: ``sbatch``, ``srun`` and ``scontrol`` are small scripts on PATH that
record how they were called (and ``srun`` exits as vclip-train does after a signal: 75)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from test_train_support import ROOT

SCRIPT = ROOT / "run_scripts" / "train_visionclip_multinode.sbatch"


def _tools(tmp_path: Path, srun_status: int) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, status in (("sbatch", 0), ("srun", srun_status), ("scontrol", 0)):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/calls.txt"\nexit {status}\n')
        tool.chmod(0o755)
    return bin_dir


def _run(tmp_path: Path, srun_status: int, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = _tools(tmp_path, srun_status)
    full = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", DATA=str(tmp_path / "lmdb"),
                OUTPUT_DIR=str(tmp_path / "run"), **env)
    proc = subprocess.run(["bash", str(SCRIPT), "--max-steps", "100"], capture_output=True, text=True, env=full,
                          cwd=tmp_path, timeout=60)
    calls = (tmp_path / "calls.txt").read_text().splitlines() if (tmp_path / "calls.txt").exists() else []
    return proc, calls


def test_directives_requeue_and_signal():
    text = SCRIPT.read_text(encoding="utf-8")
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=USR1@" in text
    assert "torchrun" not in text.split("set -euo pipefail", 1)[1]  # srun starts one vclip-train per GPU


def test_outside_a_job_it_makes_the_log_folder_and_submits_itself(tmp_path):
    proc, calls = _run(tmp_path, 0)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "logs").is_dir()
    (call,) = calls
    assert call.startswith("sbatch ") and f"--output={tmp_path}/run/logs/%x-%j.out" in call
    assert f"OUTPUT_DIR={tmp_path}/run" in call and str(SCRIPT) in call and call.endswith("--max-steps 100")


def test_inside_a_job_srun_runs_vclip_train_and_a_signal_stop_requeues(tmp_path):
    job = dict(SLURM_JOB_ID="777", SLURM_JOB_NODELIST="gpu[01-02]", SLURM_SUBMIT_DIR=str(ROOT))
    proc, calls = _run(tmp_path, 75, **job)
    assert proc.returncode == 0, proc.stderr
    srun, requeue = calls
    assert srun.startswith("srun ") and "vclip-train" in srun and "torchrun" not in srun
    for part in (f"--data {tmp_path}/lmdb", f"--output-dir {tmp_path}/run", "--resume auto", "--max-steps 100",
                 f"--output={tmp_path}/run/logs/%x-%j-task%t.out"):
        assert part in srun
    assert requeue == "scontrol requeue 777"


def test_inside_a_job_a_failure_is_not_requeued(tmp_path):
    job = dict(SLURM_JOB_ID="778", SLURM_JOB_NODELIST="gpu01", SLURM_SUBMIT_DIR=str(ROOT))
    proc, calls = _run(tmp_path, 2, **job)
    assert proc.returncode == 2
    assert len(calls) == 1 and calls[0].startswith("srun ")
