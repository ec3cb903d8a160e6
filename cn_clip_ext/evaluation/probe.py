"""Linear probe and k-shot evaluation: logistic regression on frozen, L2-normalised image features.

Train/test split: a data set whose reader reports published splits with both ``train`` and
``test`` images (FIVES' folders; REFUGE when its test label table is present) uses them;
any other is split per class with a seed (``train_fraction`` of each class for training, at
least one image on each side of a class with two or more).

Regularisation (scikit-learn's ``C``, inverse L2 strength), with ``class_weight="balanced"``
so the probe targets balanced accuracy like the reports:

* linear probe: ``C`` from :data:`C_GRID` by 3-fold stratified cross-validation (balanced
  accuracy) on the training part; :data:`DEFAULT_C` when a class has fewer than 3 training images.
* k-shot: :data:`DEFAULT_C`, fixed: with k images per class there is no data to tune on.
  On unit-norm features a small ``C`` makes the weights close to the class means, so the
  probe behaves like a nearest-class-mean classifier, a sound few-shot baseline.

k-shot draws k training images per class (all of a class's images when it has fewer), once per
seed, and reports the mean and standard deviation of each metric over the seeds on the same test
part that the linear probe uses.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from ..extras import require
from . import scores
from .datasets import EvalSet
from .zero_shot import ZeroShotResult, score_predictions

logger = logging.getLogger(__name__)

PURPOSE = "the linear probe and k-shot evaluation"

C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
DEFAULT_C = 1.0
CV_FOLDS = 3
MAX_ITER = 2000
PROBE_MODES = ("linear", "kshot")


@dataclass(frozen=True)
class ProbeSplit:
    """Indices into an :class:`EvalSet` for fitting and for scoring."""

    train: tuple[int, ...]
    test: tuple[int, ...]
    source: str  # "published" or "stratified <fraction> seed <seed>"


def probe_split(eval_set: EvalSet, train_fraction: float = 0.5, seed: int = 0) -> ProbeSplit:
    """The published train/test split where there is one, else a stratified seeded split."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    splits = eval_set.splits
    if splits is not None and "train" in splits and "test" in splits:
        train = tuple(i for i, s in enumerate(splits) if s == "train")
        test = tuple(i for i, s in enumerate(splits) if s == "test")
        unused = len(eval_set) - len(train) - len(test)
        if unused:
            logger.info("%s: %d image(s) outside the published train/test splits are not used by the probe",
                        eval_set.name, unused)
        return ProbeSplit(train, test, "published")
    rng = np.random.default_rng(seed)
    labels = np.asarray(eval_set.labels)
    train: list[int] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(members) * train_fraction))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        else:
            logger.warning("%s: class %s has one image; it is only tested", eval_set.name, eval_set.classes[c])
            k = 0
        train += members[:k].tolist()
    chosen = set(train)
    return ProbeSplit(tuple(sorted(train)), tuple(i for i in range(len(eval_set)) if i not in chosen),
                      f"stratified {train_fraction:g} seed {seed}")


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, c: float,
                 seed: int = 0) -> np.ndarray:
    """``[N_test, n_classes]`` probabilities of a balanced logistic regression (zero for unseen classes)."""
    present = np.unique(y_train)
    probs = np.zeros((x_test.shape[0], n_classes))
    if present.size == 1:  # nothing to separate: always the one class seen
        probs[:, present[0]] = 1.0
        return probs
    LogisticRegression = require("sklearn.linear_model", extra="eval", purpose=PURPOSE).LogisticRegression

    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=MAX_ITER, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny sets; results are still scored
        clf.fit(x_train, y_train)
    probs[:, clf.classes_] = clf.predict_proba(x_test)
    return probs


def choose_c(x: np.ndarray, y: np.ndarray, n_classes: int, grid: Sequence[float] = C_GRID,
             folds: int = CV_FOLDS, seed: int = 0) -> float:
    """The ``C`` of ``grid`` with the best mean balanced accuracy over stratified folds
    (ties go to the smaller ``C``); :data:`DEFAULT_C` when a class has too few images."""
    counts = np.bincount(y, minlength=n_classes)
    if np.unique(y).size < 2 or counts[counts > 0].min() < folds:
        return DEFAULT_C
    StratifiedKFold = require("sklearn.model_selection", extra="eval", purpose=PURPOSE).StratifiedKFold

    cv = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y))
    best_c, best = DEFAULT_C, -1.0
    for c in grid:
        accs = [scores.score(y[te], _fit_predict(x[tr], y[tr], x[te], n_classes, c, seed).argmax(1))
                ["balanced_accuracy"] for tr, te in cv]
        if float(np.mean(accs)) > best + 1e-9:
            best_c, best = c, float(np.mean(accs))
    return best_c


