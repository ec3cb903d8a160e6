"""Multi-label zero-shot evaluation (ODIR-5K per eye, RFMiD): per-class image-vs-prompt scores,
per-class and macro AUC and average precision (scikit-learn's definitions), bootstrap intervals
and prevalence baselines.

An image's score for a class is the scaled cosine similarity of its embedding with the class's
prompt-ensemble embedding, less that of a ``negative`` class when the caller names one (then a
class must beat, say, ``normal`` rather than merely be close). Every class is scored on its own:
several can be present at once.
"""
from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..extras import require
from .datasets import EvalSet
from .prompts import PromptSet
from .tables import MISSING, model_grid, row
from .scores import resample_indices

METRICS = ("macro_auc", "map")


def label_matrix(eval_set: EvalSet) -> np.ndarray:
    """``[N, K]`` booleans: image ``i`` has class ``k`` (from the set's bit-mask labels)."""
    masks = np.asarray(eval_set.labels, dtype=object)
    k = len(eval_set.classes)
    return np.array([[(int(m) >> c) & 1 for c in range(k)] for m in masks], dtype=bool).reshape(len(masks), k)


@dataclass(frozen=True)
class MultiLabelResult:
    """Per-class scores and metrics of one model on one multi-label data set."""

    dataset: str
    classes: tuple[str, ...]
    targets: np.ndarray  # [N, K] bool
    scores: np.ndarray  # [N, K] float
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    intervals: dict[str, tuple[float, float]]
    baselines: dict[str, dict[str, float]]
    images: tuple[str, ...] = field(default=(), repr=False)
    extra: dict[str, Any] = field(default_factory=dict)


def _both_sides(t: np.ndarray) -> bool:
    return 0 < int(t.sum()) < t.size


