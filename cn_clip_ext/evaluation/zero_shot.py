"""Zero-shot evaluation of one model on one dataset with one prompt set."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

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
    """Decoded, transformed images of an :class:`EvalSet` (decoded in DataLoader workers).

    When the transform has a square output ``size`` (the fundus transforms), JPEGs are decoded
    at a reduced scale of at least twice that size (see :func:`.datasets.open_image_file`).
    """

    def __init__(self, eval_set: EvalSet, transform: Callable):
        self.eval_set = eval_set
        size = getattr(transform, "size", None)
        self.min_size = 2 * size if isinstance(size, int) else None
        # the fundus eval transform splits into uint8 pixels (workers) and batch normalisation (here)
        pixels = getattr(transform, "pixels", None)
        self.per_image: Callable = pixels or transform
        self.per_batch: Callable | None = transform.batch_transform if pixels else None

    def __len__(self) -> int:
        return len(self.eval_set)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.per_image(self.eval_set.load(index, self.min_size))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _threads_beside_workers(device: str | torch.device, workers: int) -> Iterator[None]:
    """On the CPU, leave one core to each decoding worker: the model's intra-op threads competing
    with the workers for the same cores halves throughput (measured in bench/bench_eval.py)."""
    before = torch.get_num_threads()
    wanted = max(1, min(before, _cpu_count() - workers))
    if torch.device(device).type != "cpu" or workers == 0 or wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _channels_last(model: torch.nn.Module) -> Iterator[None]:
    """Convolution weights in channels-last layout while encoding (about 1.8x faster ResNet
    inference on the CPU, measured with the tiny model), the model's own layout restored after."""
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


@torch.inference_mode()
def encode_images(model: torch.nn.Module, eval_set: EvalSet, transform: Callable, batch_size: int = 64,
                  workers: int = 2, device: str | torch.device = "cpu", progress: bool = True) -> torch.Tensor:
    """``[N, D]`` L2-normalised image embeddings, in the data set's order."""
    images = _Images(eval_set, transform)
    loader = DataLoader(images, batch_size=batch_size, num_workers=workers,
                        persistent_workers=False, pin_memory=torch.device(device).type == "cuda")
    feats = []
    with _threads_beside_workers(device, workers), _channels_last(model):
        for batch in tqdm(loader, desc=f"encode {eval_set.name}", disable=not progress, leave=False):
            batch = batch.to(device, non_blocking=True)
            if images.per_batch is not None:
                batch = images.per_batch(batch)
            batch = batch.contiguous(memory_format=torch.channels_last)
            feats.append(F.normalize(model.encode_image(batch).float(), dim=-1).cpu())
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
    images: tuple[str, ...] = field(default=(), repr=False)  # the scored images, in row order


def classify(image_features: torch.Tensor, class_emb: torch.Tensor, logit_scale: float) -> np.ndarray:
    """Softmax over classes of the scaled cosine similarities, ``[N, K]``."""
    logits = logit_scale * image_features.float() @ class_emb.float().t()
    return logits.softmax(dim=-1).numpy()


def score_predictions(eval_set: EvalSet, probabilities: np.ndarray, n_resamples: int = 1000,
                      seed: int = 0, extra: dict[str, Any] | None = None) -> ZeroShotResult:
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
        extra=dict(extra or {}), images=eval_set.images,
    )


@torch.no_grad()
def zero_shot(model: torch.nn.Module, tokenizer: Callable, eval_set: EvalSet, prompts: PromptSet,
              transform: Callable, batch_size: int = 64, workers: int = 2, device: str | torch.device = "cpu",
              n_resamples: int = 1000, progress: bool = True) -> ZeroShotResult:
    """Classify every image by its nearest prompt-ensemble class embedding."""
    model.eval()
    feats = encode_images(model, eval_set, transform, batch_size, workers, device, progress)
    return zero_shot_features(model, tokenizer, eval_set, prompts, feats, device, n_resamples)


@torch.no_grad()
def zero_shot_features(model: torch.nn.Module, tokenizer: Callable, eval_set: EvalSet, prompts: PromptSet,
                       image_features: torch.Tensor, device: str | torch.device = "cpu",
                       n_resamples: int = 1000) -> ZeroShotResult:
    """:func:`zero_shot` from image features already computed by :func:`encode_images`."""
    model.eval()
    class_emb = class_embeddings(model.encode_text, tokenizer, prompts.for_classes(eval_set.classes), device)
    scale = getattr(model, "single_eye_scale", model.logit_scale)  # a tripartite model's chosen head
    probs = classify(image_features, class_emb.cpu(), float(scale.exp()))
    return score_predictions(eval_set, probs, n_resamples)
