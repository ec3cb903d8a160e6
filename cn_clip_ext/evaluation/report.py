"""Evaluation reports: JSON, Markdown tables shaped like the paper's Table 1 (zero-shot, then
linear probe and k-shot where run), confusion-matrix PNGs and per-image prediction CSVs."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..outputs import replace_run_outputs
from .datasets import EvalSet
from .probe import KShotResult
from .tables import MISSING, model_grid, row
from .zero_shot import ZeroShotResult

Results = Mapping[str, Mapping[str, ZeroShotResult]]  # model label -> dataset -> result
KShotResults = Mapping[str, Mapping[str, Sequence[KShotResult]]]  # model label -> dataset -> one per k


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
    """Rows = models (then the no-information baselines), columns = datasets.

    The baselines are those of the first model's results (all models share the scored images).
    """
    def cell(r: ZeroShotResult) -> str:
        lo, hi = r.intervals.get(metric, (float("nan"),) * 2)
        return (f"{r.metrics[metric]:.3f} [{lo:.3f}, {hi:.3f}] (top-1 {r.metrics['top1']:.3f}, "
                f"n={int(r.labels.size)})")

    datasets, lines = model_grid(results, cell)
    first = next(iter(results.values()), {})
    for base in ("majority", "uniform"):
        cells = []
        for d in datasets:
            r = first.get(d)
            b = r.baselines.get(base, {}) if r else {}
            cells.append(f"{b[metric]:.3f} (top-1 {b['top1']:.3f})" if metric in b else MISSING)
        lines.append(row(f"{base}-class baseline", cells))
    name = metric.replace("_", " ")
    return (f"{name} with bootstrap 95% interval, top-1 accuracy and the number of images scored in brackets\n\n"
            + "\n".join(lines) + "\n")


def kshot_table(results: KShotResults, metric: str = "balanced_accuracy") -> str:
    """Rows = model and k (then the baselines on the test part), cells = mean ± sd over seeds."""
    datasets = list(dict.fromkeys(d for per in results.values() for d in per))
    lines = ["| model | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    shots = sorted({r.shots for per in results.values() for runs in per.values() for r in runs})
    for model, per in results.items():
        for k in shots:
            cells = []
            for d in datasets:
                r = next((r for r in per.get(d, ()) if r.shots == k), None)
                cells.append("–" if r is None else f"{r.mean[metric]:.3f} ± {r.sd[metric]:.3f} "
                                                    f"(top-1 {r.mean['top1']:.3f} ± {r.sd['top1']:.3f}, "
                                                    f"n={r.n_test})")
            lines.append(f"| {model} · {k}-shot | " + " | ".join(cells) + " |")
    first = next(iter(results.values()), {})
    for base in ("majority", "uniform"):
        cells = []
        for d in datasets:
            runs = first.get(d, ())
            b = runs[0].baselines.get(base, {}) if runs else {}
            cells.append(f"{b[metric]:.3f} (top-1 {b['top1']:.3f})" if metric in b else "–")
        lines.append(f"| {base}-class baseline | " + " | ".join(cells) + " |")
    seeds = next((len(r.seeds) for per in results.values() for runs in per.values() for r in runs), 0)
    name = metric.replace("_", " ")
    return (f"{name}, mean ± sd over {seeds} seeds, top-1 accuracy and the test images in brackets\n\n" + "\n".join(lines) + "\n")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def plot_confusion(result: ZeroShotResult, path: Path, title: str) -> None:
    """Row-normalised confusion matrix as a PNG (counts in the cells), drawn with Pillow."""
    from PIL import Image, ImageDraw

    cm = result.confusion
    k = len(result.classes)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    cell, font, small = 56, _font(14), _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(probe.textlength(c, font=small)) for c in result.classes) + 36
    top = 44
    width = max(label_w + k * cell + 20, int(probe.textlength(title, font=small)) + 20)
    img = Image.new("RGB", (width, top + k * cell + label_w), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 6), title, fill="black", font=small)
    draw.text((10, 22), "rows: true class, columns: predicted", fill=(90, 90, 90), font=small)
    for i in range(k):
        for j in range(k):
            v = float(norm[i, j])
            colour = tuple(int(255 - v * (255 - c)) for c in (8, 48, 107))  # white -> dark blue
            x0, y0 = label_w + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(200, 200, 200))
            draw.text((x0 + cell / 2, y0 + cell / 2), str(cm[i, j]), anchor="mm", font=font,
                      fill="white" if v > 0.5 else "black")
        draw.text((label_w - 6, top + i * cell + cell / 2), result.classes[i], anchor="rm", font=small, fill="black")
    for j, name in enumerate(result.classes):  # predicted-class names, rotated under their columns
        w = int(probe.textlength(name, font=small)) + 4
        label = Image.new("RGBA", (w, 16), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((0, 0), name, font=small, fill="black")
        rotated = label.rotate(90, expand=True)
        img.paste(rotated, (label_w + j * cell + cell // 2 - 8, top + k * cell + 4), rotated)
    img.save(path, optimize=False)


def write_predictions(result: ZeroShotResult, eval_set: EvalSet | None, path: Path) -> None:
    """One row per scored image (the result's own images, else ``eval_set``'s): its reference, the
    source file name, label, prediction and every class probability at full precision (the shortest
    text that reads back as the same float)."""
    refs = result.images or (eval_set.images if eval_set is not None else ())
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "file_name", "label", "prediction", *[f"p_{c}" for c in result.classes]])
        for ref, y, p, probs in zip(refs, result.labels, result.predictions, result.probabilities):
            w.writerow([ref, os.path.basename(str(ref)), result.classes[y], result.classes[p],
                        *[repr(float(v)) for v in probs]])
    os.replace(tmp, path)


def _plots(results: Results, eval_sets: Mapping[str, EvalSet], out: Path, tag: str = "") -> list[Path]:
    """A confusion PNG and a predictions CSV per model and dataset (``tag`` names the mode)."""
    written = []
    for model, per in results.items():
        for dataset, r in per.items():
            stem = f"{_slug(model)}{'__' + tag if tag else ''}__{dataset}"
            plot_confusion(r, out / f"confusion__{stem}.png", " · ".join(x for x in (model, tag, dataset) if x))
            write_predictions(r, eval_sets.get(dataset), out / f"predictions__{stem}.csv")
            written += [out / f"confusion__{stem}.png", out / f"predictions__{stem}.csv"]
    return written


REPORT_KIND = "eval-report"
"""The owner-marker kind of a ``vclip-eval --out`` folder (its manifest lists the report's files)."""
REPORT_FILES = ("report.json", "table.md", "predictions__*.csv", "confusion__*.png", "scores__*.csv")
"""The names a report writes: a later run replaces those its manifest lists and never overwrites others."""


def write_reports(results: Results, eval_sets: Mapping[str, EvalSet], out_dir: str | Path,
                  meta: Mapping[str, object] | None = None, linear: Results | None = None,
                  kshot: KShotResults | None = None,
                  models: Mapping[str, Mapping[str, object]] | None = None,
                  multilabel: Mapping[str, Mapping[str, Any]] | None = None,
                  table: str | None = None) -> Sequence[Path]:
    """Write ``report.json``, ``table.md`` and per model and dataset a PNG and a CSV.

    ``multilabel`` (model -> data set -> :class:`~.multilabel.MultiLabelResult`) adds a
    ``multilabel`` JSON section, its Markdown table and a ``scores__*.csv`` per model and set.
    ``table`` replaces the zero-shot Markdown table (e.g. the Table-1 table of several families).

    ``linear`` (scored on each set's test part) and ``kshot`` add their own JSON sections
    (``linear_probe``, ``kshot``) and Markdown tables; linear probes get ``__linear`` files.
    ``models`` (row label -> checkpoint path, SHA-256, step, seed, preprocessing) is recorded as
    ``report["models"]`` and in every result of that row (``"model"``). The files replace the
    previous report's in ``out_dir`` (those its manifest lists) and never files no manifest lists.
    """
    out = Path(out_dir)
    with replace_run_outputs(out, REPORT_KIND, REPORT_FILES, "report folder") as stage:
        written = _write_reports(results, eval_sets, stage, meta, linear, kshot, models, multilabel, table)
    return [out / p.name for p in written]


def _write_reports(results: Results, eval_sets: Mapping[str, EvalSet], out: Path,
                   meta: Mapping[str, object] | None, linear: Results | None, kshot: KShotResults | None,
                   models: Mapping[str, Mapping[str, object]] | None,
                   multilabel: Mapping[str, Mapping[str, Any]] | None = None,
                   table: str | None = None) -> list[Path]:
    models = {label: dict(record) for label, record in (models or {}).items()}

    def rows(per_model: Results) -> dict:
        return {m: {d: {**result_to_dict(r), **({"model": models[m]} if m in models else {})}
                    for d, r in per.items()} for m, per in per_model.items()}

    written = _plots(results, eval_sets, out)
    report: dict = {"meta": dict(meta or {}), "models": models, "results": rows(results)}
    table = markdown_table(results) if table is None else table
    if linear:
        written += _plots(linear, eval_sets, out, "linear")
        report["linear_probe"] = rows(linear)
        table += ("\n## linear probe (logistic regression on frozen image features, scored on the test part)\n\n"
                  + markdown_table({f"{m} · linear probe": per for m, per in linear.items()}))
    if kshot:
        report["kshot"] = {m: {d: {str(r.shots): r.to_dict() for r in runs} for d, runs in per.items()}
                           for m, per in kshot.items()}
        table += "\n## k-shot linear probe (scored on the test part)\n\n" + kshot_table(kshot)
    if multilabel:
        from . import multilabel as ml

        report["multilabel"] = {m: {d: ml.result_to_dict(r) for d, r in per.items()} for m, per in multilabel.items()}
        table += "\n## multi-label zero-shot (per-class image-vs-prompt scores)\n\n" + ml.multilabel_table(multilabel)
        for m, per in multilabel.items():
            for d, r in per.items():
                path = out / f"scores__{_slug(m)}__{d}.csv"
                ml.write_multilabel_scores(r, path)
                written.append(path)
    _atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
    _atomic_write_text(out / "table.md", table)
    return [out / "report.json", out / "table.md", *written]
