"""Image lists: evaluate a dataset on a published subset or partition of its images.

A list is a CSV with an ``image`` column (FLAIR's partition tables: ``,image,atributes,categories``
with paths such as ``36_ACRIMA/G/150161_OD_1.jpg``), or a CSV or text file whose first column
holds the image paths. A listed path names the dataset image that ends with the longest run of
the same path components (compared without case), so a list written under another dataset root
or folder prefix (FLAIR's ``NN_NAME/``) still finds the images; a path matching no image, or
several equally well, is a one-line error naming the file and row. Labels always come from the
dataset's own layout, never from the list.
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Sequence

from ..errors import UserError, where
from ..files import check_input_file
from .datasets import EvalSet
from .sheets import csv_text

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename")


def _parts(ref: str) -> tuple[str, ...]:
    return tuple(p.lower() for p in ref.strip().replace("\\", "/").split("/") if p not in ("", "."))


def read_image_list(path: str | Path) -> list[tuple[int, str]]:
    """``(row number, image path)`` of every non-empty row of an image list."""
    path = Path(path)
    check_input_file(path, "image list")
    lines = list(csv.reader(io.StringIO(csv_text(path))))
    if not lines:
        raise UserError(f"{path}: empty image list")
    header = [h.strip().lower() for h in lines[0]]
    col = next((header.index(c) for c in IMAGE_COLUMNS if c in header), None)
    start = 1 if col is not None else 0
    col = col if col is not None else 0
    out = []
    for row_no, line in enumerate(lines[start:], start=start + 1):
        if col < len(line) and line[col].strip():
            out.append((row_no, line[col].strip()))
    if not out:
        raise UserError(f"{path}: no image paths in the list")
    return out


def restrict(eval_set: EvalSet, listed: Sequence[tuple[int, str]], source: str | Path) -> EvalSet:
    """The images of ``eval_set`` that ``listed`` names, in the list's order (repeats once)."""
    by_suffix: dict[tuple[str, ...], list[int]] = {}
    for i, ref in enumerate(eval_set.images):
        parts = _parts(ref)
        for k in range(1, len(parts) + 1):
            by_suffix.setdefault(parts[-k:], []).append(i)
    chosen: list[int] = []
    taken: set[int] = set()
    for row_no, ref in listed:
        parts = _parts(ref)
        hit: list[int] = []
        for k in range(len(parts), 0, -1):
            hit = by_suffix.get(parts[-k:], [])
            if hit:
                break
        if not hit:
            raise UserError(f"{where(source, row_no)}: image {ref!r} is not one of the {len(eval_set)} images of "
                            f"{eval_set.name!r}")
        if len(hit) > 1:
            raise UserError(f"{where(source, row_no)}: image {ref!r} matches {len(hit)} images of {eval_set.name!r} "
                            f"(e.g. {eval_set.images[hit[0]]} and {eval_set.images[hit[1]]})")
        if hit[0] not in taken:
            taken.add(hit[0])
            chosen.append(hit[0])
    logger.info("%s: %d of %d images kept by the image list %s", eval_set.name, len(chosen), len(eval_set), source)
    return eval_set.subset(chosen)


def apply_image_list(eval_set: EvalSet, path: str | Path) -> EvalSet:
    """:func:`restrict` to the images a list file names."""
    return restrict(eval_set, read_image_list(path), path)
