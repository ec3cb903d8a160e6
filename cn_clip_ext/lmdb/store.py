"""Small LMDB helpers shared by the writer, the journal, the digest and the reader.

Environments start with a modest map and grow (doubling, at most :data:`MAX_GROWTH` a step)
whenever a write transaction hits ``MDB_MAP_FULL``, so no build reserves a terabyte.

Every environment is opened here (:func:`open_readonly`, :func:`open_writable`), and checked: the
``data.mdb`` must be a regular file, lmdb must accept it, and it must be as long as the pages its
meta page says are used (a truncated file would otherwise be memory-mapped and crash the process
with SIGBUS on the first read past its end). Any failure is one :class:`UserError` naming the file.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import lmdb

from ..errors import UserError, first_line
from ..files import FILE_EMPTY, FILE_MISSING, FILE_NOT_REGULAR, InputFileError, check_input_file
from ..outputs import is_disk_full, write_failure

logger = logging.getLogger(__name__)

INITIAL_MAP_SIZE = 64 << 20
MAX_GROWTH = 8 << 30
IMGS, PAIRS = "imgs", "pairs"
NUM_IMAGES, NUM_SAMPLES = b"num_images", b"num_samples"
"""Chinese-CLIP's count keys in the ``imgs`` and ``pairs`` databases."""


DATA_FILE = "data.mdb"


def database_file(path: Path) -> Path:
    """The ``data.mdb`` of an environment folder."""
    return Path(path) / DATA_FILE


_DATA_FILE_PROBLEMS = {
    FILE_MISSING: "no LMDB database (an unfinished or damaged build?)",
    FILE_NOT_REGULAR: "not a regular file, so not an LMDB database",
    FILE_EMPTY: "empty file, not an LMDB database; rebuild it",
}
"""How a refused ``data.mdb`` is reported (:func:`~cn_clip_ext.files.check_input_file`'s own words
for an unreadable one: "cannot read the LMDB database (...)")."""


def _check_data_file(path: Path, must_exist: bool) -> None:
    """Refuse a ``data.mdb`` that is not a regular file; one to be read must also exist and not be empty
    (lmdb creates or initialises the one it is to write)."""
    data = database_file(path)
    try:
        check_input_file(data, "LMDB database", max_bytes=None, allow_empty=not must_exist)
    except InputFileError as exc:
        if exc.problem == FILE_MISSING and not must_exist:
            return
        if exc.problem in _DATA_FILE_PROBLEMS:
            raise UserError(f"{data}: {_DATA_FILE_PROBLEMS[exc.problem]}") from None
        raise


def _check_length(env: lmdb.Environment, path: Path) -> None:
    """Refuse a ``data.mdb`` shorter than the pages its meta page says are in use (read past the
    end of a memory-mapped file is SIGBUS, not an error)."""
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = os.stat(database_file(path)).st_size
    if have < need:
        env.close()
        raise UserError(f"{database_file(path)}: truncated LMDB database ({have} bytes, its pages need {need}); "
                        "rebuild it (or copy it again)")


def _opened(path: Path, must_exist: bool, **kwargs) -> lmdb.Environment:
    _check_data_file(path, must_exist)
    try:
        env = lmdb.open(str(path), subdir=True, readahead=False, meminit=False, **kwargs)
    except lmdb.Error as exc:
        if is_disk_full(exc):
            raise write_failure(exc, path, "LMDB database") from None
        raise UserError(f"{database_file(path)}: not a readable LMDB database ({_lmdb_reason(exc, path)}); "
                        "rebuild it") from None
    try:
        _check_length(env, path)
    except lmdb.Error as exc:
        env.close()
        raise UserError(f"{database_file(path)}: not a readable LMDB database ({_lmdb_reason(exc, path)})") from None
    return env


def _lmdb_reason(exc: BaseException, path: Path) -> str:
    """lmdb's message without the path it starts with."""
    text = first_line(exc)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def open_writable(path: Path) -> lmdb.Environment:
    """Open (creating) an LMDB environment directory for writing."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure(exc, path, "LMDB database") from None
    return _opened(path, False, map_size=INITIAL_MAP_SIZE, max_dbs=0)


def open_readonly(path: Path) -> lmdb.Environment:
    """Open an existing LMDB environment read-only, without a lock file (safe for workers)."""
    return _opened(Path(path), True, readonly=True, create=False, lock=False, max_readers=512)


def read_failure(exc: BaseException, path: Path, what: str) -> UserError:
    """The one-line error for an lmdb error while reading ``what`` (e.g. ``"record 12"``) of ``path``."""
    return UserError(f"{database_file(path)}: {what} cannot be read ({_lmdb_reason(exc, Path(path))}); the "
                     "database is damaged, rebuild it")


_SHARED: dict[str, list] = {}  # resolved path -> [pid, environment, references]


def acquire_readonly(path: Path) -> lmdb.Environment:
    """A read-only environment shared by every user in this process (lmdb allows one open each).

    An entry inherited from a parent across ``fork()`` (a DataLoader worker) is dropped and the
    environment opened afresh, as LMDB requires.
    """
    key = str(Path(path).resolve())
    entry = _SHARED.get(key)
    if entry is not None and entry[0] == os.getpid():
        entry[2] += 1
        return entry[1]
    if entry is not None:
        try:
            entry[1].close()
        except lmdb.Error:  # pragma: no cover - best effort on an inherited handle
            pass
    env = open_readonly(Path(path))
    _SHARED[key] = [os.getpid(), env, 1]
    return env


def release_readonly(path: Path) -> None:
    """Drop one reference taken by :func:`acquire_readonly`; the last one closes the environment."""
    key = str(Path(path).resolve())
    entry = _SHARED.get(key)
    if entry is None or entry[0] != os.getpid():
        return
    entry[2] -= 1
    if entry[2] <= 0:
        del _SHARED[key]
        entry[1].close()


@contextmanager
def readonly(path: Path) -> Iterator[lmdb.Environment]:
    """``with readonly(path) as env:`` a shared read-only environment for the block."""
    env = acquire_readonly(path)
    try:
        yield env
    finally:
        release_readonly(path)


def grow(env: lmdb.Environment) -> None:
    """Enlarge the memory map (no transaction may be open in this process)."""
    current = env.info()["map_size"]
    new = current + min(current, MAX_GROWTH)
    logger.debug("growing LMDB map %s from %d to %d MiB", env.path(), current >> 20, new >> 20)
    env.set_mapsize(new)


def put_all(env: lmdb.Environment, items: Iterable[tuple[bytes, bytes]]) -> None:
    """Write all items in one transaction, growing the map and retrying on ``MDB_MAP_FULL``."""
    items = list(items)
    if not items:
        return
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in items:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            grow(env)
        except lmdb.Error as exc:  # ENOSPC, EIO: lmdb raises its own type with the OS message
            raise write_failure(exc, Path(env.path()), "LMDB database", "run the same command again to resume")
