"""Reading the files users give: the small structured files they write (prompt sets, dataset tables,
training configs) and the input files a command opens (images, tables), checked before reading."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .errors import UserError


def read_structured(path: str | Path, what: str | None = None) -> object:
    """Parse a ``.yaml``/``.yml`` or ``.json`` file; a one-line :class:`UserError` otherwise.

    ``what`` (e.g. ``"bundle config"``) names the file's role in those errors.
    """
    path = Path(path)
    kind = path.suffix.lstrip(".").upper() or "JSON"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {what or 'file'} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UserError(f"{path}: not a readable {kind} {what or 'file'} ({reason})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as exc:  # yaml and json raise different types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if what:
            raise UserError(f"{path}: not a readable {kind} {what} ({first})") from None
        raise UserError(f"{path}: not valid {kind} ({first})") from None


def read_text_lines(path: str | Path, what: str) -> list[str]:
    """Lines of a UTF-8 text file (a BOM is allowed); ``what`` names the file in one-line errors."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable UTF-8 {what} ({exc})") from None


DEFAULT_MAX_INPUT_BYTES = 256 * 1024 * 1024
"""The largest single input file read by default (a fundus photograph is a few MiB; 256 MiB leaves room
for uncompressed TIFFs and stops a stray multi-GB file from being read into memory)."""


def check_input_file(path: str | Path, what: str = "file", max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES) -> int:
    """The size of ``path`` after checking, without opening it, that it is a regular file of at most
    ``max_bytes`` (``None``: no bound) and not empty.

    A FIFO, device, socket or folder is refused at once (opening a FIFO would block forever), with a
    one-line :class:`UserError` naming the path and the reason; so is a missing file.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise UserError(f"{path}: {what} is {kind}, not a regular file")
    if st.st_size == 0:
        raise UserError(f"{path}: empty file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UserError(f"{path}: {what} is {st.st_size} bytes, above the limit of {max_bytes}")
    return st.st_size
