"""Side tables of an LMDB build: splits, per-split labels, rejects, summary and manifest.

They are written once, at the end of a build, from the annotation CSV joined with the build
journal (both streamed in row order), each to a temporary file renamed into place; the manifest
comes last and marks the build complete.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from .lmdb_journal import Journal, RowOutcome
from .lmdb_store import IMGS, PAIRS
from .splits import SPLITS
from .validate import CsvInfo, iter_rows

if TYPE_CHECKING:
    from .lmdb_writer import BuildConfig

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
SPLITS_TABLE = "splits.csv"
REJECTS_TABLE = "rejects.csv"
LABELS_TABLE = "labels.csv"
SIDE_TABLES = (SPLITS_TABLE, REJECTS_TABLE, SUMMARY)
"""Files at the top of an output folder (``labels.csv`` lives in each split folder)."""
MAX_LABEL_VALUES = 1000
"""A label column with more distinct values than this is summarised by its count of values only."""


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class _LabelCounts:
    """Per label column, value -> images per split (bounded by :data:`MAX_LABEL_VALUES`)."""

    def __init__(self, cols: tuple[str, ...]):
        self.cols = cols
        self.counts: dict[str, dict[str, Counter]] = {c: {} for c in cols}
        self.overflow: dict[str, set] = {}

    def add(self, split: str, values: list[str]) -> None:
        for col, value in zip(self.cols, values):
            if col in self.overflow:
                continue
            table = self.counts[col]
            if value not in table and len(table) >= MAX_LABEL_VALUES:
                self.overflow[col] = set()
                continue
            table.setdefault(value, Counter())[split] += 1

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for col in self.cols:
            if col in self.overflow:
                out[col] = {"distinct_values": f">{MAX_LABEL_VALUES}"}
                continue
            out[col] = {v: {"all": sum(c.values()), **{s: c[s] for s in SPLITS}}
                        for v, c in sorted(self.counts[col].items())}
        return out


def token_stats(histogram: Mapping[int, int], context_length: int) -> dict[str, Any]:
    """Min / max / mean / percentiles of caption lengths from a length histogram."""
    n = sum(histogram.values())
    if not n:
        return {"count": 0}
    lengths = sorted(histogram)

    def percentile(q: float) -> int:
        rank, seen = max(1, math.ceil(q * n)), 0
        for length in lengths:
            seen += histogram[length]
            if seen >= rank:
                return length
        return lengths[-1]

    return {
        "count": n, "min": lengths[0], "max": lengths[-1],
        "mean": round(sum(k * v for k, v in histogram.items()) / n, 3),
        "p50": percentile(0.5), "p95": percentile(0.95), "p99": percentile(0.99),
        "context_length": context_length,
        "truncated": sum(v for k, v in histogram.items() if k > context_length - 2),
    }


def _joined(info: CsvInfo, journal: Journal) -> Iterator[tuple[list[str], int, RowOutcome]]:
    rows = iter_rows(info)
    for row, outcome in journal.outcomes():
        for r, fields in rows:
            if r == row:
                yield fields, row, outcome
                break


def _value(fields: list[str], index: int) -> str:
    return fields[index].strip() if index < len(fields) else ""


def write_side_tables(out: Path, info: CsvInfo, journal: Journal, fingerprint: Mapping[str, Any],
                      cfg: "BuildConfig") -> int:
    """Write every side table and, last, the manifest; returns the number of rejected rows."""
    labels = _LabelCounts(info.label_cols)
    reasons: Counter = Counter()
    tokens: Counter = Counter()
    images: Counter = Counter()
    paths = {SPLITS_TABLE: out / SPLITS_TABLE, REJECTS_TABLE: out / REJECTS_TABLE,
             **{s: out / s / LABELS_TABLE for s in SPLITS}}
    with ExitStack() as stack:
        files = {k: stack.enter_context(open(p.with_name(p.name + ".tmp"), "w", encoding="utf-8", newline=""))
                 for k, p in paths.items()}
        w = {k: csv.writer(f, lineterminator="\n") for k, f in files.items()}
        w[SPLITS_TABLE].writerow(["file_name", "split", "image_id"])
        w[REJECTS_TABLE].writerow(["row", "file_name", "reason", "detail"])
        for s in SPLITS:
            w[s].writerow(["image_id", "file_name", *info.label_cols])
        for fields, row, outcome in _joined(info, journal):
            name = _value(fields, info.image_index)
            if not outcome.ok:
                reasons[outcome.reason] += 1
                w[REJECTS_TABLE].writerow([row, name, outcome.reason, outcome.detail])
                continue
            values = [_value(fields, i) for i in info.label_indices]
            w[SPLITS_TABLE].writerow([name, outcome.split, outcome.image_id])
            w[outcome.split].writerow([outcome.image_id, name, *values])
            labels.add(outcome.split, values)
            tokens[outcome.tokens] += 1
            images[outcome.split] += 1
    for p in paths.values():
        os.replace(p.with_name(p.name + ".tmp"), p)
    summary = {
        "layout": "cn_clip-lmdb", "format_version": fingerprint["format_version"],
        "rows": sum(images.values()) + sum(reasons.values()),
        "images": {s: images[s] for s in SPLITS},
        "rejected": {"total": sum(reasons.values()), "by_reason": dict(sorted(reasons.items()))},
        "labels": labels.as_json(),
        "caption_tokens": token_stats(tokens, cfg.context_length),
        "settings": {"ratios": str(cfg.ratios), "seed": cfg.seed, "image": fingerprint["image"],
                     "shards": cfg.shards, "shard": fingerprint["shard"]},
    }
    _write_json(out / SUMMARY, summary)
    size = {s: {k: (out / s / k / "data.mdb").stat().st_size for k in (IMGS, PAIRS)} for s in SPLITS}
    _write_json(out / MANIFEST, {"complete": True, "fingerprint": dict(fingerprint), "images": summary["images"],
                                 "rejected": summary["rejected"]["total"], "bytes": size})
    return summary["rejected"]["total"]
