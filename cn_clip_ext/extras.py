"""Optional dependencies ("extras") and the one line a user sees when one is missing.

The core install (``pip install visionclip-cn``) is what :func:`~cn_clip_ext.model.pretrained.load_pretrained`
and ``vclip-embed`` need. Everything else is an extra, installed by name, e.g.
``pip install 'visionclip-cn[eval]'``. Every import of an extra-only package in the library and the
programs goes through :func:`require` (the command cannot go on without it) or :func:`optional` (the
command goes on without it and logs what it skipped), so a missing package is one line naming the
extra, never a traceback::

    sklearn = require("sklearn", extra="eval", purpose="the linear probe")
"""
from __future__ import annotations

import importlib
import logging
from types import MappingProxyType, ModuleType

from .errors import UserError, first_line

logger = logging.getLogger(__name__)

PROJECT = "visionclip-cn"
"""The distribution name users install."""

EXTRAS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({
    "train": ("tensorboard", "matplotlib"),
    "eval": ("scikit-learn", "xlrd", "openpyxl"),
    "export": ("onnx", "onnxruntime", "tokenizers"),
    "audit": ("imagehash", "faiss-cpu", "matplotlib"),
    "fast-tokenizer": ("transformers",),
    "open_clip": ("open-clip-torch", "transformers"),  # the baselines: open_clip and FLAIR families
})
"""Extra -> the distributions it installs (``pyproject.toml`` holds the same lists with their floors;
a test keeps the two equal)."""

DISTRIBUTIONS: MappingProxyType[str, str] = MappingProxyType({
    "sklearn": "scikit-learn",
    "faiss": "faiss-cpu",
    "open_clip": "open-clip-torch",
})
"""Import name -> distribution name, where the two differ."""


class MissingExtraError(UserError, ImportError):
    """An optional package a command needs is not installed (a :class:`UserError`: one line, exit 2)."""

    def __init__(self, message: str, module: str, extra: str):
        super().__init__(message)
        self.module, self.extra = module, extra


def install_hint(extra: str) -> str:
    """``pip install 'visionclip-cn[EXTRA]'``."""
    return f"pip install '{PROJECT}[{extra}]'"


def distribution_of(module: str) -> str:
    """The distribution that provides import name ``module``."""
    return DISTRIBUTIONS.get(module) or DISTRIBUTIONS.get(module.split(".")[0]) or module.split(".")[0]


def _check_extra(module: str, extra: str) -> str:
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; the extras are {sorted(EXTRAS)}")
    dist = distribution_of(module)
    if dist not in EXTRAS[extra]:
        raise ValueError(f"{module} ({dist}) is not part of the {extra!r} extra")
    return dist


def _absent(module: str, exc: ImportError) -> bool:
    """Whether ``exc`` says ``module`` (or a package above it) is not installed, rather than that it is
    installed and broken (one of its own imports failing)."""
    missing = exc.name or ""
    return bool(missing) and (module == missing or module.startswith(missing + "."))


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """Import and return ``module``, or raise :class:`MissingExtraError` in one line naming ``extra``.

    ``purpose`` says what needs it ("the linear probe", "path/x.xls: reading .xls files"); an installed
    but broken package is reported in one line too, with its own first line of error.
    """
    dist = _check_extra(module, extra)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = purpose or module
        if _absent(module, exc):
            raise MissingExtraError(f"{what} needs {dist}, which is not installed: {install_hint(extra)}",
                                    module, extra) from None
        raise MissingExtraError(f"{what} needs {dist}, which is installed but does not import "
                                f"({first_line(exc)}); reinstall it: {install_hint(extra)}", module, extra) from None


def optional(module: str, extra: str, skipped: str) -> ModuleType | None:
    """``module``, or ``None`` after one warning that ``skipped`` (what the command leaves out) and how
    to install ``extra``. For packages a command can do without (TensorBoard scalars, a faster search)."""
    dist = _check_extra(module, extra)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        reason = "is not installed" if _absent(module, exc) else f"does not import ({first_line(exc)})"
        logger.warning("%s %s: %s (%s)", dist, reason, skipped, install_hint(extra))
        return None


__all__ = ["DISTRIBUTIONS", "EXTRAS", "MissingExtraError", "PROJECT", "distribution_of", "install_hint",
           "optional", "require"]
