"""Table 1 in one run: every model of a ``models.yaml`` (any registered family) on every dataset,
each prompted in its own language and preprocessed its own way, scored under one protocol.

``models.yaml``::

    models:
      - label: VisionCLIP
        family: visionclip            # optional: recognised from the path when left out
        path: runs/rn50/bundle        # relative to this file
      - label: CLIP (RN50)
        family: open_clip
        path: weights/RN50.pt
        options: {arch: RN50}
      - label: FLAIR + expert knowledge
        family: flair
        path: weights/flair_resnet.pth
        options: {text_config: weights/Bio_ClinicalBERT}
        prompts: expert               # auto (default): the plain set in the family's language

Relative paths (``path`` and the ``*_config`` options) are read relative to the file. The protocol:
the same images per dataset for every model, batched and parallel decoding, a class embedding that
is the renormalised mean of its unit prompt embeddings, and the same scores with bootstrap
intervals: ACA (balanced accuracy, FLAIR's average class accuracy) and top-1 everywhere, quadratic
kappa on graded sets, AUC on binary ones.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import UserError
from ..files import read_structured
from ..model.families import detect_family, get_family
from .datasets import EvalSet
from .prompts import PromptSet, load_prompt_set
from .resources import prompt_set_path
from .zero_shot import ClassEmbedder, ZeroShotResult, encode_images, zero_shot_features

logger = logging.getLogger(__name__)

ENTRY_KEYS = ("label", "family", "path", "options", "prompts")
PATH_OPTIONS = ("text_config",)
"""Options that name files or folders (read relative to ``models.yaml``)."""


@dataclass(frozen=True)
class ModelEntry:
    """One row of Table 1: which weights, through which family, with which prompts."""

    label: str
    path: Path
    family: str | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    prompts: str = "auto"


def read_models(path: str | Path) -> list[ModelEntry]:
    """The entries of a ``models.yaml`` (a list, or a mapping with ``models:``); one-line errors
    naming the file and the entry."""
    path = Path(path)
    data = read_structured(path, "models file")
    entries = data.get("models") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: expected a list of models (or 'models:' holding one)")
    base, out, labels = path.parent, [], set()
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: model {number}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected a mapping with label and path")
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(ENTRY_KEYS)})")
        label, weights = entry.get("label"), entry.get("path")
        if not isinstance(label, str) or not label.strip() or not isinstance(weights, str) or not weights.strip():
            raise UserError(f"{where}: needs a label and a path")
        if label in labels:
            raise UserError(f"{where}: label {label!r} is used twice")
        labels.add(label)
        family = entry.get("family")
        if family is not None:
            get_family(str(family))  # an unknown family fails here, before any model loads
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            raise UserError(f"{where} ({label}): options must be a mapping")
        options = {k: str(base / v) if k in PATH_OPTIONS and isinstance(v, str) else v for k, v in options.items()}
        prompts = str(entry.get("prompts") or "auto")
        if Path(prompts).suffix in (".yaml", ".yml", ".json"):
            prompts = str(base / prompts)
        out.append(ModelEntry(label, base / weights, None if family is None else str(family),
                              MappingProxyType(options), prompts))
    return out


@dataclass(frozen=True)
class ModelRun:
    """What was evaluated for one entry: its family, language, prompts and preprocessing, and the results."""

    entry: ModelEntry
    family: str
    language: str
    prompts: str
    preprocess: str
    results: Mapping[str, ZeroShotResult]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.entry.label, "family": self.family, "path": str(self.entry.path),
                "options": dict(self.entry.options), "language": self.language, "prompts": self.prompts,
                "preprocess": self.preprocess}


def describe_preprocess(preprocess: Callable) -> str:
    """One line naming a family's image transform."""
    return " ".join(repr(preprocess).split())


