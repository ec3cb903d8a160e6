"""Evaluation datasets read in their published layouts.

A dataset table (``cn_clip_ext/evaluation/resources/datasets.yaml``) names, for each dataset, the *reader* that understands
its layout and the prompt class each label means. Readers are registered in :data:`READERS`;
each returns the images and raw labels, which :func:`load_eval_set` maps to prompt classes.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence

from PIL import Image

from ..layouts import FIVES, MESSIDOR2, REFUGE
from ..errors import UserError, excerpt, where
from ..files import read_structured
from ..model.transforms import RGBImage, open_rgb, read_rgb
from .sheets import SHEET_SUFFIXES, find_column, read_csv_rows, read_sheet

logger = logging.getLogger(__name__)

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
    splits: tuple[str, ...] | None = field(default=None, repr=False)
    """The published split of each image (``"train"``, ``"test"`` ...) where the layout has one."""
    multi_label: bool = False
    """Each image may have several classes: then each label is a bit mask (bit ``k`` set = class
    ``k`` present; see :func:`cn_clip_ext.evaluation.multilabel.label_matrix`)."""

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int, min_size: int | None = None) -> Image.Image:
        """The image as RGB; a JPEG file may be decoded at a reduced scale no smaller than ``min_size``."""
        ref = self.images[index]
        return self.open_image(ref) if self.open_image else open_image_file(ref, min_size)

    def pixels(self, index: int, min_size: int | None = None) -> RGBImage:
        """:meth:`load` for the fundus transforms: an ``[H, W, 3]`` array where the file allows it
        (no PIL copy of a libspng-decoded PNG), else the PIL image."""
        ref = self.images[index]
        return self.open_image(ref) if self.open_image else read_rgb(ref, min_size)

    def subset(self, indices: Sequence[int]) -> "EvalSet":
        """The images at ``indices`` (in that order), same classes and opener."""
        return replace(self, images=tuple(self.images[i] for i in indices),
                       labels=tuple(self.labels[i] for i in indices),
                       splits=None if self.splits is None else tuple(self.splits[i] for i in indices))


RawItems = list[tuple]
"""``(image path or key, raw label as text)`` or ``(..., split name)`` when the layout has splits;
for a multi-label entry the raw label is the tuple of the image's raw labels."""
Reader = Callable[[Path, DatasetSpec], "RawItems | tuple[RawItems, Callable[[str], Image.Image]]"]


def open_image_file(path: str, min_size: int | None = None) -> Image.Image:
    """Decode as RGB, JPEGs at a reduced scale no smaller than ``min_size`` (see :func:`cn_clip_ext.model.transforms.open_rgb`)."""
    return open_rgb(path, min_size)


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


def read_messidor2(root: Path, spec: DatasetSpec) -> RawItems:
    """Kaggle adjudicated MESSIDOR-2: ``messidor_data.csv`` + ``IMAGES/``; gradable rows only."""
    table = root / MESSIDOR2.csv
    if not table.is_file():
        raise UserError(f"{table}: MESSIDOR-2 grades file not found")
    columns, rows = read_csv_rows(table)
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
            items.append((str(path), suffix.upper(), split))
    return items


REFUGE_LABEL_FILE = re.compile(r"(glaucoma|fovea|label)", re.IGNORECASE)
"""Label tables of the REFUGE validation/test releases have one of these words in their name."""
REFUGE_IMAGE_COLUMNS = ("ImgName", "Image Name", "FileName")
REFUGE_LABEL_COLUMNS = ("Label(Glaucoma=1)", "Glaucoma Label", "Glaucoma")
"""Test release: ``Label(Glaucoma=1)``; validation release: ``Glaucoma Label``."""


