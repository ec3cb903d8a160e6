"""Build Chinese-CLIP LMDB datasets from an annotation CSV and a folder of images.

Output (per shard; the shard folder is ``out`` itself without sharding)::

    out/{train,valid,test}/imgs     LMDB: str(image_id) -> URL-safe base64 of the encoded image,
                                          b"num_images" -> count
    out/{train,valid,test}/pairs    LMDB: str(index) -> pickle((image_id, text_id, caption)),
                                          b"num_samples" -> count
    out/{train,valid,test}/labels.csv   image_id, file_name and every label column
    out/splits.csv                   file_name, split, image_id for every stored image
    out/rejects.csv                  row, file_name, reason, detail for every rejected row
    out/summary.json                 counts per split / label / reject reason, caption token stats
    out/manifest.json                the config and input identity; written last ("complete")

exactly the layout ``cn_clip.training.data.LMDBDataset`` reads. A patient-level CSV (RET-CLIP:
``patient_id, left_image, right_image, report``) gives the same folders with one patient per
``pairs`` record and ``"kind": "patients"`` in the manifest (see :mod:`.lmdb_records`).

Rows stream through a process pool (decode, check, resize, re-encode) in CSV order, a bounded
number of blocks in flight; the parent writes each block in one transaction per database, then
records it in the journal (:mod:`.lmdb_journal`), which makes the build resumable.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from tqdm import tqdm

from ..errors import UserError, describe, where
from ..outputs import LOCK_FILE, OWNER_FILE, output_lock, owner_kind, write_failure, write_owner_marker
from .digest import folder_digest
from .journal import BUILD_DIR, Cursor, Journal, RowOutcome
from .records import Item, RecordKind, record_kind
from .store import IMGS, NUM_IMAGES, NUM_SAMPLES, PAIRS, open_writable, put_all
from .tables import MANIFEST, SIDE_TABLES, write_side_tables
from .splits import SPLITS, SplitRatios, shard_of
from .images import ImageOptions, process_image
from .rows import (
    EMPTY_CAPTION, MALFORMED_ROW, PAIRS_KIND, UNDECODABLE, CsvInfo, InputSpec, RowReject, caption_tokens, iter_rows,
    row_fields, scan_csv,
)

logger = logging.getLogger(__name__)

THROTTLE_ENV = "VCLIP_LMDB_THROTTLE_S"
"""Testing hook: seconds to sleep after each committed block (to kill a build mid-way)."""
FORMAT_VERSION = 1
OWNER_KIND = "lmdb-build"
"""The owner marker (:mod:`cn_clip_ext.outputs`) of a build folder: ``--overwrite`` replaces only such a folder."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything that defines an LMDB build."""

    input: InputSpec
    out: Path
    ratios: SplitRatios = SplitRatios()
    seed: int = 0
    image: ImageOptions = ImageOptions()
    shards: int = 1
    shard_index: int | None = None
    """Build only this shard (one node of a multi-node build); ``None`` builds every shard."""
    context_length: int = 52
    """Only for the caption statistics: captions longer than this minus 2 tokens get truncated."""
    workers: int = 0
    """Worker processes; 0 uses every core."""
    batch_rows: int = 512
    """Rows per block: one LMDB transaction per database and one journal commit."""
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if self.shard_index is not None and not 0 <= self.shard_index < self.shards:
            raise ValueError(f"shard index {self.shard_index} is not in 0..{self.shards - 1}")
        if self.batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {self.batch_rows}")

    def shard_dirs(self) -> list[tuple[int, Path]]:
        """``(shard, folder)`` for each shard this config builds."""
        if self.shards == 1:
            return [(0, Path(self.out))]
        wanted = range(self.shards) if self.shard_index is None else [self.shard_index]
        return [(i, Path(self.out) / f"shard-{i:03d}-of-{self.shards:03d}") for i in wanted]


@dataclass(frozen=True)
class BuildResult:
    """One built shard: its folder, images per split and rejected rows."""

    out: Path
    counts: Mapping[str, int]
    """Samples per split: images (pairs) or patients."""
    rejected: int
    resumed_from_row: int
    seconds: float


