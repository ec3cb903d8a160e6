"""Evaluation reports: JSON, a Markdown table shaped like the paper's Table 1, confusion-matrix
PNGs and per-image prediction CSVs."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .datasets import EvalSet
from .zero_shot import ZeroShotResult

Results = Mapping[str, Mapping[str, ZeroShotResult]]  # model label -> dataset -> result


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def result_to_dict(r: ZeroShotResult) -> dict:
    return {
        "n_images": int(r.labels.size), "classes": list(r.classes), "metrics": r.metrics,
        "ci95": {k: list(v) for k, v in r.intervals.items()}, "baselines": r.baselines,
        "confusion": r.confusion.tolist(), **r.extra,
    }


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def markdown_table(results: Results, metric: str = "balanced_accuracy") -> str:
    """Rows = models (then the no-information baselines), columns = datasets."""
    datasets = list(dict.fromkeys(d for per in results.values() for d in per))
    lines = ["| model | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for model, per in results.items():
        cells = []
        for d in datasets:
            r = per.get(d)
            if r is None:
                cells.append("–")
                continue
            lo, hi = r.intervals.get(metric, (float("nan"),) * 2)
            cells.append(f"{r.metrics[metric]:.3f} [{lo:.3f}, {hi:.3f}] (top-1 {r.metrics['top1']:.3f})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    first = next(iter(results.values()), {})
    for base in ("majority", "uniform"):
        cells = []
        for d in datasets:
            r = first.get(d)
            b = r.baselines.get(base, {}) if r else {}
            cells.append(f"{b[metric]:.3f} (top-1 {b['top1']:.3f})" if metric in b else "–")
        lines.append(f"| {base}-class baseline | " + " | ".join(cells) + " |")
    name = metric.replace("_", " ")
    return (f"{name} with bootstrap 95% interval, top-1 accuracy in brackets\n\n" + "\n".join(lines) + "\n")


def plot_confusion(result: ZeroShotResult, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = result.confusion
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(result.classes), 1.0 + 0.8 * len(result.classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(result.classes)), result.classes, rotation=45, ha="right")
    ax.set_yticks(range(len(result.classes)), result.classes)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_predictions(result: ZeroShotResult, eval_set: EvalSet, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "prediction", *[f"p_{c}" for c in result.classes]])
        for ref, y, p, probs in zip(eval_set.images, result.labels, result.predictions, result.probabilities):
            w.writerow([ref, result.classes[y], result.classes[p], *[f"{v:.5f}" for v in probs]])
    os.replace(tmp, path)


def write_reports(results: Results, eval_sets: Mapping[str, EvalSet], out_dir: str | Path,
                  meta: Mapping[str, object] | None = None) -> Sequence[Path]:
    """Write ``report.json``, ``table.md`` and per model and dataset a PNG and a CSV."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for model, per in results.items():
        for dataset, r in per.items():
            stem = f"{_slug(model)}__{dataset}"
            plot_confusion(r, out / f"confusion__{stem}.png", f"{model} · {dataset}")
            write_predictions(r, eval_sets[dataset], out / f"predictions__{stem}.csv")
            written += [out / f"confusion__{stem}.png", out / f"predictions__{stem}.csv"]
    report = {"meta": dict(meta or {}),
              "results": {m: {d: result_to_dict(r) for d, r in per.items()} for m, per in results.items()}}
    _atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
    _atomic_write_text(out / "table.md", markdown_table(results))
    return [out / "report.json", out / "table.md", *written]
