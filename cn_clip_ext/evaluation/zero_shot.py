"""Zero-shot evaluation of one model on one dataset with one prompt set."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..zeroshot import class_embeddings
from . import scores
from .datasets import EvalSet
from .prompts import PromptSet


class _Images(Dataset):
    """Decoded, transformed images of an :class:`EvalSet` (decoded in DataLoader workers)."""

    def __init__(self, eval_set: EvalSet, transform: Callable):
        self.eval_set, self.transform = eval_set, transform

    def __len__(self) -> int:
        return len(self.eval_set)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.eval_set.load(index))


@torch.no_grad()
def encode_images(model: torch.nn.Module, eval_set: EvalSet, transform: Callable, batch_size: int = 64,
                  workers: int = 2, device: str | torch.device = "cpu", progress: bool = True) -> torch.Tensor:
    """``[N, D]`` L2-normalised image embeddings, in the data set's order."""
    loader = DataLoader(_Images(eval_set, transform), batch_size=batch_size, num_workers=workers,
                        persistent_workers=False)
    feats = []
    for batch in tqdm(loader, desc=f"encode {eval_set.name}", disable=not progress, leave=False):
        feats.append(F.normalize(model.encode_image(batch.to(device)).float(), dim=-1).cpu())
    return torch.cat(feats)


@dataclass(frozen=True)
class ZeroShotResult:
    """Predictions and scores of one model on one data set."""

    dataset: str
    classes: tuple[str, ...]
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    baselines: dict[str, dict[str, float]]
    confusion: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


def classify(image_features: torch.Tensor, class_emb: torch.Tensor, logit_scale: float) -> np.ndarray:
    """Softmax over classes of the scaled cosine similarities, ``[N, K]``."""
    logits = logit_scale * image_features.float() @ class_emb.float().t()
    return logits.softmax(dim=-1).numpy()


def score_predictions(eval_set: EvalSet, probabilities: np.ndarray, n_resamples: int = 1000,
                      seed: int = 0) -> ZeroShotResult:
    """Metrics, bootstrap intervals, baselines and confusion matrix for class probabilities."""
    labels = np.asarray(eval_set.labels)
    preds = probabilities.argmax(1)
    k = len(eval_set.classes)
    return ZeroShotResult(
        dataset=eval_set.name, classes=eval_set.classes, labels=labels, predictions=preds,
        probabilities=probabilities,
        metrics=scores.score(labels, preds, probabilities, eval_set.graded),
        intervals=scores.bootstrap(labels, preds, probabilities, eval_set.graded, n_resamples, seed),
        baselines=dict(scores.baselines(labels, k, eval_set.graded)),
        confusion=scores.confusion(labels, preds, k),
    )


@torch.no_grad()
def zero_shot(model: torch.nn.Module, tokenizer: Callable, eval_set: EvalSet, prompts: PromptSet,
              transform: Callable, batch_size: int = 64, workers: int = 2, device: str | torch.device = "cpu",
              n_resamples: int = 1000, progress: bool = True) -> ZeroShotResult:
    """Classify every image by its nearest prompt-ensemble class embedding."""
    model.eval()
    class_emb = class_embeddings(model.encode_text, tokenizer, prompts.for_classes(eval_set.classes), device)
    feats = encode_images(model, eval_set, transform, batch_size, workers, device, progress)
    probs = classify(feats, class_emb.cpu(), float(model.logit_scale.exp()))
    return score_predictions(eval_set, probs, n_resamples)
