"""Errors that mean "the user's input is wrong" (reported in one line, never a traceback)."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from a user: a missing file, a bad row, an impossible option.

    The message must name the file (and row, where there is one) and say what is wrong.
    """


def where(path: object, row: int | None = None) -> str:
    """``"path"`` or ``"path, row N"``, the prefix every bad-input message starts with."""
    return f"{path}" if row is None else f"{path}, row {row}"
