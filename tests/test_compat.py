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