def _image_files(folder: Path) -> Iterable[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _is_mask(path: Path, base: Path) -> bool:
    rel = str(path.relative_to(base)).lower()
    return "mask" in rel or "disc_cup" in rel


def _refuge_split(path: Path, root: Path) -> str:
    rel = str(path.parent.relative_to(root)).lower()
    return "test" if "test" in rel else "valid" if "valid" in rel else "extra"


def _refuge_labelled(root: Path, skip: Path | None) -> RawItems:
    """Images named by REFUGE label tables (validation/test releases), with their splits."""
    tables = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in SHEET_SUFFIXES and p.is_file()
              and REFUGE_LABEL_FILE.search(p.stem)]
    if not tables:
        return []
    index: dict[str, Path] = {}
    for path in _image_files(root):
        if (skip is None or skip not in path.parents) and not _is_mask(path, root):
            index.setdefault(path.name.lower(), path)
    items: RawItems = []
    for table in tables:
        columns, rows = read_sheet(table)
        image_col = find_column(columns, *REFUGE_IMAGE_COLUMNS)
        label_col = find_column(columns, *REFUGE_LABEL_COLUMNS)
        if image_col is None or label_col is None:
            logger.debug("%s: no image-name and glaucoma-label columns; not a REFUGE label table", table)
            continue
        for row_no, row in enumerate(rows, start=2):
            name = row.get(image_col, "")
            if not name:
                continue
            path = index.get(name.lower())
            if path is None:
                raise UserError(f"{where(table, row_no)}: image {name!r} not found under {root}")
            label = row.get(label_col, "")
            if label not in ("0", "1"):
                raise UserError(f"{where(table, row_no)}: glaucoma label {label!r} is not 0 or 1")
            items.append((str(path), label, _refuge_split(path, root)))
        logger.info("%s: %d labelled REFUGE images", table, len(rows))
    return items


def read_refuge(root: Path, spec: DatasetSpec) -> RawItems:
    """REFUGE: training images ``g*`` glaucoma (1), ``n*`` not (0), in any sub-folder of
    ``Training400/``, plus the validation/test images that a challenge label table names."""
    training = root / REFUGE.image_dir
    labelled = _refuge_labelled(root, training if training.is_dir() else None)
    base = training if training.is_dir() else _require_dir(root, "REFUGE root")
    taken = {Path(ref) for ref, *_ in labelled}
    labelled_dirs = {p.parent for p in taken}
    items: RawItems = []
    for path in _image_files(base):
        if _is_mask(path, base) or path in taken or labelled_dirs.intersection(path.parents):
            continue
        prefix = path.name[:1].lower()
        if prefix not in ("g", "n"):
            raise UserError(f"{path}: REFUGE image names start with g (glaucoma) or n (normal)")
        items.append((str(path), "1" if prefix == "g" else "0", "train"))
    return items + labelled


MESSIDOR_ANNOTATION = re.compile(r"^annotation[ _-]?base\s*(\d+)\.(xls|xlsx|csv)$", re.IGNORECASE)
"""``Annotation_Base11.xls`` ...: one table per base (``.xlsx``/``.csv`` conversions accepted)."""
MESSIDOR_FORMAT_RANK = {".xls": 0, ".xlsx": 1, ".csv": 2}


