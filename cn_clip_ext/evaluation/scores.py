"""Classification scores for evaluation reports, with bootstrap intervals and baselines.

Definitions follow scikit-learn's (tests check equality): balanced accuracy is the mean recall
over the classes present in the ground truth (FLAIR's ACA); macro-F1 and quadratic-weighted
kappa use the labels present in either truth or prediction; AUC is one-vs-rest per class.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import torch


def recall_at_k(query: torch.Tensor, gallery: torch.Tensor, ks: Sequence[int] = (1, 5),
                query_groups: torch.Tensor | None = None, gallery_groups: torch.Tensor | None = None,
                chunk: int = 1024) -> dict[int, float]:
    """Fraction of queries whose top-``k`` gallery items contain a positive.

    Without groups, query ``i``'s only positive is gallery item ``i``. With groups (one integer
    id per item, e.g. identical captions share an id), any gallery item of the query's group
    counts. Features should be L2-normalised; similarity is the dot product. Memory is
    ``chunk x len(gallery)``.
    """
    n = query.shape[0]
    if query_groups is None:
        query_groups = torch.arange(n)
        gallery_groups = torch.arange(gallery.shape[0])
    elif gallery_groups is None:
        gallery_groups = query_groups
    kmax = min(max(ks), gallery.shape[0])
    hits = {k: 0 for k in ks}
    gallery_groups = gallery_groups.to(gallery.device)
    for start in range(0, n, chunk):
        sims = query[start:start + chunk] @ gallery.t()
        top = sims.topk(kmax, dim=1).indices
        match = gallery_groups[top] == query_groups[start:start + chunk].to(gallery.device).unsqueeze(1)
        for k in ks:
            hits[k] += int(match[:, :k].any(dim=1).sum())
    return {k: hits[k] / max(n, 1) for k in ks}


def balanced_accuracy(y_true: Sequence[int] | torch.Tensor, y_pred: Sequence[int] | torch.Tensor) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (NaN when it is empty)."""
    t = torch.as_tensor(y_true).long().flatten()
    p = torch.as_tensor(y_pred).long().flatten()
    if t.numel() == 0:
        return float("nan")
    recalls = [float((p[t == c] == c).float().mean()) for c in t.unique().tolist()]
    return sum(recalls) / len(recalls)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``[true, predicted]`` counts."""
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    labels = np.union1d(y_true, y_pred)
    f1s = []
    for c in labels:
        tp = np.sum((y_true == c) & (y_pred == c))
        denom = np.sum(y_true == c) + np.sum(y_pred == c)
        f1s.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1s))


def quadratic_kappa(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Cohen's kappa with quadratic weights over the labels seen in truth or prediction."""
    labels = np.union1d(y_true, y_pred)
    k = len(labels)
    if k < 2:
        return 0.0
    idx = {c: i for i, c in enumerate(labels)}
    observed = confusion(np.vectorize(idx.get)(y_true), np.vectorize(idx.get)(y_pred), k).astype(float)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    weights = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2
    return float(1 - (weights * observed).sum() / (weights * expected).sum())


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (ties count half); NaN with one class."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_class_auc(y_true: np.ndarray, scores: np.ndarray) -> list[float]:
    """One-vs-rest AUC of each class's score column."""
    return [binary_auc(y_true == c, scores[:, c]) for c in range(scores.shape[1])]


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def score(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray | None = None,
          graded: bool = False) -> dict[str, float]:
    """The headline numbers for one set of predictions."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    out = {
        "top1": float(np.mean(y_true == y_pred)) if y_true.size else float("nan"),
        "balanced_accuracy": balanced_accuracy(y_true.tolist(), y_pred.tolist()),
        "macro_f1": macro_f1(y_true, y_pred),
    }
    if graded:
        out["quadratic_kappa"] = quadratic_kappa(y_true, y_pred)
    if scores is not None:
        out["macro_auc"] = _nanmean(per_class_auc(y_true, np.asarray(scores, dtype=float)))
    return out


def resample_indices(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_resamples, n]`` indices drawn with replacement (the draws :func:`bootstrap` uses)."""
    return np.random.default_rng(seed).integers(0, n, (n_resamples, n))