def _fingerprint(cfg: BuildConfig, info: CsvInfo, shard: int) -> dict[str, Any]:
    stat = info.path.stat()
    kind = {} if info.kind == PAIRS_KIND else {"kind": info.kind}
    image = dataclasses.asdict(cfg.image)
    if image["max_bytes"] == ImageOptions().max_bytes:
        del image["max_bytes"]  # recorded only when set, so builds made before the option still resume
    if cfg.input.allow_outside_root:
        kind["allow_outside_root"] = True
    return {
        **kind,
        "format_version": FORMAT_VERSION,
        "csv": str(info.path.resolve()), "csv_size": stat.st_size, "csv_mtime_ns": stat.st_mtime_ns,
        "encoding": info.encoding, "image_root": str(cfg.input.image_root.resolve()),
        "image_col": cfg.input.image_col, "text_col": cfg.input.text_col, "label_cols": list(info.label_cols),
        "ratios": str(cfg.ratios), "seed": cfg.seed, "image": image,
        "shards": cfg.shards, "shard": shard, "context_length": cfg.context_length,
    }


# --- worker side --------------------------------------------------------------------------------

_OPTIONS = ImageOptions()


def _init_worker(options: ImageOptions) -> None:
    global _OPTIONS
    _OPTIONS = options


def _work(task: tuple[str, str, str, bool]) -> tuple[bytes | None, str, str, int]:
    """``(base64 image or None, reason, detail, caption tokens)`` for one image: ``task`` is the image
    root, the path as the CSV has it, the caption and whether the file must be inside the root."""
    root, name, caption, confine = task
    tokens = caption_tokens(caption)
    try:
        return process_image(Path(root) / name, _OPTIONS, Path(root) if confine else None, name), "", "", tokens
    except RowReject as rej:
        return None, rej.reason, rej.detail, tokens
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a million-row build
        return None, UNDECODABLE, describe(exc), tokens


class _Inline:
    """Pool stand-in for ``workers=1``: same interface, runs in this process."""

    class _Result:
        def __init__(self, fn, items):
            self._fn, self._items = fn, items

        def get(self):
            return [self._fn(x) for x in self._items]

    def __init__(self, options: ImageOptions):
        _init_worker(options)

    def map_async(self, fn, items, chunksize=1):
        return self._Result(fn, items)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _pool(workers: int, options: ImageOptions):
    if workers <= 1:
        return _Inline(options)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(options,))


# --- parent side --------------------------------------------------------------------------------

def _blocks(cfg: BuildConfig, info: CsvInfo, kind: RecordKind, shard: int,
            start_row: int) -> Iterator[tuple[list[Item], int]]:
    """Blocks of this shard's rows from ``start_row`` on, each with the next row after it.

    Duplicates are judged on every earlier row of the shard (the first occurrence wins), so rows
    before ``start_row`` are still read, but not processed.
    """
    seen: set[str] = set()
    block: list[Item] = []
    for row, fields in iter_rows(info):
        if not fields:
            continue  # blank line
        parsed = row_fields(info, fields)
        if parsed is None:
            if shard != 0:
                continue
            item = Item(row, "", "", reject=RowReject(MALFORMED_ROW,
                                                      f"{len(fields)} fields, header has {len(info.header)}"))
        else:
            name, caption = parsed
            name = kind.key(name)  # pairs: ./a.png and a.png are one image, in one shard and split
            if shard_of(name, cfg.shards, cfg.seed) != shard:
                continue
            files = kind.files(info, fields, name)
            if not name:
                item = Item(row, name, caption, files, kind.empty_key)
            elif name in seen:
                item = Item(row, name, caption, files, kind.duplicate_key)
            else:
                seen.add(name)
                reject = kind.check(files) or (
                    None if caption.strip() else RowReject(EMPTY_CAPTION, "caption is empty or whitespace"))
                item = Item(row, name, caption, files, reject)
        if row < start_row:
            continue
        block.append(item)
        if len(block) >= cfg.batch_rows:
            yield block, row + 1
            block = []
    yield block, info.rows + 1


