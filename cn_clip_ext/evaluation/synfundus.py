"""The in-domain test set: a split of a ``vclip-build-lmdb`` output and its label side table."""
from __future__ import annotations

import io
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

from PIL import Image

from ..lmdb.reader import LmdbPairDataset, read_labels
from ..errors import UserError
from .datasets import READERS, DatasetSpec, RawItems


class LmdbImageOpener:
    """Picklable ``image_id -> PIL image`` over one LMDB split (opened lazily per process)."""

    def __init__(self, split_dir: Path):
        self.split_dir = split_dir
        self._ds: LmdbPairDataset | None = None

    def __call__(self, image_id: str) -> Image.Image:
        if self._ds is None:
            self._ds = LmdbPairDataset(self.split_dir)
        with Image.open(io.BytesIO(self._ds.image_bytes(image_id))) as img:
            return img.convert("RGB")

    def __getstate__(self) -> dict:
        return {"split_dir": self.split_dir, "_ds": None}


def _condition(row: Mapping[str, str]) -> str | None:
    """FIVES-style class of a label row: A, D, G or N; ``None`` for mixed or other findings."""
    found = [c for c, on in (("D", int(row["dr_grade"]) > 0), ("A", row["is_amd"] == "1"),
                             ("G", row["is_gc"] == "1")) if on]
    if len(found) == 1:
        return found[0]
    return "N" if not found and row.get("is_abnormal") == "0" else None


DERIVED_LABELS: Mapping[str, Callable[[Mapping[str, str]], "str | None"]] = MappingProxyType({
    "condition": _condition,
})
"""Labels computed from several columns; an image whose value is ``None`` is left out."""


def read_synfundus(root: Path, spec: DatasetSpec) -> tuple[RawItems, LmdbImageOpener]:
    """Images of one split (``split`` option, default ``test``) labelled by a side-table column."""
    split_dir = root / str(spec.options.get("split", "test"))
    column = spec.options.get("label")
    if not column:
        raise UserError(f"dataset {spec.name!r}: a synfundus entry needs 'label' (a label column)")
    if not (split_dir / "imgs").is_dir():
        raise UserError(f"{split_dir}: no LMDB split here (expected {split_dir}/imgs and pairs)")
    try:
        table = read_labels(split_dir)
    except FileNotFoundError:
        raise UserError(f"{split_dir}: no label side table (build it with vclip-build-lmdb)") from None
    derive = DERIVED_LABELS.get(column)
    items = []
    for image_id, row in table.items():
        if derive is not None:
            value = derive(row)
            if value is not None:
                items.append((image_id, value))
            continue
        if column not in row:
            raise UserError(f"{split_dir}: label table has no column {column!r}")
        items.append((image_id, row[column].strip()))
    return items, LmdbImageOpener(split_dir)


READERS["synfundus"] = read_synfundus


def synfundus_label_classes(table: Mapping[str, DatasetSpec]) -> Mapping[str, Mapping[str, str]]:
    """Side-table column -> {label value as text -> prompt class}, from a dataset table's
    ``synfundus`` entries (their ``label`` option and ``classes``); derived labels are left out."""
    out: dict[str, Mapping[str, str]] = {}
    for spec in table.values():
        column = spec.options.get("label")
        if spec.reader == "synfundus" and column and column not in DERIVED_LABELS:
            out.setdefault(str(column), MappingProxyType(dict(spec.classes)))
    return MappingProxyType(out)
