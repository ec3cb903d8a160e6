"""Zero-shot evaluation of one model on one dataset with one prompt set."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import UserError
from ..model.inference import Decoded, SplitTransform, decoded, encode_batches
from ..model.protocols import SingleEyeScaled
from .classifier import class_embeddings, encodes_per_class
from . import scores
from .datasets import EvalSet
from .prompts import PromptSet


class _Images(Dataset):
    """Decoded images of an :class:`EvalSet` through the per-image half of a transform (in
    DataLoader workers); see :class:`~cn_clip_ext.model.inference.SplitTransform`."""

    def __init__(self, eval_set: EvalSet, transform: Callable):
        self.eval_set = eval_set
        self.split = SplitTransform.of(transform)

    def __len__(self) -> int:
        return len(self.eval_set)

    def __getitem__(self, index: int) -> Decoded:
        load = self.eval_set.pixels if self.split.wants_array else self.eval_set.load
        return decoded(index, lambda: self.split.per_image(load(index, self.split.min_size)))


def encode_images(model: torch.nn.Module, eval_set: EvalSet, transform: Callable, batch_size: int = 64,
                  workers: int = 2, device: str | torch.device = "cpu", progress: bool = True) -> torch.Tensor:
    """``[N, D]`` L2-normalised image embeddings, in the data set's order (see
    :func:`~cn_clip_ext.model.inference.encode_batches`); an unreadable image is a :class:`UserError`."""
    images = _Images(eval_set, transform)
    feats = []
    encoded = encode_batches(model, images, images.split, batch_size, workers, device)
    with contextlib.closing(encoded), \
            tqdm(total=len(images), desc=f"encode {eval_set.name}", disable=not progress, leave=False) as bar:
        for indices, features, bad in encoded:
            if bad:
                index, reason = bad[0]
                ref = eval_set.images[index]
                raise UserError(reason if reason.startswith(f"{ref}: ") else f"{ref}: cannot read image ({reason})")
            feats.append(F.normalize(features, dim=-1))
            bar.update(len(indices))
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


class ClassEmbedder:
    """Class embeddings of one model under one prompt set. Each class's prompts are encoded once,
    however many data sets share the class (``dr_0`` ... in MESSIDOR-2 and SynFundus, ``glaucoma``
    in FIVES and REFUGE); the model must not change between calls."""

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, prompts: PromptSet,
                 device: str | torch.device = "cpu"):
        self.model, self.tokenizer, self.prompts, self.device = model, tokenizer, prompts, device
        self._done: dict[str, torch.Tensor] = {}

    def __call__(self, class_keys: Sequence[str]) -> torch.Tensor:
        """``[len(class_keys), D]`` unit vectors on the CPU."""
        todo = [k for k in dict.fromkeys(class_keys) if k not in self._done]
        if todo:
            self.model.eval()
            emb = class_embeddings(self.model.encode_text, self.tokenizer, self.prompts.for_classes(todo), self.device,
                                   per_class=encodes_per_class(self.model))
            self._done.update(zip(todo, emb.cpu()))
        return torch.stack([self._done[k] for k in class_keys])


@torch.no_grad()
def zero_shot_features(model: torch.nn.Module, tokenizer: Callable, eval_set: EvalSet, prompts: PromptSet,
                       image_features: torch.Tensor, device: str | torch.device = "cpu",
                       n_resamples: int = 1000, embedder: ClassEmbedder | None = None) -> ZeroShotResult:
    """:func:`zero_shot` from image features already computed by :func:`encode_images`; pass one
    ``embedder`` per model and prompt set to encode shared classes once across data sets."""
    model.eval()
    class_emb = (embedder or ClassEmbedder(model, tokenizer, prompts, device))(eval_set.classes)
    scale = model.single_eye_scale if isinstance(model, SingleEyeScaled) else model.logit_scale
    probs = classify(image_features, class_emb, float(scale.exp()))
    return score_predictions(eval_set, probs, n_resamples)
