"""The annotation CSV of an LMDB build, read row by row: where the rows and images are
(:class:`InputSpec`), the pre-pass over the file (:func:`scan_csv`), the record kind its header
implies, a row's fields and caption, and why a row is rejected (:data:`REASONS`, :class:`RowReject`).

Whole-file problems (unreadable CSV, a missing column) raise :class:`UserError`. Row problems
never raise: they come back as one of the :data:`REASONS` and the row goes to the rejects table.
"""
from __future__ import annotations

import codecs
import csv
import itertools
import posixpath
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import UserError, first_line, where
from ..files import check_input_file
from ..layouts import (
    PATIENT_COLUMNS, SYNFUNDUS_CSV, SYNFUNDUS_IMAGE_COL, SYNFUNDUS_IMAGE_DIR, SYNFUNDUS_NOT_LABELS, SYNFUNDUS_TEXT_COL,
)

# Row-level reject reasons (the ``reason`` column of rejects.csv).
MALFORMED_ROW = "malformed_row"
EMPTY_FILE_NAME = "empty_file_name"
EMPTY_CAPTION = "empty_caption"
DUPLICATE_FILE_NAME = "duplicate_file_name"
MISSING_FILE = "missing_file"
UNREADABLE_FILE = "unreadable_file"
ZERO_BYTE = "zero_byte_file"
TRUNCATED = "truncated_image"
UNDECODABLE = "undecodable_image"
WRONG_MODE = "wrong_mode"
TOO_LARGE = "image_too_large"
NOT_A_FILE = "not_a_regular_file"
FILE_TOO_BIG = "file_too_large"
OUTSIDE_ROOT = "path_outside_root"
# Patient-level rows (the ``patients`` record kind) add these.
EMPTY_PATIENT_ID = "empty_patient_id"
DUPLICATE_PATIENT_ID = "duplicate_patient_id"
NO_EYE_IMAGE = "no_eye_image"
NO_USABLE_EYE = "no_usable_eye"
REASONS: tuple[str, ...] = (
    MALFORMED_ROW, EMPTY_FILE_NAME, EMPTY_CAPTION, DUPLICATE_FILE_NAME, MISSING_FILE, UNREADABLE_FILE,
    ZERO_BYTE, TRUNCATED, UNDECODABLE, WRONG_MODE, TOO_LARGE, NOT_A_FILE, FILE_TOO_BIG, OUTSIDE_ROOT,
    EMPTY_PATIENT_ID, DUPLICATE_PATIENT_ID, NO_EYE_IMAGE, NO_USABLE_EYE,
)


