"""Small LMDB helpers shared by the writer, the journal, the digest and the reader.

Environments start with a modest map and grow (doubling, at most :data:`MAX_GROWTH` a step)
whenever a write transaction hits ``MDB_MAP_FULL``, so no build reserves a terabyte.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import lmdb

logger = logging.getLogger(__name__)

INITIAL_MAP_SIZE = 64 << 20
MAX_GROWTH = 8 << 30
IMGS, PAIRS = "imgs", "pairs"
NUM_IMAGES, NUM_SAMPLES = b"num_images", b"num_samples"
"""Chinese-CLIP's count keys in the ``imgs`` and ``pairs`` databases."""


def open_writable(path: Path) -> lmdb.Environment:
    """Open (creating) an LMDB environment directory for writing."""
    path.mkdir(parents=True, exist_ok=True)
    return lmdb.open(str(path), map_size=INITIAL_MAP_SIZE, subdir=True, readahead=False, meminit=False,
                     max_dbs=0)


def open_readonly(path: Path) -> lmdb.Environment:
    """Open an existing LMDB environment read-only, without a lock file (safe for workers)."""
    return lmdb.open(str(path), readonly=True, create=False, lock=False, readahead=False, meminit=False,
                     subdir=True, max_readers=512)


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