class _SplitWriter:
    """The six LMDB environments of one output folder."""

    def __init__(self, out: Path):
        self.envs = {(s, k): open_writable(out / s / k) for s in SPLITS for k in (IMGS, PAIRS)}

    def write(self, data: Mapping[tuple[str, str], list[tuple[bytes, bytes]]]) -> None:
        for key, items in data.items():
            put_all(self.envs[key], items)

    def write_counts(self, cursor: Cursor) -> None:
        for s in SPLITS:
            put_all(self.envs[(s, IMGS)], [(NUM_IMAGES, str(cursor.image_counts[s]).encode())])
            put_all(self.envs[(s, PAIRS)], [(NUM_SAMPLES, str(cursor.counts[s]).encode())])

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def _tasks(cfg: BuildConfig, block: list[Item]) -> list[tuple[str, str, str, bool]]:
    """The worker tasks of a block: one per image file; a row's caption goes with its first image."""
    tasks = []
    root, confine = str(cfg.input.image_root), not cfg.input.allow_outside_root
    for item in block:
        if item.reject is None:
            files = [f for f in item.files if f]
            tasks += [(root, f, item.caption if i == 0 else "", confine) for i, f in enumerate(files)]
    return tasks


def _resolve(cfg: BuildConfig, kind: RecordKind, block: list[Item], results: list, cursor: Cursor, next_row: int):
    """Turn a block and its worker results into LMDB items, journal outcomes and the new cursor."""
    counts, images = dict(cursor.counts), dict(cursor.image_counts)
    data: dict[tuple[str, str], list[tuple[bytes, bytes]]] = {(s, k): [] for s in SPLITS for k in (IMGS, PAIRS)}
    outcomes: list[tuple[int, RowOutcome]] = []
    it = iter(results)
    for item in block:
        if item.reject is not None:
            tokens = caption_tokens(item.caption) if item.caption.strip() else 0
            outcomes.append((item.row, RowOutcome(tokens=tokens, reason=item.reject.reason, detail=item.reject.detail)))
            continue
        got = [next(it) if f else None for f in item.files]
        outcomes.append((item.row, kind.store(item, got, cfg.ratios, cfg.seed, counts, images, data)))
    return data, outcomes, Cursor(next_row, counts, None if kind.name == PAIRS_KIND else images)


def _previous_build(out: Path) -> tuple[bool, Mapping[str, Any] | None]:
    """Whether ``out`` provably holds a build of ours (its owner marker, or the manifest or journal
    only a build writes), and that build's fingerprint (``None``: none readable)."""
    manifest, journal = out / MANIFEST, out / BUILD_DIR / "journal"
    owned = owner_kind(out) == OWNER_KIND
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        fingerprint = data.get("fingerprint") if isinstance(data, dict) else None
        if isinstance(fingerprint, dict) and "format_version" in fingerprint:
            return True, fingerprint
        return owned, None
    if (journal / "data.mdb").is_file():
        j = Journal(out)
        try:
            meta = j.meta()
        finally:
            j.close()
        return True, meta
    return owned, None


def _prepare(out: Path, fingerprint: Mapping[str, Any], overwrite: bool) -> bool:
    """Check ``out`` before writing anything; ``True`` when it already holds this exact build.

    ``overwrite`` replaces only a build of ours (see :func:`_previous_build`), and even then only
    the files a build writes; any other non-empty folder is refused, with or without it.
    """
    ours, previous = _previous_build(out)
    entries = [p.name for p in out.iterdir() if p.name not in (LOCK_FILE, OWNER_FILE)] if out.is_dir() else []
    if not ours:
        if entries:
            raise UserError(f"{where(out)}: the folder is not empty and holds no LMDB build of this toolkit "
                            f"(no {MANIFEST} or owner marker); choose another --out (--overwrite replaces only "
                            "a build it can prove it wrote)")
        return False
    if previous is not None and previous != dict(fingerprint):
        if not overwrite:
            changed = sorted(k for k in {**previous, **fingerprint} if previous.get(k) != fingerprint.get(k))
            raise UserError(f"{where(out)}: holds a build with different settings or input ({', '.join(changed)}); "
                            "pass --overwrite to rebuild it")
        previous = None
    if previous is None and entries:
        if not overwrite and (out / MANIFEST).exists():
            raise UserError(f"{where(out / MANIFEST)}: not a readable build manifest; pass --overwrite to rebuild "
                            "the build")
        for name in (*SPLITS, BUILD_DIR, *SIDE_TABLES, MANIFEST):  # only what a build writes
            path = out / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    return (out / MANIFEST).is_file() and previous is not None


