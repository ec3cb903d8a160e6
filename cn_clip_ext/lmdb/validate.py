"""Input checks for the LMDB build: the annotation CSV, each image, each caption.

Whole-file problems (unreadable CSV, a missing column) raise :class:`UserError`. Row problems
never raise: they come back as one of the :data:`REASONS` and the row goes to the rejects table.
"""
from __future__ import annotations

import base64
import codecs
import csv
import io
import itertools
import math
import os
import posixpath
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError, first_line, where
from ..files import (
    DEFAULT_MAX_INPUT_BYTES, FILE_EMPTY, FILE_MISSING, FILE_NOT_REGULAR, FILE_TOO_LARGE, InputFileError,
    check_input_file, read_input_file,
)
from ..model.png import PNG_SIGNATURE, fast_png, png_bit_depth
from ..layouts import PATIENT_COLUMNS

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

# Record kinds: one image and its caption per row, or one patient's two eyes and report per row.
PAIRS_KIND, PATIENTS_KIND = "pairs", "patients"
KINDS: tuple[str, ...] = (PAIRS_KIND, PATIENTS_KIND)

SYNFUNDUS_CSV = "SynFundus-1M_annotation.csv"
SYNFUNDUS_IMAGES = "Fundus"
SYNFUNDUS_IMAGE_COL = "file_name"
SYNFUNDUS_TEXT_COL = "diagnosticAdvice"
SYNFUNDUS_NOT_LABELS = ("file_md5", "file_name", "diagnosticAdvice")

_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
RESIZE_FILTER = Image.BILINEAR
"""Antialiased triangle filter for what is left of a shrink after the integer box reduction
(:func:`encode_image`); training resamples the stored image again anyway."""
REDUCE_SOFTEN_SIGMA = 0.5
"""Gaussian sigma (pixels) after an integer box reduction: the response of a triangle filter."""
_SIGNATURES = (PNG_SIGNATURE, b"\xff\xd8\xff")


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
        return cls(root / SYNFUNDUS_CSV, root / SYNFUNDUS_IMAGES, not_labels=SYNFUNDUS_NOT_LABELS)


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


# --- captions -----------------------------------------------------------------------------------

def normalize_caption(text: str) -> str:
    """The text normalisation cn_clip applies before tokenising (lower case, straight quotes)."""
    return text.lower().replace("\u201c", '"').replace("\u201d", '"')


@lru_cache(maxsize=65536)
def caption_tokens(text: str) -> int:
    """Word-piece tokens in a caption (without ``[CLS]``/``[SEP]``), by cn_clip's vocabulary."""
    from ..model.tokenizer import wordpiece

    return len(wordpiece().tokenize(normalize_caption(text)))


# --- images -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageOptions:
    """How stored images are re-encoded."""

    size: int = 256
    """Longest side after resizing (only ever shrinks); 0 keeps the original size."""
    format: str = "jpeg"
    """``"jpeg"`` or ``"png"`` (lossless)."""
    quality: int = 95
    """JPEG quality."""
    convert_modes: bool = False
    """Convert grey, palette, RGBA and 16-bit images to 8-bit RGB instead of rejecting them."""
    max_bytes: int = DEFAULT_MAX_INPUT_BYTES
    """Image files larger than this are rejected (:data:`FILE_TOO_BIG`) before they are read."""

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"the image size limit must be >= 1 byte, got {self.max_bytes}")
        if self.format not in ("jpeg", "png"):
            raise ValueError(f"image format must be 'jpeg' or 'png', got {self.format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {self.quality}")
        if self.size < 0:
            raise ValueError(f"image size must be >= 0, got {self.size}")


