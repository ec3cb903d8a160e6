"""Errors that mean "the user's input is wrong" (reported in one line, never a traceback)."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from a user: a missing file, a bad row, an impossible option.

    The message must name the file (and row, where there is one) and say what is wrong.
    """


def where(path: object, row: int | None = None) -> str:
    """``"path"`` or ``"path, row N"``, the prefix every bad-input message starts with."""
    return f"{path}" if row is None else f"{path}, row {row}"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message (its type name when it has none), at most ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def describe(exc: BaseException) -> str:
    """``"Type: first line of the message"``, or ``"Type"`` for an exception without a message."""
    if isinstance(exc, UserError):  # already written for the user, naming the file
        return first_line(exc)
    name = type(exc).__name__
    return f"{name}: {first_line(exc)}" if str(exc).strip() else name


def excerpt(value: object, limit: int = 60) -> str:
    """A short ``repr`` of ``value`` for an error message: nested containers and long strings are cut
    (:mod:`reprlib`, which never walks more than a few items per level), then at most ``limit``
    characters. A message never formats a whole parsed structure, which may be huge or alias-shared."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 2, 4, 4, 4, 4
    r.maxstring, r.maxother, r.maxlong = limit, limit, 40
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