def _resampled_aucs(y_true: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[R, K]`` one-vs-rest AUCs of every resample, each given as per-image ``counts`` ``[R, N]``:
    the rank statistic with multiplicities (ties count half), NaN where a side is empty."""
    out = np.full((counts.shape[0], scores.shape[1]), np.nan)
    for c in range(scores.shape[1]):
        order = np.argsort(scores[:, c], kind="mergesort")
        sorted_scores = scores[order, c]
        starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
        w = counts[:, order].astype(float)
        pos = (y_true[order] == c)
        wp = np.add.reduceat(w * pos, starts, axis=1)
        wn = np.add.reduceat(w * ~pos, starts, axis=1)
        below = np.cumsum(wn, axis=1) - wn
        n_pos, n_neg = wp.sum(1), wn.sum(1)
        u = (wp * (below + 0.5 * wn)).sum(1)
        ok = (n_pos > 0) & (n_neg > 0)
        out[ok, c] = u[ok] / (n_pos[ok] * n_neg[ok])
    return out


def resampled_scores(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray, scores: np.ndarray | None = None,
                     graded: bool = False) -> dict[str, np.ndarray]:
    """Every :func:`score` metric for each row of resample indices ``idx`` ``[R, N]``, vectorised
    through per-resample confusion matrices (equal to calling :func:`score` per row)."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    r, n = idx.shape
    k = int(max(y_true.max(initial=0), y_pred.max(initial=0)) + 1)
    if scores is not None:
        k = max(k, scores.shape[1])
    flat = (np.arange(r)[:, None] * k * k + y_true[idx] * k + y_pred[idx]).ravel()
    conf = np.bincount(flat, minlength=r * k * k).reshape(r, k, k).astype(float)
    diag = np.diagonal(conf, axis1=1, axis2=2)
    rows, cols = conf.sum(2), conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN rows is NaN, as score() gives
        recall = np.where(rows > 0, diag / np.where(rows > 0, rows, 1), np.nan)
        union = (rows + cols) > 0
        f1 = np.where(union, 2 * diag / np.where(union, rows + cols, 1), np.nan)
        out = {"top1": diag.sum(1) / n, "balanced_accuracy": np.nanmean(recall, axis=1),
               "macro_f1": np.nanmean(f1, axis=1)}
        if graded:
            rank = np.cumsum(union, axis=1) - 1  # labels seen in truth or prediction, re-indexed
            weights = (rank[:, :, None] - rank[:, None, :]) ** 2 * (union[:, :, None] & union[:, None, :])
            expected = rows[:, :, None] * cols[:, None, :] / n
            kappa = 1 - (weights * conf).sum((1, 2)) / (weights * expected).sum((1, 2))
            out["quadratic_kappa"] = np.where(union.sum(1) < 2, 0.0, kappa)
        if scores is not None:
            counts = np.bincount((np.arange(r)[:, None] * n + idx).ravel(), minlength=r * n).reshape(r, n)
            aucs = _resampled_aucs(y_true, np.asarray(scores, dtype=float), counts)
            out["macro_auc"] = np.nanmean(aucs, axis=1)
    return out


def bootstrap(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray | None = None, graded: bool = False,
              n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every :func:`score` metric over resampled images."""
    y_true = np.asarray(y_true, dtype=int)
    if n_resamples < 1 or y_true.size == 0:
        return {}
    draws = resampled_scores(y_true, y_pred, resample_indices(y_true.size, n_resamples, seed), scores, graded)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN metric (e.g. AUC with one class)
        return {name: (float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi))) for name, v in draws.items()}


def baselines(y_true: np.ndarray, n_classes: int, graded: bool = False) -> Mapping[str, dict[str, float]]:
    """What a classifier with no information scores: always the majority class, or uniform guessing.

    The uniform baseline is its expectation: top-1 and balanced accuracy 1/K, kappa 0, AUC 0.5.
    """
    y_true = np.asarray(y_true, dtype=int)
    majority = np.full_like(y_true, np.bincount(y_true, minlength=n_classes).argmax())
    uniform = {"top1": 1 / n_classes, "balanced_accuracy": 1 / n_classes, "macro_auc": 0.5}
    if graded:
        uniform["quadratic_kappa"] = 0.0
    return {"majority": score(y_true, majority, graded=graded), "uniform": uniform}
