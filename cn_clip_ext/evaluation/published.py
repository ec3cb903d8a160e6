"""Readers of published fundus datasets, configured as data in the dataset table.

Three generic reader kinds cover most published layouts:

* ``table``: label tables (``.csv``, ``.xls`` or ``.xlsx``) naming images under a folder, one or
  more *parts* (the published splits), each with its table, image folder and documented size
  (APTOS-2019, IDRiD, EyePACS, DeepDRiD, AIROGS, RFMiD);
* ``filename``: the label from the image's folder or a pattern in its file name (ACRIMA);
* ``classfolders``: one folder per class (JSIEC).

Two layouts need code: ``papila`` (per-eye clinical sheets with a multi-row header) and ``odir``
(free-text diagnostic keywords per eye, mapped to the eight ODIR labels by rules given as data).

Every reader tolerates the variants seen in circulation: any case in file and folder names,
another table format (``.xlsx`` for ``.csv`` and back) or image extension, Windows path
separators, spaces around headers and cells, and a folder nesting other than the published one
(a table or folder not found where published is looked up by name under the root). Bad rows are
:class:`~cn_clip_ext.errors.UserError` lines naming the file and row. Where the dataset table
gives a part's documented size (``expected``), a different count is a warning.

A multi-label entry (``multi_label: true``) yields for each image the tuple of its positive raw
labels; see :func:`cn_clip_ext.evaluation.datasets.load_eval_set`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import UserError, where
from .datasets import IMAGE_SUFFIXES, READERS, DatasetSpec, RawItems
from .sheets import SHEET_SUFFIXES, find_column, read_sheet

logger = logging.getLogger(__name__)


def _norm(name: str) -> str:
    """A file or folder name compared without case and with runs of spaces as one."""
    return " ".join(name.split()).lower()


def _alternatives(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _matches(path: Path, name: str, is_file: bool) -> bool:
    if is_file:
        if not path.is_file():
            return False
        want = Path(name)
        if _norm(path.name) == _norm(name):
            return True
        # another table format or image extension of the same stem
        return (_norm(path.stem) == _norm(want.stem) and path.suffix.lower() in SHEET_SUFFIXES
                and want.suffix.lower() in SHEET_SUFFIXES)
    return path.is_dir() and _norm(path.name) == _norm(name)


def _child(folder: Path, name: str, is_file: bool) -> Path | None:
    exact = folder / name
    if (exact.is_file() if is_file else exact.is_dir()):
        return exact
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return None
    hits = [p for p in children if _matches(p, name, is_file)]
    hits.sort(key=lambda p: (p.name != name, p.suffix.lower() != Path(name).suffix.lower()))
    return hits[0] if hits else None


def locate(root: Path, relative: str, is_file: bool) -> Path | None:
    """``root/relative`` resolved part by part without case (and, for a file, in another table
    format); else the first file or folder of that last name anywhere under ``root``."""
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return root if root.is_dir() else None
    here: Path | None = root
    for k, part in enumerate(parts):
        here = _child(here, part, is_file and k == len(parts) - 1) if here is not None else None
    if here is not None:
        return here
    hits = sorted((p for p in root.rglob("*") if _matches(p, parts[-1], is_file)),
                  key=lambda p: (len(p.parts), str(p)))
    return hits[0] if hits else None


def locate_any(root: Path, names: Sequence[str], is_file: bool) -> Path | None:
    """The first of several published names (:func:`locate`) that exists."""
    for name in names:
        found = locate(root, name, is_file)
        if found is not None:
            return found
    return None


class ImageIndex:
    """The images under a folder (recursively), by lower-case file name and by stem."""

    def __init__(self, folder: Path, skip: Iterable[Path] = ()):
        skip = tuple(skip)
        self.folder = folder
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            if any(s == path or s in path.parents for s in skip):
                continue
            self.by_name.setdefault(path.name.strip().lower(), path)
            self.by_stem.setdefault(path.stem.strip().lower(), path)

    def __len__(self) -> int:
        return len(self.by_name)

    def find(self, ref: str) -> Path | None:
        """The image a table cell names: a path (``/`` or ``\\``) or a file name, with or without
        its extension (another image extension of the same stem is accepted)."""
        name = ref.strip().replace("\\", "/").rsplit("/", 1)[-1].strip().lower()
        if not name:
            return None
        suffix = Path(name).suffix
        if suffix in IMAGE_SUFFIXES:
            return self.by_name.get(name) or self.by_stem.get(Path(name).stem)
        return self.by_stem.get(name) or self.by_name.get(name)


@dataclass(frozen=True)
class Part:
    """One published part of a dataset: a split, its label table and its image folder."""

    split: str
    tables: tuple[str, ...]
    images: tuple[str, ...]
    expected: int | None
    options: Mapping[str, Any]

    def get(self, key: str, spec: DatasetSpec, default: Any = None) -> Any:
        """A part's own option, else the entry's."""
        return self.options.get(key, spec.options.get(key, default))


def parts_of(spec: DatasetSpec) -> list[Part]:
    raw = spec.options.get("parts")
    if not isinstance(raw, list) or not raw:
        raise UserError(f"dataset {spec.name!r}: a {spec.reader!r} entry needs 'parts' (a list of splits)")
    parts = []
    for k, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise UserError(f"dataset {spec.name!r}: part {k + 1} is not a mapping")
        expected = entry.get("expected")
        parts.append(Part(split=str(entry.get("split", f"part{k + 1}")), tables=tuple(_alternatives(entry.get("table"))),
                          images=tuple(_alternatives(entry.get("images", "."))),
                          expected=int(expected) if expected is not None else None,
                          options={key: v for key, v in entry.items()
                                   if key not in ("split", "table", "images", "expected")}))
    return parts


def check_count(spec: DatasetSpec, counts: Mapping[str, int], parts: Sequence[Part], present: set[str]) -> None:
    """Warn where a part that is present has another number of images than its documented size."""
    for part in parts:
        if part.expected is None or part.split not in present:
            continue
        got = counts.get(part.split, 0)
        if got != part.expected:
            logger.warning("%s: %d images in its %s part, the published set has %d (a partial or other "
                           "release?)", spec.name, got, part.split, part.expected)


def _column(table: Path, columns: Sequence[str], names: Sequence[str], what: str) -> str:
    found = find_column(columns, *names)
    if found is None:
        raise UserError(f"{table}: missing column {names[0]!r} ({what}; has {list(columns)})")
    return found


def _single_label(table: Path, row_no: int, row: Mapping[str, str], label_cols: Sequence[str],
                  spec: DatasetSpec, skip: set[str]) -> str | None:
    """The first non-empty of ``label_cols`` (DeepDRiD: the left or the right eye's grade)."""
    for col in label_cols:
        value = row.get(col, "").strip()
        if value:
            if value in skip:
                return None
            if value not in spec.classes:
                raise UserError(f"{where(table, row_no)}: label {value!r} in column {col!r} is not one of "
                                f"{list(spec.classes)}")
            return value
    raise UserError(f"{where(table, row_no)}: no label (columns {list(label_cols)} are empty)")


def _multi_label(table: Path, row_no: int, row: Mapping[str, str], columns: Mapping[str, str],
                 positive: set[str]) -> tuple[str, ...]:
    """The raw class keys whose column holds a positive value (RFMiD: ``1``)."""
    out = []
    for key, col in columns.items():
        value = row.get(col, "").strip()
        if value in positive:
            out.append(key)
        elif value not in ("0", ""):
            raise UserError(f"{where(table, row_no)}: column {col!r} holds {value!r}, expected 0 or 1")
    return tuple(out)


def read_table(root: Path, spec: DatasetSpec) -> RawItems:
    """Label tables naming images (see the module notes); ``parts`` list the published splits."""
    parts = parts_of(spec)
    items: RawItems = []
    counts: dict[str, int] = {}
    present: set[str] = set()
    seen: set[Path] = set()
    duplicates = 0
    for part in parts:
        table = locate_any(root, part.tables, is_file=True)
        if table is None:
            logger.info("%s: no %s label table (%s) under %s; part skipped", spec.name, part.split,
                        " or ".join(part.tables), root)
            continue
        folder = locate_any(root, part.images, is_file=False)
        if folder is None:
            raise UserError(f"{root}: {spec.name} {part.split} image folder {part.images[0]!r} not found "
                            f"(labels in {table})")
        present.add(part.split)
        index = ImageIndex(folder)
        columns, rows = read_sheet(table)
        image_col = _column(table, columns, _alternatives(part.get("image_col", spec, "image")), "image names")
        if spec.options.get("multi_label"):
            label_cols = {key: _column(table, columns, [key], "a label") for key in spec.classes}
            positive = set(_alternatives(part.get("positive", spec, "1")))
        else:
            names = _alternatives(part.get("label_col", spec, "label"))
            label_cols_single = [c for c in (find_column(columns, n) for n in names) if c is not None]
            if not label_cols_single:
                raise UserError(f"{table}: missing column {names[0]!r} (the label; has {list(columns)})")
        skip = set(_alternatives(part.get("skip_labels", spec)))
        for row_no, row in enumerate(rows, start=2):
            ref = row.get(image_col, "").strip()
            if not ref:
                continue
            path = index.find(ref)
            if path is None:
                raise UserError(f"{where(table, row_no)}: image {ref!r} not found under {folder}")
            if spec.options.get("multi_label"):
                label: Any = _multi_label(table, row_no, row, label_cols, positive)
            else:
                label = _single_label(table, row_no, row, label_cols_single, spec, skip)
                if label is None:
                    continue
            if path in seen:
                duplicates += 1
                continue
            seen.add(path)
            items.append((str(path), label, part.split))
            counts[part.split] = counts.get(part.split, 0) + 1
        logger.info("%s: %d %s images labelled by %s", spec.name, counts.get(part.split, 0), part.split, table)
    if not present:
        wanted = "; ".join(" or ".join(p.tables) for p in parts)
        raise UserError(f"{root}: no {spec.name} label table found (expected {wanted})")
    if duplicates:
        logger.warning("%s: %d image(s) listed more than once; the first row of each is used", spec.name, duplicates)
    check_count(spec, counts, parts, present)
    return items


def _image_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def _expected_total(spec: DatasetSpec) -> int | None:
    value = spec.options.get("expected")
    return int(value) if value is not None else None


def _warn_total(spec: DatasetSpec, n: int) -> None:
    expected = _expected_total(spec)
    if expected is not None and n != expected:
        logger.warning("%s: %d images, the published set has %d (a partial or other release?)", spec.name, n,
                       expected)


def read_filename(root: Path, spec: DatasetSpec) -> RawItems:
    """The label from the image's folder (``folders``: folder name -> label, ignoring case) or
    else from the first of ``rules`` (``{pattern: regex, label: L}``) that its file name matches."""
    folder = locate_any(root, _alternatives(spec.options.get("images", ".")), is_file=False)
    if folder is None:
        raise UserError(f"{root}: {spec.name} image folder {spec.options.get('images')!r} not found")
    folders = {_norm(str(k)): str(v) for k, v in (spec.options.get("folders") or {}).items()}
    rules = [(re.compile(str(r["pattern"]), re.IGNORECASE), str(r["label"])) for r in spec.options.get("rules", [])]
    items: RawItems = []
    for path in _image_files(folder):
        label = next((folders[_norm(p.name)] for p in path.relative_to(folder).parents if _norm(p.name) in folders),
                     None)
        if label is None:
            label = next((lab for pattern, lab in rules if pattern.search(path.name)), None)
        if label is None:
            raise UserError(f"{path}: {spec.name} file name matches none of its label patterns")
        items.append((str(path), label))
    _warn_total(spec, len(items))
    return items


def read_class_folders(root: Path, spec: DatasetSpec) -> RawItems:
    """``<images>/<class folder>/<image>`` (any depth below the class folder); the folder name,
    without surrounding spaces, is the raw label; folders not in ``classes`` are an error."""
    folder = locate_any(root, _alternatives(spec.options.get("images", ".")), is_file=False)
    if folder is None:
        raise UserError(f"{root}: {spec.name} image folder {spec.options.get('images')!r} not found")
    known = {_norm(k): k for k in spec.classes}
    items: RawItems = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        key = known.get(_norm(sub.name))
        files = _image_files(sub)
        if key is None:
            if files:
                raise UserError(f"{sub}: folder is not one of the {spec.name} classes ({len(spec.classes)} known)")
            continue
        items += [(str(p), key) for p in files]
    _warn_total(spec, len(items))
    return items


# --------------------------------------------------------------------------- PAPILA

PAPILA_SHEETS = (("OD", "patient_data_od.xlsx"), ("OS", "patient_data_os.xlsx"))
"""Eye -> clinical sheet under ``ClinicalData/`` (``.xls``/``.csv`` conversions accepted)."""
PAPILA_ID = re.compile(r"^#?\s*(\d+)$")


def _papila_rows(path: Path) -> list[tuple[int, str, str]]:
    """``(row number, patient id, diagnosis)`` of a PAPILA clinical sheet: the header is the first
    row holding ``Diagnosis``; data rows start with the patient id (``#002``)."""
    from .sheets import read_grid

    grid = read_grid(path)
    header_at = next((i for i, row in enumerate(grid) if find_column(row, "Diagnosis") is not None), None)
    if header_at is None:
        raise UserError(f"{path}: no 'Diagnosis' column in the first rows")
    col = [c.strip().lower() for c in grid[header_at]].index("diagnosis")
    out = []
    for i, row in enumerate(grid[header_at + 1:], start=header_at + 2):
        match = PAPILA_ID.match(row[0].strip()) if row else None
        if not match:
            continue
        out.append((i, match.group(1).zfill(3), row[col].strip() if col < len(row) else ""))
    return out


def read_papila(root: Path, spec: DatasetSpec) -> RawItems:
    """PAPILA: ``ClinicalData/patient_data_{od,os}.xlsx`` (diagnosis 0 healthy, 1 glaucoma,
    2 suspect) and ``FundusImages/RET{id}{OD|OS}.jpg``."""
    folder = locate(root, "FundusImages", is_file=False)
    if folder is None:
        raise UserError(f"{root}: PAPILA image folder 'FundusImages' not found")
    index = ImageIndex(folder)
    items: RawItems = []
    for eye, name in PAPILA_SHEETS:
        sheet = locate(root, f"ClinicalData/{name}", is_file=True)
        if sheet is None:
            raise UserError(f"{root}: PAPILA clinical sheet 'ClinicalData/{name}' not found")
        for row_no, pid, diagnosis in _papila_rows(sheet):
            if diagnosis not in spec.classes:
                raise UserError(f"{where(sheet, row_no)}: diagnosis {diagnosis!r} is not one of {list(spec.classes)}")
            path = index.find(f"RET{pid}{eye}")
            if path is None:
                raise UserError(f"{where(sheet, row_no)}: image RET{pid}{eye}.jpg not found in {folder}")
            items.append((str(path), diagnosis))
    _warn_total(spec, len(items))
    return items


# --------------------------------------------------------------------------- ODIR-5K

ODIR_EYES = (("Left", "left"), ("Right", "right"))
KEYWORD_SPLIT = re.compile(r"[，,；;]")


def odir_labels(keywords: str, rules: Sequence[tuple[str, str]], ignore: Sequence[str], other: str) -> tuple[str, ...]:
    """The ODIR labels of one eye's diagnostic keywords: each keyword takes the label of the first
    rule whose text it contains, ``other`` when none does; ``ignore``d keywords (image quality
    remarks) add nothing. Returns the labels in rule order, without repeats."""
    found: list[str] = []
    for word in (w.strip().lower() for w in KEYWORD_SPLIT.split(keywords)):
        if not word or any(i in word for i in ignore):
            continue
        label = next((lab for text, lab in rules if text in word), other)
        if label not in found:
            found.append(label)
    order = {lab: k for k, (_, lab) in enumerate(rules)}
    return tuple(sorted(found, key=lambda lab: order.get(lab, len(order))))


def read_odir(root: Path, spec: DatasetSpec) -> RawItems:
    """ODIR-5K: a per-patient sheet (``ID``, ``Left-Fundus``, ``Right-Fundus``, ``Left-Diagnostic
    Keywords``, ``Right-Diagnostic Keywords``; the challenge's annotations ``.xlsx`` or Kaggle's
    ``data.xlsx``/``full_df.csv``) and the training images; every eye is a multi-label item."""
    table = locate_any(root, _alternatives(spec.options.get("table")), is_file=True)
    if table is None:
        raise UserError(f"{root}: no ODIR-5K annotation sheet ({' or '.join(_alternatives(spec.options.get('table')))})")
    folder = locate_any(root, _alternatives(spec.options.get("images")), is_file=False)
    if folder is None:
        raise UserError(f"{root}: ODIR-5K image folder ({' or '.join(_alternatives(spec.options.get('images')))}) "
                        "not found")
    rules = [(str(r["match"]).lower(), str(r["label"])) for r in spec.options.get("keywords", [])]
    unknown = sorted({lab for _, lab in rules} - set(spec.classes))
    if unknown:
        raise UserError(f"dataset {spec.name!r}: keyword labels {unknown} are not among its classes")
    ignore = [str(w).lower() for w in spec.options.get("ignore", [])]
    other = str(spec.options.get("other", "O"))
    index = ImageIndex(folder)
    columns, rows = read_sheet(table)
    cols = {(side, what): _column(table, columns, [f"{side}-{what}"], "ODIR-5K per-eye column")
            for side, _ in ODIR_EYES for what in ("Fundus", "Diagnostic Keywords")}
    items: RawItems = []
    seen: set[Path] = set()
    unlabelled = 0
    for row_no, row in enumerate(rows, start=2):
        for side, _ in ODIR_EYES:
            name = row.get(cols[(side, "Fundus")], "").strip()
            if not name:
                continue
            path = index.find(name)
            if path is None:
                raise UserError(f"{where(table, row_no)}: image {name!r} not found under {folder}")
            if path in seen:
                continue
            seen.add(path)
            labels = odir_labels(row.get(cols[(side, "Diagnostic Keywords")], ""), rules, ignore, other)
            if not labels:
                unlabelled += 1
                continue
            items.append((str(path), labels))
    if unlabelled:
        logger.info("%s: %d eye(s) whose keywords are image-quality remarks only; left out", spec.name, unlabelled)
    _warn_total(spec, len(items) + unlabelled)
    return items


READERS.update({
    "table": read_table,
    "filename": read_filename,
    "classfolders": read_class_folders,
    "papila": read_papila,
    "odir": read_odir,
})