class RowReject(Exception):
    """A row-level problem: ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


MAX_IMAGE_PIXELS = 1 << 26
"""The most pixels an image may declare (67 M, e.g. 8192 x 8192; fundus cameras give at most about
24 M): a larger header is refused before any pixel is decoded, by the build and by the readers."""


def too_many_pixels(width: int, height: int) -> str | None:
    """Why ``width`` x ``height`` is refused (above :data:`MAX_IMAGE_PIXELS`, or not positive), else ``None``."""
    if width < 1 or height < 1:
        return f"declares {width} x {height} pixels"
    if width * height > MAX_IMAGE_PIXELS:
        return f"declares {width} x {height} pixels, above the limit of {MAX_IMAGE_PIXELS}"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
            if i + 9 > n:
                return None
            height, width = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            return (width, height) if height else None  # 0: the height comes later (DNL), ask PIL
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def image_dimensions(data: bytes) -> tuple[int, int]:
    """``(width, height)`` an encoded image declares, read from its header without decoding pixels
    (PNG and JPEG directly; any other format through PIL's lazy open). Raises ``ValueError`` for
    bytes that are not an image."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:3] == b"\xff\xd8\xff":
        size = _jpeg_size(data)
        if size is not None:
            return size
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Image.DecompressionBombError:
        return (MAX_IMAGE_PIXELS + 1, 1)  # PIL read the header and found it beyond its own limit
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for garbage
        raise ValueError(f"not a recognised image ({type(exc).__name__})") from None


def decode_stored_value(raw: bytes) -> bytes:
    """The image bytes of an ``imgs`` value: URL-safe base64 (as cn_clip writes and reads it), checked
    strictly (``ValueError`` for other characters; :func:`base64.urlsafe_b64decode` would skip them)."""
    import binascii

    try:
        return base64.b64decode(bytes(raw), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not URL-safe base64") from None


def check_stored_image(raw: bytes, decode: bool = True) -> str | None:
    """What is wrong with an ``imgs`` value (not base64, not an image, a decompression bomb, with
    ``decode`` also: its pixels do not decode), or ``None``. Nothing of the value is quoted."""
    try:
        data = decode_stored_value(raw)
        bomb = too_many_pixels(*image_dimensions(data))
    except ValueError as exc:
        return f"is {exc}"
    if bomb:
        return bomb
    if decode:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for a corrupt image
            return f"does not decode ({type(exc).__name__})"
    return None


def _decode(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))  # header, chunk checks and the decompression-bomb limit
        bomb = too_many_pixels(*image.size)
        if bomb:
            raise RowReject(TOO_LARGE, f"image {bomb}")
        fast = fast_png(image, data)
        if fast is not None:
            return fast
        image.load()
    except Image.DecompressionBombError as exc:
        raise RowReject(TOO_LARGE, str(exc)) from None
    except UnidentifiedImageError:
        if data.startswith(_SIGNATURES):  # a known header, cut short
            raise RowReject(TRUNCATED, "image header is incomplete") from None
        raise RowReject(UNDECODABLE, "not a recognised image format") from None
    except EOFError as exc:
        raise RowReject(TRUNCATED, str(exc) or "unexpected end of file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        message = str(exc)
        reason = TRUNCATED if "truncat" in message.lower() else UNDECODABLE
        raise RowReject(reason, message) from None
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        arr = arr / 256.0 if arr.max(initial=0) > 255 else arr
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def check_image(data: bytes, options: ImageOptions) -> Image.Image:
    """Decode and check one image file's bytes; an 8-bit RGB image or :class:`RowReject`."""
    if not data:
        raise RowReject(ZERO_BYTE, "empty file")
    image = _decode(data)
    depth = png_bit_depth(data)
    if image.mode == "RGB" and depth == 8:
        return image
    if not options.convert_modes:
        detail = f"{image.mode}, {depth}-bit" if depth != 8 else image.mode
        raise RowReject(WRONG_MODE, f"mode {detail}; expected 8-bit RGB")
    return _to_rgb(image)


def _soften(image: Image.Image) -> Image.Image:
    import cv2

    arr = np.asarray(image)
    return Image.fromarray(cv2.GaussianBlur(arr, (3, 3), REDUCE_SOFTEN_SIGMA), image.mode)


def encode_image(image: Image.Image, options: ImageOptions) -> bytes:
    """Resize (longest side to ``options.size``, aspect kept) and re-encode.

    A shrink first box-reduces by its whole factor (512->256 is one 2x2 average), softened by a
    3x3 Gaussian (:data:`REDUCE_SOFTEN_SIGMA`) so that, like an antialiased triangle filter, it
    does not pass pixel noise on to the JPEG (about a fifth fewer bytes) at a third of that
    filter's cost; then :data:`RESIZE_FILTER` resamples the remaining factor below two, if any.
    """
    w, h = image.size
    if options.size and max(w, h) > options.size:
        scale = options.size / max(w, h)
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
        factor = int(max(w, h) / options.size)
        if factor >= 2:
            image = _soften(image.reduce(factor))
        if image.size != target:
            image = image.resize(target, RESIZE_FILTER)
    buf = io.BytesIO()
    if options.format == "jpeg":
        image.save(buf, "JPEG", quality=options.quality)
    else:
        image.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


_FILE_REASONS = {FILE_MISSING: MISSING_FILE, FILE_NOT_REGULAR: NOT_A_FILE, FILE_EMPTY: ZERO_BYTE,
                 FILE_TOO_LARGE: FILE_TOO_BIG}


def read_file(path: Path, max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES) -> bytes:
    """An image file's bytes (:func:`~cn_clip_ext.files.read_input_file`: a FIFO, device or folder is
    refused at once, a file above ``max_bytes`` before it is read), or :class:`RowReject`."""
    try:
        return read_input_file(path, "image", max_bytes)
    except InputFileError as exc:
        raise RowReject(_FILE_REASONS.get(exc.problem, UNREADABLE_FILE), str(exc)) from None


def normalize_path(name: str) -> str:
    """The spelling of a relative image path that duplicates, splits and shards are judged on:
    ``./a.png``, ``a.png`` and ``x/../a.png`` are one file."""
    return posixpath.normpath(name) if name else name


def escapes_root(name: str) -> str | None:
    """Why the CSV path ``name`` leaves its image root by its spelling alone (absolute, or ``..``
    above the root), else ``None``; :func:`outside_root` also follows symlinks."""
    if os.path.isabs(name):
        return "absolute path; paths must be relative to the image root"
    norm = normalize_path(name)
    if norm == ".." or norm.startswith("../"):
        return "path leaves the image root through '..'"
    return None


def outside_root(path: Path, root: Path) -> str | None:
    """Why the file ``path`` is not inside the folder ``root`` once symlinks are followed, else ``None``."""
    try:
        real = Path(os.path.realpath(path))
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an odd name
        return "path cannot be resolved"
    if not real.is_relative_to(Path(os.path.realpath(root))):
        return "path leaves the image root through a symlink"
    return None


def process_image(path: Path, options: ImageOptions, root: Path | None = None, name: str = "") -> bytes:
    """File -> base64 (URL-safe, as cn_clip's LMDBDataset decodes) of the re-encoded image. With
    ``root`` (the image root) and ``name`` (the path as the CSV spells it), a file outside ``root``
    (absolute, ``..``, or through a symlink) is rejected unread."""
    if root is not None:
        escaped = escapes_root(name) or outside_root(path, root)
        if escaped:
            raise RowReject(OUTSIDE_ROOT, escaped)
    image = check_image(read_file(path, options.max_bytes), options)
    return base64.urlsafe_b64encode(encode_image(image, options))
