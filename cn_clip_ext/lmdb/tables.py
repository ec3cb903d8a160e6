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
from typing import Any, Callable, Iterator, Mapping, Protocol

from .journal import Journal, RowOutcome
from .records import EYES, record_kind
from .store import IMGS, PAIRS
from .splits import SPLITS, SplitRatios
from .rows import PAIRS_KIND, CsvInfo, iter_rows

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
SPLITS_TABLE = "splits.csv"
REJECTS_TABLE = "rejects.csv"
LABELS_TABLE = "labels.csv"
SIDE_TABLES = (SPLITS_TABLE, REJECTS_TABLE, SUMMARY)
"""Files at the top of an output folder (``labels.csv`` lives in each split folder)."""
MAX_LABEL_VALUES = 1000
"""A label column with more distinct values than this is summarised by its count of values only."""


class BuildSettings(Protocol):
    """What the summary records of a build's settings (the writer's ``BuildConfig`` has them)."""

    @property
    def ratios(self) -> SplitRatios: ...

    @property
    def seed(self) -> int: ...

    @property
    def shards(self) -> int: ...

    @property
    def context_length(self) -> int: ...


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


class _LabelCounts:
    """Per label column, value -> images per split (bounded by :data:`MAX_LABEL_VALUES`).

    A column whose values are all numbers, some of them fractional (a quality score), is
    summarised by count, min, mean and max per split instead.
    """

    def __init__(self, cols: tuple[str, ...]):
        self.cols = cols
        self.counts: dict[str, dict[str, Counter]] = {c: {} for c in cols}
        self.overflow: dict[str, set] = {}
        self.numeric: dict[str, dict[str, list[float]]] = {c: {} for c in cols}  # split -> [n, sum, min, max]
        self.fractional: set[str] = set()
        self.non_numeric: set[str] = set()

    def add(self, split: str, values: list[str]) -> None:
        for col, value in zip(self.cols, values):
            self._add_number(col, split, value)
            if col in self.overflow:
                continue
            table = self.counts[col]
            if value not in table and len(table) >= MAX_LABEL_VALUES:
                self.overflow[col] = set()
                continue
            table.setdefault(value, Counter())[split] += 1

    def _add_number(self, col: str, split: str, value: str) -> None:
        if col in self.non_numeric or not value.strip():
            return
        x = _number(value)
        if x is None:
            self.non_numeric.add(col)
            return
        if not x.is_integer():
            self.fractional.add(col)
        for key in (split, "all"):
            st = self.numeric[col].setdefault(key, [0, 0.0, x, x])
            st[0], st[1], st[2], st[3] = st[0] + 1, st[1] + x, min(st[2], x), max(st[3], x)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for col in self.cols:
            if col in self.fractional and col not in self.non_numeric:
                out[col] = {key: {"count": n, "min": lo, "mean": round(total / n, 6), "max": hi}
                            for key, (n, total, lo, hi) in self.numeric[col].items()}
                continue
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


def _eyes_present(outcome: RowOutcome) -> str:
    stored = [eye for eye, got in zip(EYES, outcome.eyes) if got.stored]
    return "both" if len(stored) == len(EYES) else f"{stored[0]}_only"


def write_side_tables(out: Path, info: CsvInfo, journal: Journal, fingerprint: Mapping[str, Any],
                      cfg: BuildSettings, digest: Callable[[Path], str] | None = None) -> int:
    """Write every side table and, last, the manifest; returns the number of rejected rows.

    ``digest(out)``, when given, is recorded in the manifest as ``content_digest`` (it is taken
    after every other table is in place; see :mod:`.digest`).

    For patients ``summary.json`` also counts the patients per split, which eyes they have
    (``eyes``) and the eye images rejected on their own or with their row (``rejected_images``).
    """
    kind = record_kind(info.kind)
    labels = _LabelCounts(info.label_cols)
    reasons: Counter = Counter()
    image_reasons: Counter = Counter()
    tokens: Counter = Counter()
    samples: Counter = Counter()
    images: Counter = Counter()
    eyes: Counter = Counter()
    paths = {SPLITS_TABLE: out / SPLITS_TABLE, REJECTS_TABLE: out / REJECTS_TABLE,
             **{s: out / s / LABELS_TABLE for s in SPLITS}}
    with ExitStack() as stack:
        files = {k: stack.enter_context(open(p.with_name(p.name + ".tmp"), "w", encoding="utf-8", newline=""))
                 for k, p in paths.items()}
        w = {k: csv.writer(f, lineterminator="\n") for k, f in files.items()}
        w[SPLITS_TABLE].writerow(kind.splits_header)
        w[REJECTS_TABLE].writerow(kind.rejects_header)
        for s in SPLITS:
            w[s].writerow([*kind.labels_header, *info.label_cols])
        for fields, row, outcome in _joined(info, journal):
            name = _value(fields, info.image_index)
            images_of_row = kind.files(info, fields, name)
            w[REJECTS_TABLE].writerows(kind.reject_lines(row, name, images_of_row, outcome))
            image_reasons.update(eye.reason for eye in outcome.eyes if eye.reason)
            if not outcome.ok:
                reasons[outcome.reason] += 1
                continue
            values = [_value(fields, i) for i in info.label_indices]
            w[SPLITS_TABLE].writerow([name, outcome.split, outcome.image_id])
            w[outcome.split].writerow([*kind.labels_prefix(name, images_of_row, outcome), *values])
            labels.add(outcome.split, values)
            tokens[outcome.tokens] += 1
            samples[outcome.split] += 1
            images[outcome.split] += sum(eye.stored for eye in outcome.eyes) if outcome.eyes else 1
            if outcome.eyes:
                eyes[_eyes_present(outcome)] += 1
    for p in paths.values():
        os.replace(p.with_name(p.name + ".tmp"), p)
    per_split = {kind.count_name: {s: samples[s] for s in SPLITS},  # pairs: samples are images
                 "images": {s: images[s] for s in SPLITS}}
    summary = {
        "layout": "cn_clip-lmdb", "format_version": fingerprint["format_version"],
        "rows": sum(samples.values()) + sum(reasons.values()),
        **per_split,
        "rejected": {"total": sum(reasons.values()), "by_reason": dict(sorted(reasons.items()))},
        "labels": labels.as_json(),
        "caption_tokens": token_stats(tokens, cfg.context_length),
        "settings": {"ratios": str(cfg.ratios), "seed": cfg.seed, "image": fingerprint["image"],
                     "shards": cfg.shards, "shard": fingerprint["shard"]},
    }
    manifest = {"complete": True, "fingerprint": dict(fingerprint), **per_split,
                "rejected": summary["rejected"]["total"]}
    if kind.name != PAIRS_KIND:
        extra = {"kind": kind.name, "eyes": {k: eyes[k] for k in ("both", *(f"{e}_only" for e in EYES))},
                 "rejected_images": {"total": sum(image_reasons.values()),
                                     "by_reason": dict(sorted(image_reasons.items()))}}
        summary.update(extra)
        manifest["kind"] = kind.name
    _write_json(out / SUMMARY, summary)
    manifest["bytes"] = {s: {k: (out / s / k / "data.mdb").stat().st_size for k in (IMGS, PAIRS)} for s in SPLITS}
    if digest is not None:
        manifest["content_digest"] = digest(out)
    _write_json(out / MANIFEST, manifest)
    return summary["rejected"]["total"]


def read_kind(folder: Path) -> str | None:
    """The record kind in a build folder's manifest (``"pairs"`` when it names none); ``None``
    without a readable manifest."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(manifest.get("kind", PAIRS_KIND)) if isinstance(manifest, dict) else None
