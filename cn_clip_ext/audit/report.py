"""Audit reports: ``audit.json``, ``audit.md``, ``pairs.csv``, ``exclude.txt``, a contact sheet and
nearest-neighbour histograms. Files are written into a staging folder and moved into place at the end."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw

from ..extras import require
from ..outputs import replace_run_outputs
from .run import CORPUS_BASELINE, AuditResult, Pair

logger = logging.getLogger(__name__)

EXCLUDE_FILE = "exclude.txt"
AUDIT_KIND = "audit-report"
"""The owner-marker kind of an audit's ``--out`` folder (its manifest lists the report files)."""
FILES = ("audit.json", "audit.md", "pairs.csv", EXCLUDE_FILE, "contact_sheet.png", "nn_distributions.png")


def _stats(values: np.ndarray) -> dict[str, float | int]:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"n": 0}
    q = np.quantile(v, [0.0, 0.001, 0.01, 0.05, 0.5, 0.95, 0.99, 0.999, 1.0])
    keys = ("min", "q0.001", "q0.01", "q0.05", "median", "q0.95", "q0.99", "q0.999", "max")
    return {"n": int(v.size), "mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4),
            **{k: round(float(x), 4) for k, x in zip(keys, q)}}


def _pair_dict(p: Pair) -> dict:
    return {"eval_set": p.eval_set, "eval_ref": p.eval_ref, "corpus_ref": p.corpus_ref,
            "hash_distance": p.hash_distance, "cosine": None if p.cosine is None else round(p.cosine, 5),
            "levels": p.levels}


def summary(result: AuditResult) -> dict:
    """The JSON report as a dictionary."""
    sets = {}
    for name, src in result.eval_sources.items():
        mine = [p for p in result.pairs if p.eval_set == name]
        sets[name] = {
            "n_images": len(src), "n_unreadable": len(result.skipped.get(name, ())),
            "n_flagged_images": len(result.flagged(name)),
            "n_flagged_by_hash": len({p.eval_ref for p in mine if p.by_hash}),
            "n_flagged_by_embedding": len({p.eval_ref for p in mine if p.by_embedding}),
            "n_pairs": len(mine),
        }
    cfg = result.config
    return {
        "corpus": {"name": result.corpus.name, "n_images": len(result.corpus),
                   "n_unreadable": len(result.skipped.get("corpus", ()))},
        "thresholds": {
            "max_hash_distance": result.max_hash_distance, "hash_bits": 512,
            "hash": "pHash 16x16 + dHash 16x16 of the vessel-enhanced field of view",
            "min_cosine": result.min_cosine, "min_cosine_source": result.min_cosine_source,
            "query_rotations_deg": list(cfg.rotations),
        },
        "encoder": result.encoder,
        "eval_sets": sets,
        "nearest_neighbour": {"hash_distance": {k: _stats(v) for k, v in result.hash_nn.items()},
                              "cosine": {k: _stats(v) for k, v in result.cosine_nn.items()}},
        "warnings": list(result.warnings),
        "pairs": [_pair_dict(p) for p in result.pairs],
        "skipped": {k: [list(x) for x in v] for k, v in result.skipped.items() if v},
        "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
        "config": {"k": cfg.k, "baseline_samples": cfg.baseline_samples,
                   "baseline_quantile": cfg.baseline_quantile, "seed": cfg.seed},
    }


def markdown(result: AuditResult, report: dict) -> str:
    t = report["thresholds"]
    cos = "–" if t["min_cosine"] is None else f"{t['min_cosine']:.4f}"
    lines = ["# Leakage and memorisation audit", ""]
    for text in report.get("warnings", ()):
        lines += [f"> **Warning: unreliable thresholds.** {text}", ""]
    lines += [
        f"Corpus **{report['corpus']['name']}**: {report['corpus']['n_images']} images "
        f"({report['corpus']['n_unreadable']} unreadable). Encoder: {report['encoder'] or 'none (hash level only)'}.",
        "",
        f"Thresholds: hash distance <= **{t['max_hash_distance']}** of 512 bits ({t['hash']}); "
        f"cosine >= **{cos}** ({t['min_cosine_source']}). Queries at rotations {t['query_rotations_deg']} degrees.",
        "", "| evaluation set | images | flagged | by hash | by embedding | pairs |", "|---|---|---|---|---|---|"]
    for name, s in report["eval_sets"].items():
        lines.append(f"| {name} | {s['n_images']} | **{s['n_flagged_images']}** | {s['n_flagged_by_hash']} | "
                     f"{s['n_flagged_by_embedding']} | {s['n_pairs']} |")
    lines += ["", "## Nearest-neighbour distributions", "",
              "Each query's nearest neighbour; `vs itself` and `corpus vs corpus` are the same-distribution "
              "baselines (self excluded).", "",
              "| level | queries | n | min | q0.01 | median | max |", "|---|---|---|---|---|---|---|"]
    for level, per in report["nearest_neighbour"].items():
        for name, s in per.items():
            if s.get("n"):
                lines.append(f"| {level} | {name} | {s['n']} | {s['min']:g} | {s['q0.01']:g} | {s['median']:g} | "
                             f"{s['max']:g} |")
    lines += ["", "## Suspicious pairs", ""]
    if not result.pairs:
        lines.append("None above the thresholds.")
    else:
        lines += ["| set | evaluation image | corpus image | hash distance | cosine | level |",
                  "|---|---|---|---|---|---|"]
        for p in result.pairs[:200]:
            c = "–" if p.cosine is None else f"{p.cosine:.4f}"
            lines.append(f"| {p.eval_set} | `{p.eval_ref}` | `{p.corpus_ref}` | {p.hash_distance} | {c} | {p.levels} |")
        if len(result.pairs) > 200:
            lines.append(f"\n{len(result.pairs) - 200} more in pairs.csv.")
    lines += ["", f"`{EXCLUDE_FILE}` lists the {len(result.flagged())} flagged evaluation images: "
              f"`vclip-eval --exclude {EXCLUDE_FILE}` reports metrics with and without them.", ""]
    return "\n".join(lines)


