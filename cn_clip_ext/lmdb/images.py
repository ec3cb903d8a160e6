"""The image files of an LMDB build: read (a FIFO, device or oversized file refused unread, a path
outside the image root rejected), decoded and checked (8-bit RGB, no truncation, no decompression
bomb), converted where asked, resized and re-encoded; and the checks on a stored ``imgs`` value the
reader and ``--verify`` make. A bad image is a :class:`~.rows.RowReject`, never an exception out.
"""
from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..files import (
    DEFAULT_MAX_INPUT_BYTES, FILE_EMPTY, FILE_MISSING, FILE_NOT_REGULAR, FILE_TOO_LARGE, InputFileError,
    read_input_file,
)
from ..model.png import PNG_SIGNATURE, fast_png, png_bit_depth
from .rows import (
    FILE_TOO_BIG, MISSING_FILE, NOT_A_FILE, OUTSIDE_ROOT, TOO_LARGE, TRUNCATED, UNDECODABLE, UNREADABLE_FILE,
    WRONG_MODE, ZERO_BYTE, RowReject, normalize_path,
)

RESIZE_FILTER = Image.BILINEAR
"""Antialiased triangle filter for what is left of a shrink after the integer box reduction
(:func:`encode_image`); training resamples the stored image again anyway."""
REDUCE_SOFTEN_SIGMA = 0.5
"""Gaussian sigma (pixels) after an integer box reduction: the response of a triangle filter."""
_SIGNATURES = (PNG_SIGNATURE, b"\xff\xd8\xff")


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
