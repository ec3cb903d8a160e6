"""Training VisionCLIP with cn_clip's model and contrastive recipe (see :func:`train`).

Public API::

    from cn_clip_ext.training import TrainConfig, train
    result = train(TrainConfig.tiny(data="toy:256", output_dir="runs/demo"))
"""
from __future__ import annotations

from .checkpoint import atomic_save, load_checkpoint, save_checkpoint
from .config import TrainConfig
from ..synth.toys import TensorPairs, make_toy_pairs
from .data import ResumableSampler, SeededDataset
from .distributed import DistEnv, init_distributed
from .loss import ContrastiveLoss, TripartiteLoss, clamp_logit_scale, clip_loss, gather_features
from .loop import Trainer, TrainingDiverged, TrainResult, train
from .objectives import OBJECTIVES, Objective, get_objective, objective_for
from .optim import build_optimizer, build_scheduler, param_groups
from .warmstart import hf_bert_to_cn_clip, warm_start

__all__ = [
    "ContrastiveLoss", "DistEnv", "OBJECTIVES", "Objective", "ResumableSampler", "SeededDataset", "TensorPairs",
    "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "TripartiteLoss", "atomic_save", "build_optimizer",
    "build_scheduler", "clamp_logit_scale", "clip_loss", "gather_features", "get_objective", "hf_bert_to_cn_clip",
    "init_distributed", "load_checkpoint", "make_toy_pairs", "objective_for", "param_groups", "save_checkpoint",
    "train", "warm_start",
]
