"""Label tables as published: CSV (UTF-8 or GBK), legacy Excel ``.xls`` (xlrd) and ``.xlsx`` (openpyxl).

Every reader returns the header and the rows as ``{column: text}``; numbers that Excel stores
as floats (``1.0``) come back as ``"1"``, empty cells as ``""``, and headers are stripped of
surrounding spaces (MESSIDOR's ``"Risk of macular edema "`` has a trailing one).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import UserError, first_line
from ..extras import require
from ..files import check_input_file

SHEET_SUFFIXES = (".csv", ".xls", ".xlsx")
Rows = tuple[list[str], list[dict[str, str]]]


def cell_text(value: Any) -> str:
    """A cell as text: integral floats without ``.0``, ``None`` as ``""``."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text[:-2] if text.endswith(".0") and text[:-2].lstrip("-").isdigit() else text


def csv_text(path: Path) -> str:
    """The text of a CSV in UTF-8 (with or without BOM) or GBK; a FIFO or device is refused unopened."""
    check_input_file(path, "table")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for encoding in ("utf-8-sig", "gbk"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise UserError(f"{path}: not UTF-8 or GBK text")


def read_csv_rows(path: Path) -> Rows:
    """Rows of a CSV as dictionaries (see :func:`csv_text`); an unterminated quote is an error (not one
    field swallowing the rest of the file)."""
    reader = csv.DictReader(io.StringIO(csv_text(path)), strict=True)
    try:
        return list(reader.fieldnames or []), list(reader)
    except csv.Error as exc:
        raise UserError(f"{path}: not a readable CSV table ({first_line(exc)}; an unterminated quote?)") from None


def _rows_of(path: Path, grid: Iterable[Sequence[Any]]) -> Rows:
    lines = iter(grid)
    header = [cell_text(v) for v in next(lines, [])]
    if not any(header):
        raise UserError(f"{path}: the first sheet has no header row")
    rows = []
    for line in lines:
        cells = [cell_text(v) for v in line]
        if not any(cells):
            rows.append({})  # keep row numbers aligned with the file's
            continue
        rows.append({h: (cells[i] if i < len(cells) else "") for i, h in enumerate(header) if h})
    return [h for h in header if h], rows


def _read_xls(path: Path, rows_of=_rows_of) -> Rows:
    xlrd = require("xlrd", extra="eval", purpose=f"{path}: reading .xls files")
    try:
        sheet = xlrd.open_workbook(str(path)).sheet_by_index(0)
    except Exception as exc:  # xlrd raises its own and struct errors for damaged files
        raise UserError(f"{path}: not a readable .xls file ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    return rows_of(path, (sheet.row_values(r) for r in range(sheet.nrows)))


def _read_xlsx(path: Path, rows_of=_rows_of) -> Rows:
    openpyxl = require("openpyxl", extra="eval", purpose=f"{path}: reading .xlsx files")
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # zipfile, KeyError and openpyxl's own errors for damaged files
        raise UserError(f"{path}: not a readable .xlsx file ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    try:
        return rows_of(path, book.worksheets[0].iter_rows(values_only=True))
    finally:
        book.close()


def read_sheet(path: str | Path) -> Rows:
    """Header and rows of a ``.csv``, ``.xls`` or ``.xlsx`` label table (the first sheet)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header, rows = read_csv_rows(path)
        return ([h.strip() for h in header],
                [{(k or "").strip(): cell_text(v) for k, v in row.items()} for row in rows])
    if suffix == ".xls":
        return _read_xls(path)
    if suffix == ".xlsx":
        return _read_xlsx(path)
    raise UserError(f"{path}: unsupported table format (expected one of {SHEET_SUFFIXES})")


def read_grid(path: str | Path) -> list[list[str]]:
    """Every row of a ``.csv``, ``.xls`` or ``.xlsx`` table (its first sheet) as cell texts, with
    no row taken as the header (for sheets whose header is not their first row, as PAPILA's)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            return [[cell_text(v) for v in line] for line in csv.reader(io.StringIO(csv_text(path)), strict=True)]
        except csv.Error as exc:
            raise UserError(f"{path}: not a readable CSV table ({first_line(exc)}; an unterminated quote?)") from None
    grid: list[list[str]] = []

    def collect(_: Path, lines: Iterable[Sequence[Any]]) -> Rows:
        grid.extend([cell_text(v) for v in line] for line in lines)
        return [], []

    if suffix == ".xls":
        _read_xls(path, collect)
    elif suffix == ".xlsx":
        _read_xlsx(path, collect)
    else:
        raise UserError(f"{path}: unsupported table format (expected one of {SHEET_SUFFIXES})")
    return grid


def find_column(columns: Sequence[str], *names: str) -> str | None:
    """The first of ``names`` present in ``columns``, ignoring case and spaces."""
    def norm(s: str) -> str:
        return "".join(s.split()).lower()

    present = {norm(c): c for c in columns}
    for name in names:
        if norm(name) in present:
            return present[norm(name)]
    return None