def read_messidor(root: Path, spec: DatasetSpec) -> RawItems:
    """MESSIDOR (original): ``Base*/`` folders of images, each with ``Annotation_Base*.xls``
    (columns "Image name", "Retinopathy grade" 0-3, ...). An image listed twice is kept once."""
    _require_dir(root, "MESSIDOR root")
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        match = MESSIDOR_ANNOTATION.match(path.name)
        if match and path.is_file():
            base = str(int(match.group(1)))
            old = found.get(base)
            if old is None or MESSIDOR_FORMAT_RANK[path.suffix.lower()] < MESSIDOR_FORMAT_RANK[old.suffix.lower()]:
                found[base] = path  # one table per base: the original .xls before conversions
    if not found:
        raise UserError(f"{root}: no MESSIDOR annotation files (Annotation_Base*.xls, .xlsx or .csv) found")
    index: dict[str, Path] = {}
    for path in _image_files(root):
        index.setdefault(path.name.lower(), path)
    items: RawItems = []
    seen: set[str] = set()
    duplicates = 0
    for base in sorted(found, key=int):
        table = found[base]
        columns, rows = read_sheet(table)
        image_col = find_column(columns, "Image name")
        grade_col = find_column(columns, "Retinopathy grade")
        for col, name in ((image_col, "Image name"), (grade_col, "Retinopathy grade")):
            if col is None:
                raise UserError(f"{table}: missing column {name!r} (has {excerpt(list(columns), 120)})")
        for row_no, row in enumerate(rows, start=2):
            name = row.get(image_col, "")  # type: ignore[arg-type]
            if not name:
                continue
            local = table.parent / name
            path = local if local.is_file() else index.get(name.lower())
            if path is None:
                raise UserError(f"{where(table, row_no)}: image {name!r} not found under {root}")
            grade = row.get(grade_col, "")  # type: ignore[arg-type]
            if name.lower() in seen:
                duplicates += 1
                continue
            seen.add(name.lower())
            items.append((str(path), grade))
    if duplicates:
        logger.warning("%s: %d image(s) listed in more than one row; the first row of each is used",
                       root, duplicates)
    return items


def read_csv_table(root: Path, spec: DatasetSpec) -> RawItems:
    """Any CSV with an image column and a label column; images relative to ``image_root``."""
    opts = spec.options
    table = root / opts.get("path", "labels.csv")
    image_col, label_col = opts.get("image_col", "image"), opts.get("label_col", "label")
    columns, rows = read_csv_rows(table)
    for col in (image_col, label_col):
        if col not in columns:
            raise UserError(f"{table}: missing column {col!r} (has {excerpt(list(columns), 120)})")
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
    "messidor": read_messidor,
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
            raise UserError(f"{path}: dataset {excerpt(name)} needs 'reader' and a 'classes' mapping")
        options = {k: v for k, v in entry.items() if k not in ("reader", "classes", "graded")}
        specs[str(name)] = DatasetSpec(
            name=str(name), reader=str(entry["reader"]),
            classes=MappingProxyType({str(k): str(v) for k, v in entry["classes"].items()}),
            graded=bool(entry.get("graded", False)), options=MappingProxyType(options))
    return MappingProxyType(specs)


def chosen_roots(table: Mapping[str, DatasetSpec], data_root: Path | None, data: Sequence[str],
                 table_path: str | Path, what: str = "dataset") -> dict[str, Path]:
    """The data sets a program's ``--data-root DIR`` (every entry of ``table`` with a folder of its name in DIR)
    and ``--data NAME=ROOT`` options (later ones win) choose, name -> root; a one-line :class:`UserError` for a
    missing folder, a malformed or unknown ``--data``, or no choice at all (``what`` names the thing missing)."""
    chosen: dict[str, Path] = {}
    if data_root is not None:
        if not data_root.is_dir():
            raise UserError(f"{data_root}: --data-root folder not found")
        chosen = {name: data_root / name for name in table if (data_root / name).is_dir()}
    for item in data:
        name, sep, root = item.partition("=")
        if not sep:
            raise UserError(f"--data {item!r}: expected NAME=ROOT")
        if name not in table:
            raise UserError(f"--data {item!r}: {name!r} is not in {table_path} (it has {sorted(table)})")
        chosen[name] = Path(root)
    if not chosen:
        raise UserError(f"no {what} given: use --data NAME=ROOT or --data-root DIR")
    return chosen


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
    multi = bool(spec.options.get("multi_label"))
    labels = []
    for ref, label, *_ in raw:
        for one in (label if multi else (label,)):
            if one not in index:
                raise UserError(f"{ref}: unknown label {one!r} for {spec.name!r} (expected one of {keys})")
        labels.append(sum(1 << index[k] for k in set(label)) if multi else index[label])
    splits = tuple(item[2] if len(item) > 2 else "" for item in raw) if any(len(i) > 2 for i in raw) else None
    return EvalSet(spec.name, classes, tuple(item[0] for item in raw), tuple(labels), spec.graded and not multi,
                   opener, splits, multi)