def _weighted_curves(t: np.ndarray, s: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC and average precision ``[R]`` of one class for each row of per-image ``counts`` ``[R, N]``
    (a bootstrap resample as multiplicities; ties count as scikit-learn counts them); NaN where a
    resample lacks positives or negatives."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, pos = s[order], t[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # tie groups, highest first
    w = counts[:, order].astype(float)
    wp = np.add.reduceat(w * pos, starts, axis=1)
    wn = np.add.reduceat(w * ~pos, starts, axis=1)
    tp, fp = np.cumsum(wp, axis=1), np.cumsum(wn, axis=1)
    n_pos, n_neg = tp[:, -1], fp[:, -1]
    ok = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # AUC: positives above negatives, ties half (trapezoids of the ROC curve)
        fp_before = fp - wn
        auc = (wp * (n_neg[:, None] - fp_before - 0.5 * wn)).sum(1) / (n_pos * n_neg)
        # AP: sum over thresholds of (recall step) x precision
        precision = tp / np.maximum(tp + fp, 1e-300)
        ap = (wp / n_pos[:, None] * precision).sum(1)
    return np.where(ok, auc, np.nan), np.where(ok, ap, np.nan)


def multilabel_metrics(targets: np.ndarray, scores: np.ndarray, classes: tuple[str, ...]) -> tuple[
        dict[str, float], dict[str, dict[str, float]]]:
    """Macro AUC and mAP (over classes with positives and negatives) and each class's AUC, AP,
    prevalence and positive count, by scikit-learn."""
    metrics = require("sklearn.metrics", extra="eval", purpose="multi-label AUC and mAP")
    per_class: dict[str, dict[str, float]] = {}
    aucs, aps = [], []
    for k, name in enumerate(classes):
        t = targets[:, k]
        row = {"n_positive": int(t.sum()), "prevalence": float(t.mean()) if t.size else float("nan"),
               "auc": float("nan"), "ap": float("nan")}
        if _both_sides(t):
            row["auc"] = float(metrics.roc_auc_score(t, scores[:, k]))
            row["ap"] = float(metrics.average_precision_score(t, scores[:, k]))
            aucs.append(row["auc"])
            aps.append(row["ap"])
        per_class[name] = row
    nan = float("nan")
    return ({"macro_auc": float(np.mean(aucs)) if aucs else nan, "map": float(np.mean(aps)) if aps else nan,
             "classes_scored": float(len(aucs))}, per_class)


def bootstrap_multilabel(targets: np.ndarray, scores: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                         level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of macro AUC and mAP over images resampled with replacement (the draws
    of :func:`~cn_clip_ext.evaluation.scores.resample_indices`), vectorised over the resamples."""
    n = targets.shape[0]
    if n_resamples < 1 or n == 0:
        return {}
    idx = resample_indices(n, n_resamples, seed)
    counts = np.bincount((np.arange(n_resamples)[:, None] * n + idx).ravel(),
                         minlength=n_resamples * n).reshape(n_resamples, n)
    aucs, aps = [], []
    for k in range(targets.shape[1]):
        if _both_sides(targets[:, k]):
            auc, ap = _weighted_curves(targets[:, k], scores[:, k].astype(float), counts)
            aucs.append(auc)
            aps.append(ap)
    if not aucs:
        return {}
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without one class's positives
        for name, draws in (("macro_auc", np.nanmean(np.stack(aucs, 1), 1)), ("map", np.nanmean(np.stack(aps, 1), 1))):
            out[name] = (float(np.nanpercentile(draws, lo)), float(np.nanpercentile(draws, hi)))
    return out


def prevalence_baseline(targets: np.ndarray) -> dict[str, float]:
    """What a scorer without information gets: AUC 0.5 and, per class, AP equal to the prevalence
    (macro: their mean over the classes that are scored)."""
    prev = [float(targets[:, k].mean()) for k in range(targets.shape[1]) if _both_sides(targets[:, k])]
    return {"macro_auc": 0.5, "map": float(np.mean(prev)) if prev else float("nan")}


def score_multilabel(eval_set: EvalSet, scores: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                     extra: Mapping[str, Any] | None = None) -> MultiLabelResult:
    targets = label_matrix(eval_set)
    metrics, per_class = multilabel_metrics(targets, scores, eval_set.classes)
    return MultiLabelResult(dataset=eval_set.name, classes=eval_set.classes, targets=targets, scores=scores,
                            metrics=metrics, per_class=per_class,
                            intervals=bootstrap_multilabel(targets, scores, n_resamples, seed),
                            baselines={"prevalence": prevalence_baseline(targets)}, images=eval_set.images,
                            extra=dict(extra or {}))


@torch.no_grad()
def multilabel_zero_shot(model: torch.nn.Module, tokenizer: Callable, eval_set: EvalSet, prompts: PromptSet,
                         image_features: torch.Tensor, device: str | torch.device = "cpu", n_resamples: int = 1000,
                         embedder: Callable | None = None, negative: str | None = None) -> MultiLabelResult:
    """Score every image against every class's prompts (see the module notes)."""
    from .zero_shot import ClassEmbedder

    embed = embedder or ClassEmbedder(model, tokenizer, prompts, device)
    keys = list(eval_set.classes) + ([negative] if negative else [])
    emb = embed(keys).float()
    scale = float(getattr(model, "single_eye_scale", model.logit_scale).exp())
    sims = scale * image_features.float().cpu() @ emb.t()
    scores = sims[:, :len(eval_set.classes)]
    if negative:
        scores = scores - sims[:, -1:]
    extra = {"negative": negative} if negative else {}
    return score_multilabel(eval_set, scores.numpy().astype(np.float64), n_resamples, extra=extra)


def result_to_dict(r: MultiLabelResult) -> dict:
    return {"n_images": int(r.targets.shape[0]), "classes": list(r.classes), "metrics": r.metrics,
            "ci95": {k: list(v) for k, v in r.intervals.items()}, "baselines": r.baselines,
            "per_class": r.per_class, **r.extra}


def multilabel_table(results: Mapping[str, Mapping[str, MultiLabelResult]]) -> str:
    """Rows = models (then the prevalence baseline), columns = multi-label data sets: macro AUC
    with its bootstrap interval and mAP."""
    def cell(r: MultiLabelResult) -> str:
        lo, hi = r.intervals.get("macro_auc", (float("nan"),) * 2)
        return f"{r.metrics['macro_auc']:.3f} [{lo:.3f}, {hi:.3f}] (mAP {r.metrics['map']:.3f})"

    datasets, lines = model_grid(results, cell)
    first = next(iter(results.values()), {})
    cells = []
    for d in datasets:
        r = first.get(d)
        b = r.baselines["prevalence"] if r else {}
        cells.append(f"{b['macro_auc']:.3f} (mAP {b['map']:.3f})" if b else MISSING)
    lines.append(row("prevalence baseline", cells))
    return ("multi-label: macro AUC with bootstrap 95% interval, mAP in brackets\n\n" + "\n".join(lines) + "\n")


def write_multilabel_scores(result: MultiLabelResult, path: Path) -> None:
    """One row per image: its classes and its score for every class."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "labels", *[f"s_{c}" for c in result.classes]])
        for ref, t, s in zip(result.images, result.targets, result.scores):
            w.writerow([ref, ";".join(c for c, on in zip(result.classes, t) if on), *[f"{v:.5f}" for v in s]])
    os.replace(tmp, path)
