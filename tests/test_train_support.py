"""Shared helpers for the training tests (no tests here): a 64 px test tower and toy data."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PYTHON = Path(sys.executable)
TORCHRUN = PYTHON.parent / "torchrun"
TEST_MODEL = "RN-test64@BERT-tiny-chinese"


def model_config_dir(tmp: Path) -> Path:
    """A folder registering ``RN-test64``: the tiny ResNet at 64 px (faster than 128 px)."""
    folder = tmp / "model_configs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "RN-test64.json").write_text(json.dumps({
        "embed_dim": 64, "image_resolution": 64, "vision_layers": "[1,1,1,1]", "vision_width": 8,
        "vision_patch_size": None}))
    return folder


def cpu_env() -> dict[str, str]:
    """Environment for subprocesses: one thread per process, no inherited torchrun variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


class NoisyPairs(torch.utils.data.Dataset):
    """Wraps a pair dataset and adds random noise per item (a stand-in for random augmentation)."""

    def __init__(self, base):
        self.base = base
        self.labels = getattr(base, "labels", {})

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        image, tokens = self.base[i]
        return image + 0.1 * torch.randn_like(image), tokens


def train_losses(metrics_csv: Path) -> dict[int, float]:
    """``{step: training loss}`` from a run's metrics.csv."""
    from cn_clip_ext.training.recorder import read_metrics, series

    return dict(series(read_metrics(metrics_csv), "train", "loss"))