def linear_probe(features: np.ndarray, eval_set: EvalSet, split: ProbeSplit, n_resamples: int = 1000,
                 seed: int = 0, c: float | None = None) -> ZeroShotResult:
    """Fit on the training part, score the test part (metrics, bootstrap intervals, baselines)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(eval_set.labels)
    train, test = np.asarray(split.train, dtype=int), np.asarray(split.test, dtype=int)
    if train.size == 0 or test.size == 0:
        raise ValueError(f"{eval_set.name}: the probe needs training and test images "
                         f"({train.size} and {test.size})")
    k = len(eval_set.classes)
    chosen = choose_c(x[train], y[train], k, seed=seed) if c is None else c
    probs = _fit_predict(x[train], y[train], x[test], k, chosen, seed)
    return score_predictions(eval_set.subset(split.test), probs, n_resamples, seed,
                             extra={"probe": "linear", "C": chosen, "n_train": int(train.size),
                                    "split": split.source})


@dataclass(frozen=True)
class KShotResult:
    """k-shot probe scores over several seeds on one data set's test part."""

    dataset: str
    classes: tuple[str, ...]
    shots: int
    seeds: tuple[int, ...]
    n_train: tuple[int, ...]  # training images per seed (fewer than k x classes when a class is small)
    n_test: int
    runs: tuple[Mapping[str, float], ...]  # metrics per seed
    baselines: Mapping[str, Mapping[str, float]]
    split: str
    c: float = DEFAULT_C
    mean: Mapping[str, float] = field(init=False)
    sd: Mapping[str, float] = field(init=False)

    def __post_init__(self) -> None:
        names = list(self.runs[0]) if self.runs else []
        values = {n: np.array([r[n] for r in self.runs], dtype=float) for n in names}
        object.__setattr__(self, "mean", MappingProxyType({n: float(np.nanmean(v)) for n, v in values.items()}))
        object.__setattr__(self, "sd", MappingProxyType(
            {n: float(np.nanstd(v, ddof=1)) if v.size > 1 else 0.0 for n, v in values.items()}))

    def to_dict(self) -> dict:
        return {"shots": self.shots, "seeds": list(self.seeds), "n_train": list(self.n_train),
                "n_test": self.n_test, "C": self.c, "split": self.split, "mean": dict(self.mean),
                "sd": dict(self.sd), "runs": [dict(r) for r in self.runs],
                "baselines": {k: dict(v) for k, v in self.baselines.items()}}


def sample_shots(labels: np.ndarray, pool: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """``shots`` indices of each class drawn from ``pool`` (all of a class when it has fewer)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels[pool]):
        members = pool[labels[pool] == c]
        chosen.append(rng.choice(members, size=min(shots, members.size), replace=False))
    return np.sort(np.concatenate(chosen))


def k_shot(features: np.ndarray, eval_set: EvalSet, split: ProbeSplit, shots: int,
           seeds: Sequence[int] = (0, 1, 2, 3, 4), c: float = DEFAULT_C) -> KShotResult:
    """A probe fitted on ``shots`` images per class from the training part, once per seed."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(eval_set.labels)
    pool, test = np.asarray(split.train, dtype=int), np.asarray(split.test, dtype=int)
    if pool.size == 0 or test.size == 0:
        raise ValueError(f"{eval_set.name}: the probe needs training and test images ({pool.size} and {test.size})")
    k = len(eval_set.classes)
    runs, n_train = [], []
    for seed in seeds:
        idx = sample_shots(y, pool, shots, seed)
        probs = _fit_predict(x[idx], y[idx], x[test], k, c, seed)
        runs.append(MappingProxyType(scores.score(y[test], probs.argmax(1), probs, eval_set.graded)))
        n_train.append(int(idx.size))
    base = scores.baselines(y[test], k, eval_set.graded)
    return KShotResult(eval_set.name, eval_set.classes, shots, tuple(seeds), tuple(n_train), int(test.size),
                       tuple(runs), MappingProxyType({n: MappingProxyType(v) for n, v in base.items()}),
                       split.source, c)


__all__ = ["C_GRID", "DEFAULT_C", "KShotResult", "PROBE_MODES", "ProbeSplit", "choose_c", "k_shot",
           "linear_probe", "probe_split", "sample_shots"]