def evaluate_entry(entry: ModelEntry, sets: Mapping[str, EvalSet], *, device: str | torch.device = "cpu",
                   batch_size: int = 64, workers: int = 2, bootstrap: int = 1000,
                   progress: bool = False) -> ModelRun:
    """Load one model through its family and score it zero-shot on every set."""
    family = get_family(entry.family) if entry.family else detect_family(entry.path)
    model, preprocess, tokenizer = family(entry.path, device, **entry.options)
    prompts: PromptSet = load_prompt_set(prompt_set_path(entry.prompts, family.language))
    embedder = ClassEmbedder(model, tokenizer, prompts, device)  # a class shared by sets is encoded once
    results = {}
    for name, eval_set in sets.items():
        if eval_set.multi_label:  # Table 1 is single-label; vclip-eval --checkpoint scores multi-label sets
            logger.warning("%s: multi-label; not part of the Table-1 table (vclip-eval --checkpoint scores it "
                           "with per-class AUC and mAP)", name)
            continue
        feats = encode_images(model, eval_set, preprocess, batch_size, workers, device, progress=progress)
        r = results[name] = zero_shot_features(model, tokenizer, eval_set, prompts, feats, device, bootstrap, embedder)
        logger.info("%s on %s: balanced accuracy %.3f, top-1 %.3f", entry.label, name,
                    r.metrics["balanced_accuracy"], r.metrics["top1"])
    run = ModelRun(entry, family.name, family.language, f"{family.language} · {prompts.name}",
                   describe_preprocess(preprocess), MappingProxyType(results))
    return run


def _interval(r: ZeroShotResult, metric: str) -> str:
    lo, hi = r.intervals.get(metric, (float("nan"),) * 2)
    return f"{r.metrics[metric]:.3f} [{lo:.3f}, {hi:.3f}]"


def _cell(r: ZeroShotResult | None, binary: bool) -> str:
    if r is None:
        return "–"
    parts = [f"ACA {_interval(r, 'balanced_accuracy')}", f"top-1 {_interval(r, 'top1')}"]
    if "quadratic_kappa" in r.metrics:
        parts.append(f"κ {_interval(r, 'quadratic_kappa')}")
    if binary and "macro_auc" in r.metrics:
        parts.append(f"AUC {_interval(r, 'macro_auc')}")
    return " · ".join(parts) + f" · n={r.labels.size}"


def _baseline_cell(r: ZeroShotResult | None, kind: str, binary: bool) -> str:
    b = r.baselines.get(kind, {}) if r else {}
    if not b:
        return "–"
    parts = [f"ACA {b['balanced_accuracy']:.3f}", f"top-1 {b['top1']:.3f}"]
    if "quadratic_kappa" in b:
        parts.append(f"κ {b['quadratic_kappa']:.3f}")
    if binary and "macro_auc" in b:
        parts.append(f"AUC {b['macro_auc']:.3f}")
    return " · ".join(parts) + f" · n={r.labels.size}"


METRIC_NOTE = ("ACA is the balanced accuracy (mean recall over the classes present; FLAIR's average class "
               "accuracy), top-1 the plain accuracy; the paper's Table 1 mixes the two across baselines, so "
               "every cell here gives both, with bootstrap 95% intervals, quadratic kappa (κ) on graded sets and "
               "AUC on binary ones; n is the number of images scored.")


def table1_markdown(runs: Sequence[ModelRun]) -> str:
    """A row per model (family, prompt language and set, preprocessing), then the no-information baselines."""
    datasets = list(dict.fromkeys(d for run in runs for d in run.results))
    binary = {d: next(len(run.results[d].classes) == 2 for run in runs if d in run.results) for d in datasets}
    head = ["model", "family", "prompts", "preprocessing", *datasets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        cells = [_cell(run.results.get(d), binary[d]) for d in datasets]
        lines.append(f"| {run.entry.label} | {run.family} | {run.prompts} | `{run.preprocess}` | "
                     + " | ".join(cells) + " |")
    first = {d: next(run.results[d] for run in runs if d in run.results) for d in datasets}
    for kind in ("majority", "uniform"):
        cells = [_baseline_cell(first[d], kind, binary[d]) for d in datasets]
        lines.append(f"| {kind}-class baseline | – | – | – | " + " | ".join(cells) + " |")
    return "Zero-shot, one protocol for every model. " + METRIC_NOTE + "\n\n" + "\n".join(lines) + "\n"


__all__ = ["METRIC_NOTE", "ModelEntry", "ModelRun", "describe_preprocess", "evaluate_entry", "read_models",
           "table1_markdown"]
