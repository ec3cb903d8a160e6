"""Reading the small structured files users write: prompt sets, dataset tables, training configs."""
from __future__ import annotations

import json
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
