"""Output folders that commands write: one writer at a time, and deletion only of what a command
can prove it wrote.

- :func:`output_lock` holds an exclusive ``fcntl`` lock on ``<folder>/.vclip.lock`` for as long as a
  command writes the folder; a second command that tries is refused at once with one line (the
  lock is the kernel's, so a killed writer never leaves a stale lock behind).
- :func:`write_owner_marker` records, inside a folder, which kind of artefact (``lmdb-build``,
  ``bundle``, ``eval-report``, ``training-run``, ...) a command wrote there; :func:`prove_owned`
  is the check every ``--overwrite``/``--force`` runs before it removes anything.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Iterator

from .errors import UserError

LOCK_FILE = ".vclip.lock"
OWNER_FILE = ".vclip-owner.json"


@contextlib.contextmanager
def output_lock(folder: str | Path, what: str = "output folder") -> Iterator[Path]:
    """Hold the folder's write lock (the folder is created if needed); one line if another command has it."""
    import fcntl

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except FileExistsError:
        raise UserError(f"{folder}: exists and is not a folder; choose another {what}") from None
    except OSError as exc:
        raise UserError(f"{folder}: cannot write the {what} ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"{folder}: another command is writing this {what} now; wait for it to finish "
                                "or choose another folder") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield folder
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write_owner_marker(folder: str | Path, kind: str, **details: object) -> Path:
    """Record in ``folder`` that a command of ``kind`` wrote it (small JSON, written atomically)."""
    folder = Path(folder)
    path = folder / OWNER_FILE
    tmp = folder / f".{OWNER_FILE}.tmp"
    tmp.write_text(json.dumps({"kind": kind, **details}, ensure_ascii=False, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


def owner_kind(folder: str | Path) -> str | None:
    """The kind recorded by :func:`write_owner_marker`, or ``None`` (no marker, or not ours)."""
    path = Path(folder) / OWNER_FILE
    try:
        if not path.is_file() or path.stat().st_size > 65536:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def prove_owned(folder: str | Path, kind: str, flag: str = "--overwrite") -> None:
    """Raise a one-line :class:`UserError` unless ``folder`` is empty or holds a ``kind`` marker.

    Commands call this before replacing or removing an output folder; a folder that merely looks
    like one of ours (the right subfolder names) is never enough.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder; {flag} replaces only a {kind} folder")
    if owner_kind(folder) == kind:
        return
    if not any(p.name not in (LOCK_FILE,) for p in folder.iterdir()):
        return
    raise UserError(f"{folder}: not a {kind} written by this toolkit (no {OWNER_FILE} marker); {flag} "
                    "removes only its own output: choose another folder or remove it yourself")


__all__ = ["LOCK_FILE", "OWNER_FILE", "output_lock", "owner_kind", "prove_owned", "write_owner_marker"]
