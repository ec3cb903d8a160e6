"""The previous release's import paths still work for one release, as the very same modules."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from cn_clip_ext.compat import ALIASES


@pytest.mark.parametrize("old, new", sorted(ALIASES.items()))
def test_old_path_is_the_new_module_with_a_warning(old: str, new: str) -> None:
    code = (f"import warnings, importlib; warnings.simplefilter('always')\n"
            f"with warnings.catch_warnings(record=True) as caught:\n"
            f"    old = importlib.import_module({old!r})\n"
            f"new = importlib.import_module({new!r})\n"
            f"assert old is new, (old, new)\n"
            f"assert any(issubclass(w.category, DeprecationWarning) and {new!r} in str(w.message) for w in caught)\n")
    if old != "cn_clip_ext.data.lmdb_reader":  # one full subprocess is enough to prove a fresh interpreter
        importlib.import_module(new)
        with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
            sys.modules.pop(old, None)
            module = importlib.import_module(old)
        assert module is importlib.import_module(new)
        return
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_from_import_of_an_old_package_member() -> None:
    sys.modules.pop("cn_clip_ext.data.validate", None)
    parent = sys.modules.get("cn_clip_ext.data")
    if parent is not None and hasattr(parent, "validate"):
        delattr(parent, "validate")  # an earlier import bound it on the package
    with pytest.warns(DeprecationWarning):
        from cn_clip_ext.data import validate  # noqa: PLC0415
    from cn_clip_ext.lmdb import validate as new_validate

    assert validate is new_validate
    assert validate.check_image is new_validate.check_image


def test_unknown_old_name_still_fails() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("cn_clip_ext.data.no_such_module")


FORMER_VALIDATE_NAMES = {
    "MALFORMED_ROW", "EMPTY_FILE_NAME", "EMPTY_CAPTION", "DUPLICATE_FILE_NAME", "MISSING_FILE", "UNREADABLE_FILE",
    "ZERO_BYTE", "TRUNCATED", "UNDECODABLE", "WRONG_MODE", "TOO_LARGE", "NOT_A_FILE", "FILE_TOO_BIG", "OUTSIDE_ROOT",
    "EMPTY_PATIENT_ID", "DUPLICATE_PATIENT_ID", "NO_EYE_IMAGE", "NO_USABLE_EYE", "REASONS", "PAIRS_KIND",
    "PATIENTS_KIND", "KINDS", "SYNFUNDUS_CSV", "SYNFUNDUS_IMAGES", "SYNFUNDUS_IMAGE_COL", "SYNFUNDUS_TEXT_COL",
    "SYNFUNDUS_NOT_LABELS", "RESIZE_FILTER", "REDUCE_SOFTEN_SIGMA", "InputSpec", "CsvInfo", "scan_csv",
    "detect_kind", "iter_rows", "row_fields", "eye_fields", "normalize_caption", "caption_tokens", "ImageOptions",
    "RowReject", "MAX_IMAGE_PIXELS", "too_many_pixels", "image_dimensions", "decode_stored_value",
    "check_stored_image", "check_image", "encode_image", "read_file", "normalize_path", "escapes_root",
    "outside_root", "process_image",
}
"""The public names ``cn_clip_ext.lmdb.validate`` held before its checks moved to ``rows``, ``images`` and
``layouts``."""


def test_every_former_validate_name_resolves_to_its_new_home_with_a_warning() -> None:
    from cn_clip_ext.lmdb import validate  # noqa: PLC0415

    assert set(validate.MOVED) == FORMER_VALIDATE_NAMES == set(validate.__all__)
    for old, (module, new) in validate.MOVED.items():
        with pytest.warns(DeprecationWarning, match=rf"validate\.{old} is now {module.__name__}\.{new};"):
            got = getattr(validate, old)
        assert got is getattr(module, new)
    with pytest.warns(DeprecationWarning):
        assert validate.SYNFUNDUS_IMAGES == "Fundus" and validate.SYNFUNDUS_CSV == "SynFundus-1M_annotation.csv"
    with pytest.warns(DeprecationWarning):
        assert validate.SYNFUNDUS_NOT_LABELS == ("file_md5", "file_name", "diagnosticAdvice")
    with pytest.warns(DeprecationWarning):
        spec = validate.InputSpec.synfundus("/data/syn")
    assert (str(spec.csv_path), str(spec.image_root)) == ("/data/syn/SynFundus-1M_annotation.csv", "/data/syn/Fundus")
    assert (spec.image_col, spec.text_col) == ("file_name", "diagnosticAdvice")
    with pytest.raises(AttributeError, match="no_such_name"):
        validate.no_such_name  # noqa: B018
