"""The audit: near-duplicates between a training corpus and evaluation sets, at two levels.

* **hash level**: 512-bit perceptual codes of the vessel-enhanced field of view
  (:mod:`.hashing`); a pair is a copy when the Hamming distance (best over the query
  rotations) is at most ``max_hash_distance``;
* **embedding level**: cosine similarity of image embeddings (a trained model, or the
  weight-free vessel descriptor); a pair is suspicious when the similarity (best over the
  query rotations) is at least ``min_cosine``.

Beside the pairs, the audit measures same-distribution baselines: each evaluation set against
itself and a sample of the corpus against the corpus (self excluded). The embedding threshold,
unless given, is the larger of the encoder's measured default and a high quantile of the
corpus-vs-corpus nearest-neighbour similarity.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from ..errors import UserError
from ..evaluation.datasets import EvalSet
from .corpus import EvalSetSource, ImageSource
from .encoders import Encoder
from .features import Features, corpus_features, extract
from .hashing import MAX_HASH_DISTANCE, QUERY_ROTATIONS, hamming
from .neighbours import search_rotated

logger = logging.getLogger(__name__)

CORPUS_BASELINE = "corpus vs corpus"


@dataclass(frozen=True)
class AuditConfig:
    """Thresholds and how the audit runs."""

    max_hash_distance: int = MAX_HASH_DISTANCE
    min_cosine: float | None = None
    """``None``: calibrated (see :func:`choose_min_cosine`)."""
    k: int = 5
    """Neighbours kept per query and level."""
    rotations: tuple[float, ...] = QUERY_ROTATIONS
    baseline_samples: int = 1000
    """Corpus images used as queries for the corpus-vs-corpus baseline."""
    baseline_quantile: float = 0.999
    batch_size: int = 64
    workers: int = 2
    chunk: int = 65536
    """Corpus rows searched at once (bounds the search memory)."""
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.max_hash_distance <= 512:
            raise ValueError(f"max_hash_distance must be in 0..512, got {self.max_hash_distance}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise ValueError(f"min_cosine must be in [-1, 1], got {self.min_cosine}")
        if self.k < 1 or self.baseline_samples < 0 or self.batch_size < 1 or self.workers < 0 or self.chunk < 1:
            raise ValueError("k, batch_size and chunk must be >= 1; baseline_samples and workers >= 0")
        if not 0.5 <= self.baseline_quantile <= 1.0:
            raise ValueError(f"baseline_quantile must be in [0.5, 1], got {self.baseline_quantile}")
        if not self.rotations:
            raise ValueError("at least one query rotation (0) is needed")


@dataclass(frozen=True)
class Pair:
    """An evaluation image and a corpus image closer than a threshold."""

    eval_set: str
    eval_index: int
    eval_ref: str
    corpus_index: int
    corpus_ref: str
    hash_distance: int
    cosine: float | None
    by_hash: bool
    by_embedding: bool

    @property
    def levels(self) -> str:
        return "+".join(n for n, on in (("hash", self.by_hash), ("embedding", self.by_embedding)) if on)


@dataclass(frozen=True)
class AuditResult:
    """Everything the reports need."""

    config: AuditConfig
    max_hash_distance: int
    min_cosine: float | None
    min_cosine_source: str
    encoder: str | None
    corpus: ImageSource
    eval_sources: Mapping[str, ImageSource]
    pairs: tuple[Pair, ...]
    hash_nn: Mapping[str, np.ndarray]
    """Nearest-neighbour Hamming distance per query: ``"<set> vs corpus"``, ``"<set> vs itself"``,
    :data:`CORPUS_BASELINE`."""
    cosine_nn: Mapping[str, np.ndarray]
    skipped: Mapping[str, tuple[tuple[str, str], ...]]
    seconds: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    """What the corpus-vs-corpus baseline says about the thresholds, e.g. that they cannot separate
    copies from distinct images in this corpus (the reports show these first)."""

    def flagged(self, eval_set: str | None = None) -> list[str]:
        """Evaluation image references in at least one pair (in order, no repeats)."""
        return list(dict.fromkeys(p.eval_ref for p in self.pairs if eval_set in (None, p.eval_set)))


class _Subset(ImageSource):
    def __init__(self, source: ImageSource, indices: Sequence[int]):
        self.source, self.indices = source, list(indices)
        self.name = f"{source.name} sample"
        self.refs = [source.refs[i] for i in self.indices]

    def open(self, index: int) -> Image.Image:
        return self.source.open(self.indices[index])


def choose_min_cosine(config: AuditConfig, encoder: Encoder, corpus_nn: np.ndarray) -> tuple[float, str]:
    """The embedding threshold and how it was chosen (given, measured default, or baseline quantile)."""
    if config.min_cosine is not None:
        return config.min_cosine, "given"
    finite = corpus_nn[np.isfinite(corpus_nn)]
    quantile = float(np.quantile(finite, config.baseline_quantile)) if finite.size else None
    default = encoder.default_min_cosine
    if quantile is None and default is None:
        raise ValueError("no corpus baseline to calibrate the embedding threshold on: give min_cosine")
    if default is not None and (quantile is None or quantile <= default):
        return default, f"encoder default {default:g} (corpus baseline q{config.baseline_quantile:g} = " \
                        f"{quantile if quantile is None else round(quantile, 4)})"
    return round(float(quantile) + 1e-4, 4), f"corpus-vs-corpus nearest-neighbour quantile {config.baseline_quantile:g}"


def _zero_rotation(rotations: Sequence[float]) -> int:
    return int(np.argmin(np.abs(np.asarray(rotations))))


def run_audit(corpus: ImageSource, eval_sets: Mapping[str, EvalSet], encoder: Encoder | None = None,
              cache_root: Path | None = None, config: AuditConfig = AuditConfig()) -> AuditResult:
    """Audit ``corpus`` against every evaluation set; ``encoder`` ``None`` skips the embedding level."""
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    cf = corpus_features(corpus, encoder, cache_root, batch_size=config.batch_size, workers=config.workers,
                         progress=config.progress)
    seconds["corpus features"] = time.perf_counter() - t0
    n_valid = int(cf.valid.sum())
    if n_valid == 0:
        raise UserError(f"{corpus.location or corpus.name}: none of the corpus's {len(corpus)} images is readable "
                        f"(first: {cf.skipped[0][0] if cf.skipped else '?'}); nothing to audit")
    logger.info("corpus %s: %d images (%d unreadable)", corpus.name, len(corpus), len(corpus) - n_valid)
    rot0 = _zero_rotation(config.rotations)
    search_kw = dict(chunk=config.chunk, valid=cf.valid)

    # --- corpus-vs-corpus baseline on a sample (self excluded)
    t = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    valid_idx = np.flatnonzero(cf.valid)
    sample = np.sort(rng.choice(valid_idx, min(config.baseline_samples, len(valid_idx)), replace=False))
    hash_nn: dict[str, np.ndarray] = {}
    cosine_nn: dict[str, np.ndarray] = {}
    if len(sample) and len(valid_idx) > 1:
        sf = extract(_Subset(corpus, sample), rotations=config.rotations, encoder=encoder,
                     batch_size=config.batch_size, workers=config.workers, progress=config.progress,
                     desc="corpus baseline")
        ok = sf.valid
        d, _ = search_rotated(sf.codes[ok], cf.codes, 1, binary=True, exclude=sample[ok], **search_kw)
        hash_nn[CORPUS_BASELINE] = d[:, 0]
        if encoder is not None:
            s, _ = search_rotated(sf.embeddings[ok], cf.embeddings, 1, binary=False, exclude=sample[ok], **search_kw)
            cosine_nn[CORPUS_BASELINE] = s[:, 0]
    seconds["corpus baseline"] = time.perf_counter() - t

    min_cosine, cosine_source = (None, "no embedding level")
    if encoder is not None:
        min_cosine, cosine_source = choose_min_cosine(config, encoder,
                                                      cosine_nn.get(CORPUS_BASELINE, np.zeros(0, np.float32)))
        logger.info("embedding threshold: cosine >= %.4f (%s)", min_cosine, cosine_source)
        if config.min_cosine is None and min_cosine >= 0.999:
            logger.warning("the encoder puts distinct corpus images at cosine ~1 (an untrained or collapsed model?): "
                           "the embedding level cannot separate copies here; rely on the hash level or give --model")
    warnings = baseline_warnings(hash_nn.get(CORPUS_BASELINE), cosine_nn.get(CORPUS_BASELINE),
                                 config.max_hash_distance, min_cosine)
    for text in warnings:
        logger.warning("%s", text)
    base = hash_nn.get(CORPUS_BASELINE)
    if base is not None and base.size and (base <= config.max_hash_distance).mean() > 1 - config.baseline_quantile:
        logger.warning("%.2f%% of sampled corpus images have another corpus image within the hash threshold %d: "
                       "the corpus has internal near-duplicates or the threshold is too loose for it",
                       100 * float((base <= config.max_hash_distance).mean()), config.max_hash_distance)

    # --- every evaluation set against the corpus and against itself
    pairs: list[Pair] = []
    sources: dict[str, ImageSource] = {}
    skipped: dict[str, tuple[tuple[str, str], ...]] = {"corpus": cf.skipped}
    t = time.perf_counter()
    for name, eval_set in eval_sets.items():
        src = EvalSetSource(eval_set)
        sources[name] = src
        ef = extract(src, rotations=config.rotations, encoder=encoder, batch_size=config.batch_size,
                     workers=config.workers, progress=config.progress, desc=f"eval {name}")
        skipped[name] = ef.skipped
        ok = np.flatnonzero(ef.valid)
        hd, hi = search_rotated(ef.codes[ok], cf.codes, config.k, binary=True, **search_kw)
        hash_nn[f"{name} vs corpus"] = hd[:, 0]
        sd = si = None
        if encoder is not None:
            sd, si = search_rotated(ef.embeddings[ok], cf.embeddings, config.k, binary=False, **search_kw)
            cosine_nn[f"{name} vs corpus"] = sd[:, 0]
        if len(ok) > 1:
            own = ef.codes[ok][:, rot0]
            d, _ = search_rotated(ef.codes[ok], own, 1, binary=True, exclude=np.arange(len(ok)))
            hash_nn[f"{name} vs itself"] = d[:, 0]
            if encoder is not None:
                emb0 = np.ascontiguousarray(ef.embeddings[ok][:, rot0])
                s, _ = search_rotated(ef.embeddings[ok], emb0, 1, binary=False, exclude=np.arange(len(ok)))
                cosine_nn[f"{name} vs itself"] = s[:, 0]
        pairs += _pairs(name, src, ok, ef, cf, corpus, hd, hi, sd, si, config.max_hash_distance, min_cosine)
    seconds["evaluation sets"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    logger.info("%d suspicious pairs (%d evaluation images)", len(pairs),
                len({(p.eval_set, p.eval_ref) for p in pairs}))
    return AuditResult(config, config.max_hash_distance, min_cosine, cosine_source,
                       None if encoder is None else encoder.key, corpus, sources, tuple(pairs), hash_nn, cosine_nn,
                       skipped, seconds, warnings)


UNRELIABLE_SHARE = 0.5
"""A threshold that puts more than this share of sampled corpus images within reach of another corpus
image cannot tell a copy from a distinct image of the same distribution."""


def baseline_warnings(hash_nn: np.ndarray | None, cosine_nn: np.ndarray | None, max_hash_distance: int,
                      min_cosine: float | None) -> tuple[str, ...]:
    """The corpus-vs-corpus baseline's verdict on the thresholds: one sentence per level at which most
    sampled corpus images have another corpus image within the threshold."""
    out = []
    levels = (("hash", hash_nn, lambda v: v <= max_hash_distance, f"hash distance <= {max_hash_distance}"),
              ("embedding", cosine_nn, lambda v: v >= min_cosine, f"cosine >= {min_cosine}"))
    for level, values, within, rule in levels:
        if values is None or (level == "embedding" and min_cosine is None):
            continue
        values = np.asarray(values)[np.isfinite(values)]
        if not values.size:
            continue
        share = float(within(values).mean())
        if share > UNRELIABLE_SHARE:
            out.append(f"{100 * share:.0f}% of {values.size} sampled corpus images have another corpus image within "
                       f"the {level} threshold ({rule}): at this threshold the {level} level cannot separate copies "
                       f"from distinct images, so its flagged pairs and exclude.txt are unreliable; choose a stricter "
                       f"threshold")
    return tuple(out)


def _pairs(name: str, src: ImageSource, ok: np.ndarray, ef: Features, cf: Features, corpus: ImageSource,
           hd: np.ndarray, hi: np.ndarray, sd: np.ndarray | None, si: np.ndarray | None,
           max_hash: int, min_cos: float | None) -> list[Pair]:
    out = []
    for row, q in enumerate(ok):
        cands = [int(i) for d, i in zip(hd[row], hi[row]) if i >= 0 and d <= max_hash]
        if sd is not None:
            cands += [int(i) for s, i in zip(sd[row], si[row]) if i >= 0 and s >= min_cos]
        for c in dict.fromkeys(cands):
            dist = int(hamming(ef.codes[q], np.asarray(cf.codes[c:c + 1])).min())
            cos = None
            if sd is not None:
                cos = float((ef.embeddings[q] @ np.asarray(cf.embeddings[c], np.float32)).max())
            out.append(Pair(name, int(q), src.refs[q], c, corpus.refs[c], dist, cos, dist <= max_hash,
                            cos is not None and cos >= min_cos))
    out.sort(key=lambda p: (p.hash_distance, -(p.cosine or 0.0)))
    return out


__all__ = ["AuditConfig", "AuditResult", "CORPUS_BASELINE", "Pair", "UNRELIABLE_SHARE", "baseline_warnings",
           "choose_min_cosine", "run_audit"]
