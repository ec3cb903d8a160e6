"""FLAIR's published partition files as dataset image lists (reader ``flair_csv``).

FLAIR's transferability lists (``02_MESSIDOR.csv``, ``13_FIVES.csv``, ``25_REFUGE.csv`` ... in its
repository's ``local_data/dataframes/transferability/classification/``) have an unnamed index
column and ``image,atributes,categories`` (FLAIR's spelling): the image path relative to FLAIR's
data root (``02_MESSIDOR/images/...``) and Python-literal lists of attributes and categories; the
label is the first category, as FLAIR reads it. Reading the same list reproduces FLAIR's exact image
sets (1,744 / 800 / 400 images for those three).

The dataset's root is FLAIR's data root; the list (option ``list``) is a path relative to it, or an
absolute one. The table maps category names to prompt classes, e.g.
``{"no diabetic retinopathy": dr_0, ...}``.
"""
from __future__ import annotations

import ast
from pathlib import Path

from ..errors import UserError, where
from .datasets import READERS, DatasetSpec, RawItems
from .sheets import read_csv_rows

COLUMNS = ("image", "categories")


def _categories(text: str, table: Path, row_no: int) -> list[str]:
    try:
        value = ast.literal_eval(text.strip())  # a Python list literal; literal_eval never runs code
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where(table, row_no)}: categories {text!r} is not a non-empty list of names")
    return value


def read_flair_csv(root: Path, spec: DatasetSpec) -> RawItems:
    """``(image path, first category)`` for every row of a FLAIR partition list."""
    name = spec.options.get("list")
    if not name:
        raise UserError(f"dataset {spec.name!r}: a flair_csv dataset needs 'list' (e.g. 02_MESSIDOR.csv)")
    table = Path(name) if Path(name).is_absolute() else root / name
    if not table.is_file():
        raise UserError(f"{table}: FLAIR partition list not found (copy it from FLAIR's "
                        f"local_data/dataframes/transferability/classification/ into {root})")
    columns, rows = read_csv_rows(table)
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise UserError(f"{table}: missing column {missing[0]!r} (a FLAIR list has image,atributes,categories)")
    items: RawItems = []
    for row_no, row in enumerate(rows, start=2):
        label = _categories(row["categories"], table, row_no)[0]
        path = root / row["image"].strip()
        if not path.is_file():
            raise UserError(f"{where(table, row_no)}: image {str(path)!r} not found")
        items.append((str(path), label))
    return items


READERS["flair_csv"] = read_flair_csv

__all__ = ["read_flair_csv"]