def _build_shard(cfg: BuildConfig, info: CsvInfo, shard: int, out: Path) -> BuildResult:
    """Build one shard folder holding its lock; OS errors (disk full, permissions) become one line."""
    with output_lock(out, "LMDB build output"):
        try:
            return _build_locked(cfg, info, shard, out)
        except OSError as exc:
            raise write_failure(exc, out, "LMDB build", "run the same command again to resume the build") from None


def _build_locked(cfg: BuildConfig, info: CsvInfo, shard: int, out: Path) -> BuildResult:
    fingerprint = _fingerprint(cfg, info, shard)
    kind = record_kind(info.kind)
    if _prepare(out, fingerprint, cfg.overwrite):
        try:
            summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
            counts = {s: int(summary[kind.count_name][s]) for s in SPLITS}  # train/valid/test order
            rejected = int(summary["rejected"]["total"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{where(out / 'summary.json')}: missing or not a readable build summary; pass "
                            "--overwrite to rebuild") from None
        shutil.rmtree(out / BUILD_DIR, ignore_errors=True)  # left if killed right after the manifest
        logger.info("%s: already complete, nothing to do", out)
        return BuildResult(out, counts, rejected, info.rows + 1, 0.0)
    write_owner_marker(out, OWNER_KIND)
    started = time.perf_counter()
    workers = cfg.workers or os.cpu_count() or 1
    throttle = float(os.environ.get(THROTTLE_ENV, "0") or 0)
    chunk = max(1, cfg.batch_rows // (4 * workers))
    with _pool(workers, cfg.image) as pool:  # fork before any LMDB environment or thread exists
        out.mkdir(parents=True, exist_ok=True)
        journal = Journal(out)
        if journal.meta() is None:
            journal.set_meta(fingerprint)
        cursor = journal.cursor()
        resumed_from = cursor.next_row
        if resumed_from > 1:
            logger.info("%s: resuming at row %d of %d", out, resumed_from, info.rows)
        writer = _SplitWriter(out)
        bar = tqdm(total=info.rows, initial=resumed_from - 1, unit="row", disable=not cfg.progress,
                   desc=out.name, dynamic_ncols=True, mininterval=1.0)
        pending: deque = deque()

        def drain_one() -> None:
            nonlocal cursor
            block, next_row, result = pending.popleft()
            data, outcomes, new_cursor = _resolve(cfg, kind, block, result.get(), cursor, next_row)
            writer.write(data)
            journal.commit(outcomes, new_cursor)  # last: the data of a block is in before its cursor
            bar.update(new_cursor.next_row - cursor.next_row)
            cursor = new_cursor
            if throttle:
                time.sleep(throttle)

        try:
            for block, next_row in _blocks(cfg, info, kind, shard, resumed_from):
                pending.append((block, next_row, pool.map_async(_work, _tasks(cfg, block), chunk)))
                if len(pending) > 2:
                    drain_one()
            while pending:
                drain_one()
            writer.write_counts(cursor)
            writer.close()  # the digest in the manifest reads the databases back
            bar.close()
            rejected = write_side_tables(out, info, journal, fingerprint, cfg, 
                                         digest=lambda folder: folder_digest(folder, kind.name))
        finally:
            bar.close()
            writer.close()
            journal.close()
    shutil.rmtree(out / BUILD_DIR, ignore_errors=True)
    seconds = time.perf_counter() - started
    logger.info("%s: %s %s (train/valid/test %s), %d rejected, %.1f s", out, sum(cursor.counts.values()),
                kind.count_name, "/".join(str(cursor.counts[s]) for s in SPLITS), rejected, seconds)
    return BuildResult(out, {s: cursor.counts[s] for s in SPLITS}, rejected, resumed_from, seconds)


def build_lmdb(cfg: BuildConfig) -> list[BuildResult]:
    """Build (or resume, or confirm) every shard of ``cfg``; user errors raise :class:`UserError`."""
    if not cfg.input.image_root.is_dir():
        raise UserError(f"{where(cfg.input.image_root)}: no such image folder")
    info = scan_csv(cfg.input)
    logger.info("%s: %d %s rows, encoding %s, %d label columns", info.path, info.rows, info.kind, info.encoding,
                len(info.label_cols))
    return [_build_shard(cfg, info, shard, out) for shard, out in cfg.shard_dirs()]