class RowReject(Exception):
    """A row-level problem: ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# Record kinds: one image and its caption per row, or one patient's two eyes and report per row.
PAIRS_KIND, PATIENTS_KIND = "pairs", "patients"
KINDS: tuple[str, ...] = (PAIRS_KIND, PATIENTS_KIND)

_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


@dataclass(frozen=True)
class InputSpec:
    """Where the rows and images are and which columns mean what."""

    csv_path: Path
    image_root: Path
    image_col: str = SYNFUNDUS_IMAGE_COL
    text_col: str = SYNFUNDUS_TEXT_COL
    not_labels: tuple[str, ...] = ()
    """Columns that are neither image, caption nor label (e.g. SynFundus's ``file_md5``)."""
    encoding: str | None = None
    """CSV text encoding; ``None`` detects UTF-8 (with or without BOM), UTF-16 (BOM) or GBK."""
    kind: str | None = None
    """``"pairs"`` (``image_col``/``text_col``), ``"patients"`` (:data:`PATIENT_COLUMNS`) or ``None``:
    detected from the header (:func:`detect_kind`)."""
    allow_outside_root: bool = False
    """Accept image paths that leave ``image_root`` (absolute, ``..``, a symlink out of it); by default
    such a row is rejected (:data:`OUTSIDE_ROOT`)."""

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"record kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @classmethod
    def synfundus(cls, root: str | Path) -> "InputSpec":
        """The SynFundus-1M release layout: ``root/Fundus/*.png`` + ``root/SynFundus-1M_annotation.csv``."""
        root = Path(root)
        return cls(root / SYNFUNDUS_CSV, root / SYNFUNDUS_IMAGE_DIR, not_labels=SYNFUNDUS_NOT_LABELS)


@dataclass(frozen=True)
class CsvInfo:
    """The result of a full pre-pass over the CSV: encoding, header, row count, label columns."""

    path: Path
    encoding: str
    header: tuple[str, ...]
    rows: int
    image_index: int
    """The key column: the image path (pairs) or the patient id (patients)."""
    text_index: int
    label_cols: tuple[str, ...]
    label_indices: tuple[int, ...]
    kind: str = PAIRS_KIND
    eye_indices: tuple[int, ...] = ()
    """Patients: the ``left_image`` and ``right_image`` columns."""


def _sniff_encoding(path: Path) -> list[str]:
    with open(path, "rb") as fh:
        head = fh.read(4)
    for bom, name in _BOMS:
        if head.startswith(bom):
            return [name]
    return ["utf-8-sig", "gb18030"]


def _count_rows(path: Path, encoding: str) -> tuple[list[str], int]:
    with open(path, encoding=encoding, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise UserError(f"{where(path)}: empty CSV, no header row")
        rows, last_start, last = 0, 1, header
        while True:
            start = reader.line_num + 1  # the physical line the next record starts on
            fields = next(reader, None)
            if fields is None:
                break
            rows, last_start, last = rows + 1, start, fields
    if any("\n" in f or "\r" in f for f in last):
        _check_last_record(path, encoding, last_start, rows)
    return header, rows


def _check_last_record(path: Path, encoding: str, start_line: int, row: int) -> None:
    """Refuse a CSV whose last record is a quoted field left open (the csv module would silently
    read the rest of the file into it): parse that record again, strictly."""
    with open(path, encoding=encoding, newline="") as fh:
        tail = itertools.islice(fh, max(0, start_line - 1), None)
        try:
            for _ in csv.reader(tail, strict=True):
                pass
        except csv.Error:
            raise UserError(f"{where(path, row)}: unterminated quote (a quoted field runs to the end of the "
                            "file); close the quote or remove it") from None


def scan_csv(spec: InputSpec) -> CsvInfo:
    """Read the whole CSV once (streaming) to detect its encoding, check columns and count rows."""
    path = spec.csv_path
    if not path.exists():
        raise UserError(f"{where(path)}: no such annotation CSV")
    check_input_file(path, "annotation CSV", max_bytes=None)  # a FIFO or device would block the read
    candidates = [spec.encoding] if spec.encoding else _sniff_encoding(path)
    header: list[str] | None = None
    for encoding in candidates:
        try:
            header, rows = _count_rows(path, encoding)
            break
        except UnicodeDecodeError:
            continue
        except LookupError:
            raise UserError(f"{where(path)}: unknown text encoding {encoding!r}") from None
        except csv.Error as exc:  # the csv module's messages name no content
            raise UserError(f"{where(path)}: not a readable CSV ({first_line(exc)})") from None
        except OSError as exc:
            raise UserError(f"{where(path)}: cannot read ({exc.strerror or exc})") from None
    if header is None:
        raise UserError(f"{where(path)}: not a text CSV in {' or '.join(candidates)} "
                        "(UTF-8, UTF-8 with BOM, UTF-16 with BOM and GBK are read; see --encoding)")
    header = [h.strip() for h in header]
    if rows == 0:
        raise UserError(f"{where(path)}: the CSV has a header row but no data rows; nothing to build")
    kind = spec.kind or detect_kind(spec, header)
    required = PATIENT_COLUMNS if kind == PATIENTS_KIND else (spec.image_col, spec.text_col)
    missing = [c for c in required if c not in header]
    if missing:
        what = "patient-level column" if kind == PATIENTS_KIND else "column"
        detected = spec.kind is None and kind == PATIENTS_KIND
        hint = "; for one image per row name its --image-col and --text-col" if detected else ""
        # the header itself is not shown: the first line of an arbitrary file is data
        raise UserError(f"{where(path)}: missing required {what} {', '.join(map(repr, missing))} "
                        f"(the header row has {len(header)} fields){hint}")
    skip = {*required, *spec.not_labels}
    labels = tuple((i, h) for i, h in enumerate(header) if h not in skip and h)
    label_cols, label_indices = tuple(h for _, h in labels), tuple(i for i, _ in labels)
    if kind == PATIENTS_KIND:
        key, left, right, text = (header.index(c) for c in PATIENT_COLUMNS)
        return CsvInfo(path, encoding, tuple(header), rows, key, text, label_cols, label_indices, kind, (left, right))
    return CsvInfo(path, encoding, tuple(header), rows, header.index(spec.image_col), header.index(spec.text_col),
                   label_cols, label_indices)


def detect_kind(spec: InputSpec, header: Sequence[str]) -> str:
    """The record kind a header implies: patients when it has any patient-only column and not both
    pair columns (a partial patient header then fails on its missing columns), else pairs."""
    pair_cols = spec.image_col in header and spec.text_col in header
    patient_only = [c for c in PATIENT_COLUMNS if c in header and c != "report"]
    return PATIENTS_KIND if patient_only and not pair_cols else PAIRS_KIND


def iter_rows(info: CsvInfo) -> Iterator[tuple[int, list[str]]]:
    """``(row, fields)`` for each data row; ``row`` counts from 1 after the header."""
    with open(info.path, encoding=info.encoding, newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        yield from enumerate(reader, start=1)


def row_fields(info: CsvInfo, fields: Sequence[str]) -> tuple[str, str] | None:
    """``(file_name, caption)`` of a row, ``None`` when the row has the wrong number of fields.

    For patients, ``(patient_id, report)``; :func:`eye_fields` gives the eye image paths.
    """
    if len(fields) != len(info.header):
        return None
    return fields[info.image_index].strip(), fields[info.text_index]


def eye_fields(info: CsvInfo, fields: Sequence[str]) -> tuple[str, ...]:
    """The (stripped) left and right image paths of a patient row, ``""`` for a missing eye."""
    return tuple(fields[i].strip() if i < len(fields) else "" for i in info.eye_indices)


def normalize_path(name: str) -> str:
    """The spelling of a relative image path that duplicates, splits and shards are judged on:
    ``./a.png``, ``a.png`` and ``x/../a.png`` are one file."""
    return posixpath.normpath(name) if name else name


# --- captions -----------------------------------------------------------------------------------

def normalize_caption(text: str) -> str:
    """The text normalisation cn_clip applies before tokenising (lower case, straight quotes)."""
    return text.lower().replace("\u201c", '"').replace("\u201d", '"')


@lru_cache(maxsize=65536)
def caption_tokens(text: str) -> int:
    """Word-piece tokens in a caption (without ``[CLS]``/``[SEP]``), by cn_clip's vocabulary."""
    from ..model.tokenizer import wordpiece

    return len(wordpiece().tokenize(normalize_caption(text)))
