"""Evaluation datasets read in their published layouts.

A dataset table (``eval/datasets.yaml``) names, for each dataset, the *reader* that understands
its layout and the prompt class each label means. Readers are registered in :data:`READERS`;
each returns the images and raw labels, which :func:`load_eval_set` maps to prompt classes.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from PIL import Image

from ..data.schema import FIVES, MESSIDOR2, REFUGE
from ..errors import UserError, where
from .prompts import read_structured

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of a dataset table."""

    name: str
    reader: str
    classes: Mapping[str, str]  # raw label (as text) -> prompt class key
    graded: bool = False
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class EvalSet:
    """Images with integer labels indexing ``classes`` (prompt class keys)."""

    name: str
    classes: tuple[str, ...]
    images: tuple[str, ...]  # file paths, or keys that ``open_image`` understands
    labels: tuple[int, ...]
    graded: bool = False
    open_image: Callable[[str], Image.Image] = field(default=None, repr=False)  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Image.Image:
        ref = self.images[index]
        return self.open_image(ref) if self.open_image else open_image_file(ref)


RawItems = list[tuple[str, str]]  # (image path or key, raw label as text)
Reader = Callable[[Path, DatasetSpec], "RawItems | tuple[RawItems, Callable[[str], Image.Image]]"]


def open_image_file(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{path}: {what} not found")
    return path


def _find_case_insensitive(folder: Path, name: str, listing: dict[str, str]) -> Path | None:
    exact = folder / name
    if exact.is_file():
        return exact
    hit = listing.get(name.lower())
    return folder / hit if hit else None


def _read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Rows of a CSV in UTF-8 (with or without BOM) or GBK, as dictionaries."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for encoding in ("utf-8-sig", "gbk"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise UserError(f"{path}: not UTF-8 or GBK text")
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def read_messidor2(root: Path, spec: DatasetSpec) -> RawItems:
    """Kaggle adjudicated MESSIDOR-2: ``messidor_data.csv`` + ``IMAGES/``; gradable rows only."""
    table = root / MESSIDOR2.csv
    if not table.is_file():
        raise UserError(f"{table}: MESSIDOR-2 grades file not found")
    columns, rows = _read_csv_rows(table)
    missing = [c for c in ("image_id", "adjudicated_dr_grade", "adjudicated_gradable") if c not in columns]
    if missing:
        raise UserError(f"{table}: missing column {missing[0]!r}")
    images = _require_dir(root / MESSIDOR2.image_dir, "MESSIDOR-2 image folder")
    listing = {p.name.lower(): p.name for p in images.iterdir()}
    items = []
    for row_no, row in enumerate(rows, start=2):
        if str(row["adjudicated_gradable"]).strip() not in ("1", "1.0"):
            continue
        path = _find_case_insensitive(images, row["image_id"].strip(), listing)
        if path is None:
            raise UserError(f"{where(table, row_no)}: image {row['image_id']!r} not found in {images}")
        grade = row["adjudicated_dr_grade"].strip()
        items.append((str(path), grade[:-2] if grade.endswith(".0") else grade))
    return items


def read_fives(root: Path, spec: DatasetSpec) -> RawItems:
    """FIVES: ``{train,test}/Original/{n}_{A|D|G|N}.png``, class from the suffix."""
    splits = spec.options.get("splits", FIVES.splits)
    items = []
    for split in splits:
        folder = _require_dir(root / split / FIVES.image_dir, f"FIVES {split} image folder")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            stem, sep, suffix = path.stem.rpartition("_")
            if not sep:
                raise UserError(f"{path}: FIVES file name has no class suffix (_A, _D, _G or _N)")
            items.append((str(path), suffix.upper()))
    return items


def read_refuge(root: Path, spec: DatasetSpec) -> RawItems:
    """REFUGE training images: ``g*`` glaucoma (1), ``n*`` not (0), in any sub-folder."""
    base = _require_dir(root / REFUGE.image_dir, "REFUGE Training400 folder") \
        if (root / REFUGE.image_dir).exists() else _require_dir(root, "REFUGE root")
    items = []
    for path in sorted(base.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or "mask" in str(path.relative_to(base)).lower():
            continue
        prefix = path.name[:1].lower()
        if prefix not in ("g", "n"):
            raise UserError(f"{path}: REFUGE image names start with g (glaucoma) or n (normal)")
        items.append((str(path), "1" if prefix == "g" else "0"))
    return items


def read_csv_table(root: Path, spec: DatasetSpec) -> RawItems:
    """Any CSV with an image column and a label column; images relative to ``image_root``."""
    opts = spec.options
    table = root / opts.get("path", "labels.csv")
    image_col, label_col = opts.get("image_col", "image"), opts.get("label_col", "label")
    columns, rows = _read_csv_rows(table)
    for col in (image_col, label_col):
        if col not in columns:
            raise UserError(f"{table}: missing column {col!r} (has {columns})")
    image_root = root / opts.get("image_root", ".")
    items = []
    for row_no, row in enumerate(rows, start=2):
        path = image_root / row[image_col].strip()
        if not path.is_file():
            raise UserError(f"{where(table, row_no)}: image {str(path)!r} not found")
        items.append((str(path), row[label_col].strip()))
    return items


def read_image_folder(root: Path, spec: DatasetSpec) -> RawItems:
    """``root/<label>/<image>``: the folder name is the label."""
    _require_dir(root, "image folder root")
    return [(str(p), p.parent.name) for p in sorted(root.glob("*/*")) if p.suffix.lower() in IMAGE_SUFFIXES]


READERS: dict[str, Reader] = {
    "messidor2": read_messidor2,
    "fives": read_fives,
    "refuge": read_refuge,
    "csv": read_csv_table,
    "imagefolder": read_image_folder,
}
"""Layout name -> reader; ``synfundus`` is added by :mod:`cn_clip_ext.evaluation.synfundus`."""


def load_dataset_table(path: str | Path) -> Mapping[str, DatasetSpec]:
    """Read a dataset table (YAML/JSON mapping name -> reader, classes, graded, options)."""
    data = read_structured(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a dataset table is a mapping of dataset names")
    specs = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or "reader" not in entry or not isinstance(entry.get("classes"), dict):
            raise UserError(f"{path}: dataset {name!r} needs 'reader' and a 'classes' mapping")
        options = {k: v for k, v in entry.items() if k not in ("reader", "classes", "graded")}
        specs[str(name)] = DatasetSpec(
            name=str(name), reader=str(entry["reader"]),
            classes=MappingProxyType({str(k): str(v) for k, v in entry["classes"].items()}),
            graded=bool(entry.get("graded", False)), options=MappingProxyType(options))
    return MappingProxyType(specs)


def load_eval_set(spec: DatasetSpec, root: str | Path) -> EvalSet:
    """Read a dataset from its root and map its labels to prompt classes."""
    if spec.reader not in READERS:
        raise UserError(f"dataset {spec.name!r}: unknown reader {spec.reader!r} (choose from {sorted(READERS)})")
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: dataset root for {spec.name!r} not found")
    result = READERS[spec.reader](root, spec)
    raw, opener = result if isinstance(result, tuple) else (result, None)
    if not raw:
        raise UserError(f"{root}: no images found for dataset {spec.name!r}")
    keys = list(spec.classes)
    classes = tuple(spec.classes[k] for k in keys)
    index = {k: i for i, k in enumerate(keys)}
    labels = []
    for ref, label in raw:
        if label not in index:
            raise UserError(f"{ref}: unknown label {label!r} for {spec.name!r} (expected one of {keys})")
        labels.append(index[label])
    return EvalSet(spec.name, classes, tuple(r for r, _ in raw), tuple(labels), spec.graded, opener)


def available_readers() -> Sequence[str]:
    return sorted(READERS)
