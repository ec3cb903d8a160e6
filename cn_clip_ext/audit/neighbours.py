"""Exact nearest-neighbour search over a large corpus in chunks (bounded memory), with faiss.

The corpus side (``[N, ...]``, usually a memory map) is read ``chunk`` rows at a time; each chunk
is searched exactly with faiss (``IndexBinaryFlat`` for 512-bit codes, ``faiss.knn`` inner product for
normalised embeddings) and the running top-``k`` per query is merged. Without faiss the same
interface falls back to numpy (``bitwise_count`` / matrix products), exact and slower.
Query rotations are folded in: a query is ``[R, ...]`` and a corpus row's distance is the best
over the rotations.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ..extras import optional
from .hashing import hamming

logger = logging.getLogger(__name__)

_UNSET = object()
faiss: Any = _UNSET
"""The faiss module, ``None`` without it; looked up at the first search, so importing the audit package
(``vclip-eval --exclude`` does) says nothing about faiss."""


def _faiss() -> Any:
    global faiss
    if faiss is _UNSET:
        faiss = optional("faiss", extra="audit", skipped="nearest-neighbour search falls back to numpy (exact, slower)")
    return faiss


def _merge(best_d: np.ndarray, best_i: np.ndarray, d: np.ndarray, i: np.ndarray, k: int,
           largest: bool) -> tuple[np.ndarray, np.ndarray]:
    dd, ii = np.concatenate([best_d, d], 1), np.concatenate([best_i, i], 1)
    order = np.argsort(-dd if largest else dd, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dd, order, 1), np.take_along_axis(ii, order, 1)


def _chunk_search(queries: np.ndarray, block: np.ndarray, k: int, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, len(block))
    faiss = _faiss()
    if faiss is not None:
        if binary:
            index = faiss.IndexBinaryFlat(block.shape[1] * 8)
            index.add(block)
            d, i = index.search(queries, k)
        else:  # brute-force kNN without copying the block into an index
            d, i = faiss.knn(queries, block, k, metric=faiss.METRIC_INNER_PRODUCT)
        return d.astype(np.float32), i.astype(np.int64)
    out_d, out_i = [], []
    for s in range(0, len(queries), 256):  # query blocks keep the score matrix small
        scores = hamming(queries[s:s + 256], block).astype(np.float32) if binary else queries[s:s + 256] @ block.T
        part = np.argpartition(scores if binary else -scores, k - 1, axis=1)[:, :k]
        out_d.append(np.take_along_axis(scores, part, 1))
        out_i.append(part.astype(np.int64))
    return np.concatenate(out_d), np.concatenate(out_i)


def search(queries: np.ndarray, corpus: np.ndarray, k: int, *, binary: bool, chunk: int = 65536,
           valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` corpus rows per query: ``(scores [Q, k], indices [Q, k])``, best first.

    ``binary``: packed codes, score = Hamming distance (smaller is closer); otherwise float
    embeddings, score = inner product (larger is closer). Invalid corpus rows are never returned;
    missing results have index -1.
    """
    q = len(queries)
    largest = not binary
    if not binary:  # a float32 copy of a chunk stays under about 256 MiB whatever the width
        chunk = min(chunk, max(1024, (256 << 20) // (4 * int(corpus.shape[1]))))
    fill = -np.inf if largest else np.inf
    best_d = np.full((q, 0), fill, np.float32)
    best_i = np.full((q, 0), -1, np.int64)
    queries = np.ascontiguousarray(queries, dtype=np.uint8 if binary else np.float32)
    extra = 0 if valid is None else 4  # room for invalid rows dropped below
    for start in range(0, len(corpus), chunk):
        block = np.ascontiguousarray(corpus[start:start + chunk], dtype=np.uint8 if binary else np.float32)
        d, i = _chunk_search(queries, block, k + extra, binary)
        ok = i >= 0
        if valid is not None:
            ok &= valid[start:start + chunk][np.where(ok, i, 0)]
        d = np.where(ok, d, fill)
        i = np.where(ok, i + start, -1)
        best_d, best_i = _merge(best_d, best_i, d, i, k, largest)
        del block, d, i  # free this chunk before the next one is read
    if best_d.shape[1] < k:
        pad = k - best_d.shape[1]
        best_d = np.concatenate([best_d, np.full((q, pad), fill, np.float32)], 1)
        best_i = np.concatenate([best_i, np.full((q, pad), -1, np.int64)], 1)
    return best_d, best_i


def search_rotated(queries: np.ndarray, corpus: np.ndarray, k: int, *, binary: bool, chunk: int = 65536,
                   valid: np.ndarray | None = None, exclude: Sequence[int] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`search` for queries ``[Q, R, ...]``: each corpus row scored by its best rotation.

    ``exclude[q]`` is a corpus row never returned for query ``q`` (itself, for a baseline).
    """
    nq, r = queries.shape[:2]
    flat = queries.reshape(nq * r, *queries.shape[2:])
    extra = 1 if exclude is not None else 0
    d, i = search(flat, corpus, k + extra, binary=binary, chunk=chunk, valid=valid)
    d, i = d.reshape(nq, r * (k + extra)), i.reshape(nq, r * (k + extra))
    fill = np.inf if binary else -np.inf
    out_d = np.full((nq, k), fill, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    for qi in range(nq):
        order = np.argsort(d[qi] if binary else -d[qi], kind="stable")
        seen: set[int] = set()
        n = 0
        for j in order:
            idx = int(i[qi, j])
            if idx < 0 or idx in seen or (exclude is not None and idx == exclude[qi]):
                continue
            seen.add(idx)
            out_d[qi, n], out_i[qi, n] = d[qi, j], idx
            n += 1
            if n == k:
                break
    return out_d, out_i


__all__ = ["search", "search_rotated"]
