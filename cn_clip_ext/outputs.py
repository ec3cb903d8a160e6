"""Output folders that commands write: one writer at a time, and deletion only of what a command
can prove it wrote.

- :func:`output_lock` holds an exclusive ``fcntl.lockf`` lock on ``<folder>/.vclip.lock`` for as long as a
  command writes the folder; a second command that tries is refused at once with one line (the
  lock is the kernel's, so a killed writer never leaves a stale lock behind).
- :func:`write_owner_marker` records, inside a folder, which kind of artefact (``lmdb-build``,
  ``bundle``, ``eval-report``, ``training-run``, ...) a command wrote there; :func:`prove_owned`
  is the check every ``--overwrite``/``--force`` runs before it removes anything.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from .errors import UserError, first_line

LOCK_FILE = ".vclip.lock"
OWNER_FILE = ".vclip-owner.json"


_HELD: set[str] = set()
"""Lock files this process holds (POSIX locks are per process: a second lock here must be refused by hand)."""


@contextlib.contextmanager
def output_lock(folder: str | Path, what: str = "output folder", remove: bool = False) -> Iterator[Path]:
    """Hold the folder's write lock (the folder is created if needed); one line if another command has it.

    The lock is a POSIX record lock (``fcntl.lockf``): the kernel drops it when the process ends, and
    unlike ``flock`` it is not inherited by forked workers, so a killed command whose workers are
    still exiting does not block the next run (and it works on NFS). With ``remove`` the lock file is
    deleted on the way out (for commands whose folder must hold only their outputs); a command that
    locked a file removed meanwhile notices (the path no longer names it) and tries again.
    """
    import fcntl

    folder = Path(folder)
    busy = UserError(f"{folder}: another command is writing this {what} now; wait for it to finish "
                     "or choose another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{folder}: exists and is not a folder; choose another {what}") from None
    except OSError as exc:
        raise write_failure(exc, folder, what) from None
    path = folder / LOCK_FILE
    key = str(path.resolve())
    if key in _HELD:
        raise busy
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise write_failure(exc, folder, what) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise busy from None
            raise write_failure(exc, folder, what) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file another command has just removed: lock the new one
    else:
        raise busy
    _HELD.add(key)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield folder
    finally:
        _HELD.discard(key)
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(path)
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


def owner_record(folder: str | Path) -> dict | None:
    """The whole record :func:`write_owner_marker` left in ``folder`` (``None``: none, or unreadable)."""
    path = Path(folder) / OWNER_FILE
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > (1 << 22):
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def recorded_files(folder: str | Path, kind: str) -> frozenset[str]:
    """The file names that an earlier run of ``kind`` recorded writing into ``folder`` (its manifest)."""
    record = owner_record(folder)
    if record is None or record.get("kind") != kind or not isinstance(record.get("files"), list):
        return frozenset()
    return frozenset(n for n in record["files"] if isinstance(n, str) and n and "/" not in n and n not in ("..", "."))


def unrecorded_outputs(folder: str | Path, kind: str, patterns: Sequence[str]) -> list[Path]:
    """Files in ``folder`` named like a ``kind`` run's outputs (``patterns``, shell-style) that no
    manifest of an earlier run lists: a run must not overwrite or mix with them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    mine = recorded_files(folder, kind)
    return sorted(p for p in folder.iterdir() if p.name not in mine
                  and any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns))


def check_replaceable(folder: str | Path, kind: str, patterns: Sequence[str], flag: str = "--out") -> None:
    """One line unless a ``kind`` run may write ``folder``: it is absent, a folder, and holds no
    ``kind``-named output that an earlier run's manifest does not list."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder; choose another {flag}")
    other = owner_kind(folder)
    if other is not None and other != kind:
        raise UserError(f"{folder}: holds a {other} written by another command; choose another {flag}")
    foreign = unrecorded_outputs(folder, kind, patterns)
    if foreign:
        raise UserError(f"{foreign[0]}: output of another run that no manifest ({OWNER_FILE}) in {folder} lists; "
                        f"this command replaces only its own earlier files: choose another {flag} or move it")


@contextlib.contextmanager
def replace_run_outputs(folder: str | Path, kind: str, patterns: Sequence[str], what: str = "output folder",
                        flag: str = "--out") -> Iterator[Path]:
    """Write one run's files into ``folder``, replacing exactly the previous ``kind`` run's files.

    Yields a staging folder inside ``folder``; when the block ends normally its files are moved into
    ``folder`` (each by an atomic rename), the previous run's files that this run did not write again
    are removed (only those its manifest lists), and the manifest then lists this run's files. At every
    moment the manifest lists every output file present, so an interrupted run never leaves an
    unrecorded one. The folder's lock is held throughout; a block that raises leaves the folder as it was.
    """
    folder = Path(folder)
    check_replaceable(folder, kind, patterns, flag)
    with output_lock(folder, what):
        check_replaceable(folder, kind, patterns, flag)
        previous = recorded_files(folder, kind)
        try:
            stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
        except OSError as exc:
            raise write_failure(exc, folder, what) from None
        try:
            try:
                yield stage
            except OSError as exc:
                raise write_failure(exc, folder, what) from None
            names = sorted(p.name for p in stage.iterdir() if p.is_file())
            write_owner_marker(folder, kind, files=sorted(previous | set(names)))
            for name in names:
                os.replace(stage / name, folder / name)
            for name in sorted(previous - set(names)):
                old = folder / name
                if old.is_file() and not old.is_symlink():
                    old.unlink()
            write_owner_marker(folder, kind, files=names)
        except OSError as exc:
            raise write_failure(exc, folder, what) from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)


DISK_FULL = "disk full"
_ENOSPC_TEXT = os.strerror(errno.ENOSPC)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an ``OSError``, or a library error that only carries the message, like lmdb's)
    reports ``ENOSPC`` / ``EDQUOT``."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    return _ENOSPC_TEXT in str(exc) or os.strerror(getattr(errno, "EDQUOT", errno.ENOSPC)) in str(exc)


def write_failure(exc: BaseException, path: str | Path, what: str = "output", retry: str = "") -> UserError:
    """The one-line :class:`UserError` for an OS error while writing ``path``: the path, what went wrong
    in words a user can act on (``disk full``, permission denied, a file where a folder should be), and
    what to do; ``retry`` says what running the command again does (e.g. "resumes the build")."""
    path = Path(getattr(exc, "filename", None) or path)
    again = f"; {retry}" if retry else ""
    if is_disk_full(exc):
        return UserError(f"{path}: {DISK_FULL} (no space left on device) while writing the {what}; "
                         f"free some space or choose another folder{again}")
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "read-only file system" if getattr(exc, "errno", None) == errno.EROFS else "permission denied"
        return UserError(f"{path}: {reason} while writing the {what}; choose another folder or make it "
                         f"writable{again}")
    if getattr(exc, "errno", None) in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return UserError(f"{path}: a file or folder is in the way of the {what}; choose another folder")
    reason = getattr(exc, "strerror", None) or first_line(exc)
    return UserError(f"{path}: cannot write the {what} ({reason}){again}")


__all__ = ["DISK_FULL", "LOCK_FILE", "OWNER_FILE", "check_replaceable", "is_disk_full", "output_lock", "owner_kind",
           "owner_record", "prove_owned", "recorded_files", "replace_run_outputs", "unrecorded_outputs",
           "write_failure", "write_owner_marker"]