def _thumb(image: Image.Image, size: int) -> Image.Image:
    image = image.convert("RGB")
    image.thumbnail((size, size))
    tile = Image.new("RGB", (size, size))
    tile.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return tile


def contact_sheet(result: AuditResult, path: Path, max_pairs: int = 60, thumb: int = 160, columns: int = 3) -> int:
    """Evaluation image beside its corpus match for up to ``max_pairs`` pairs; returns how many are shown."""
    pairs = list(result.pairs[:max_pairs])
    label_h, pad = 30, 8
    tile_w, tile_h = 2 * thumb + pad, thumb + label_h
    rows = max(1, -(-len(pairs) // columns))
    sheet = Image.new("RGB", (columns * (tile_w + pad) + pad, rows * (tile_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if not pairs:
        draw.text((pad, pad), "no suspicious pairs", fill=(0, 0, 0))
    for n, p in enumerate(pairs):
        x = pad + (n % columns) * (tile_w + pad)
        y = pad + (n // columns) * (tile_h + pad)
        for k, (src, idx) in enumerate(((result.eval_sources[p.eval_set], p.eval_index),
                                        (result.corpus, p.corpus_index))):
            try:
                sheet.paste(_thumb(src.open(idx), thumb), (x + k * (thumb + pad), y))
            except Exception as exc:  # noqa: BLE001 - a thumbnail must not stop the report
                draw.text((x + k * (thumb + pad) + 4, y + 4), f"unreadable: {type(exc).__name__}", fill=(200, 0, 0))
        cos = "" if p.cosine is None else f"  cos {p.cosine:.3f}"
        draw.text((x, y + thumb + 2), f"{p.eval_set}: {Path(p.eval_ref).name}"[:52], fill=(0, 0, 0))
        draw.text((x, y + thumb + 15), f"~ {Path(p.corpus_ref).name}  d {p.hash_distance}{cos}"[:52],
                  fill=(160, 0, 0) if p.by_hash else (0, 0, 160))
    sheet.save(path)
    return len(pairs)


def plot_distributions(result: AuditResult, path: Path) -> None:
    """Histograms of nearest-neighbour hash distance and cosine per query set, with the thresholds."""
    matplotlib = require("matplotlib", extra="audit", purpose="the audit's distribution plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("hash distance (512 bits)", result.hash_nn, result.max_hash_distance, np.arange(0, 514, 8))]
    if result.cosine_nn:
        panels.append(("cosine similarity", result.cosine_nn, result.min_cosine, np.linspace(-0.2, 1.0, 61)))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, per, threshold, bins) in zip(axes[0], panels):
        for name, values in per.items():
            v = np.asarray(values)[np.isfinite(values)]
            if v.size:
                ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, density=True, histtype="step", linewidth=1.5,
                        linestyle="--" if (name == CORPUS_BASELINE or name.endswith("itself")) else "-",
                        label=f"{name} (n={v.size})")
        if threshold is not None:
            ax.axvline(threshold, color="red", linewidth=1, label=f"threshold {threshold:g}")
        ax.set_xlabel(f"nearest-neighbour {title}")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


UNRELIABLE_MARK = "# UNRELIABLE:"
"""Starts each header line of an ``exclude.txt`` whose thresholds the corpus baseline found unable to
separate copies (``vclip-eval --exclude`` warns when it reads one)."""


def write_exclude(result: AuditResult, path: Path) -> None:
    lines = [*(f"{UNRELIABLE_MARK} {text}" for text in result.warnings),
             "# vclip-audit: evaluation images with a near-duplicate in the training corpus",
             f"# corpus: {result.corpus.name}; hash distance <= {result.max_hash_distance}; "
             f"cosine >= {result.min_cosine}", *result.flagged()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_pairs_csv(result: AuditResult, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["eval_set", "eval_ref", "corpus_ref", "hash_distance", "cosine", "levels"])
        for p in result.pairs:
            w.writerow([p.eval_set, p.eval_ref, p.corpus_ref, p.hash_distance,
                        "" if p.cosine is None else f"{p.cosine:.5f}", p.levels])


def write_audit_report(result: AuditResult, out_dir: str | Path, max_sheet_pairs: int = 60) -> Mapping[str, Path]:
    """Write every report file into ``out_dir`` (staged, then moved); returns name -> path."""
    out = Path(out_dir)
    with replace_run_outputs(out, AUDIT_KIND, FILES, "audit report folder") as stage:
        report = summary(result)
        shown = contact_sheet(result, stage / "contact_sheet.png", max_sheet_pairs)
        report["contact_sheet_pairs"] = shown
        (stage / "audit.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        (stage / "audit.md").write_text(markdown(result, report), encoding="utf-8")
        write_pairs_csv(result, stage / "pairs.csv")
        write_exclude(result, stage / EXCLUDE_FILE)
        plot_distributions(result, stage / "nn_distributions.png")
    return {name: out / name for name in FILES}


__all__ = ["AUDIT_KIND", "EXCLUDE_FILE", "FILES", "UNRELIABLE_MARK", "contact_sheet", "markdown", "plot_distributions", "summary",
           "write_audit_report"]
