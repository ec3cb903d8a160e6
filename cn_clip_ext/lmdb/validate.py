"""The LMDB build's input checks under their former module path, kept for one release.

They now live by subject: the annotation CSV, its rows and captions, the record kinds and the reject
reasons in :mod:`.rows`; image files (read, decoded, checked, re-encoded) and stored image values in
:mod:`.images`; the SynFundus-1M file and column names in :mod:`cn_clip_ext.layouts`. Each old name
still resolves here to the very same object, with a :class:`DeprecationWarning` naming its new home.
(``cn_clip_ext.data.validate``, the path before this one, leads here through :mod:`cn_clip_ext.compat`.)
"""
from __future__ import annotations

import warnings
from types import ModuleType

from .. import layouts
from . import images, rows

_ROWS = (
    "MALFORMED_ROW", "EMPTY_FILE_NAME", "EMPTY_CAPTION", "DUPLICATE_FILE_NAME", "MISSING_FILE", "UNREADABLE_FILE",
    "ZERO_BYTE", "TRUNCATED", "UNDECODABLE", "WRONG_MODE", "TOO_LARGE", "NOT_A_FILE", "FILE_TOO_BIG", "OUTSIDE_ROOT",
    "EMPTY_PATIENT_ID", "DUPLICATE_PATIENT_ID", "NO_EYE_IMAGE", "NO_USABLE_EYE", "REASONS", "RowReject",
    "PAIRS_KIND", "PATIENTS_KIND", "KINDS", "InputSpec", "CsvInfo", "scan_csv", "detect_kind", "iter_rows",
    "row_fields", "eye_fields", "normalize_path", "normalize_caption", "caption_tokens",
)
_IMAGES = (
    "RESIZE_FILTER", "REDUCE_SOFTEN_SIGMA", "ImageOptions", "MAX_IMAGE_PIXELS", "too_many_pixels",
    "image_dimensions", "decode_stored_value", "check_stored_image", "check_image", "encode_image", "read_file",
    "escapes_root", "outside_root", "process_image",
)
_LAYOUTS = ("SYNFUNDUS_CSV", "SYNFUNDUS_IMAGES", "SYNFUNDUS_IMAGE_COL", "SYNFUNDUS_TEXT_COL", "SYNFUNDUS_NOT_LABELS")
MOVED: dict[str, tuple[ModuleType, str]] = {
    **{name: (rows, name) for name in _ROWS},
    **{name: (images, name) for name in _IMAGES},
    **{name: (layouts, name) for name in _LAYOUTS},
    "SYNFUNDUS_IMAGES": (layouts, "SYNFUNDUS_IMAGE_DIR"),
}
"""Old name -> (the module that now holds it, its name there)."""
__all__ = sorted(MOVED)


def __getattr__(name: str) -> object:
    try:
        module, new = MOVED[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    warnings.warn(f"{__name__}.{name} is now {module.__name__}.{new}; the old path goes in the next release",
                  DeprecationWarning, stacklevel=2)
    return getattr(module, new)


def __dir__() -> list[str]:
    return [*__all__, "MOVED"]
