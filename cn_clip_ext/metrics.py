"""Retrieval and classification metrics shared by training, evaluation and benchmarks."""
from __future__ import annotations

from typing import Sequence

import torch


def recall_at_k(query: torch.Tensor, gallery: torch.Tensor, ks: Sequence[int] = (1, 5),
                query_groups: torch.Tensor | None = None, gallery_groups: torch.Tensor | None = None,
                chunk: int = 1024) -> dict[int, float]:
    """Fraction of queries whose top-``k`` gallery items contain a positive.

    Without groups, query ``i``'s only positive is gallery item ``i``. With groups (one integer
    id per item, e.g. identical captions share an id), any gallery item of the query's group
    counts. Features should be L2-normalised; similarity is the dot product. Memory is
    ``chunk x len(gallery)``.
    """
    n = query.shape[0]
    if query_groups is None:
        query_groups = torch.arange(n)
        gallery_groups = torch.arange(gallery.shape[0])
    elif gallery_groups is None:
        gallery_groups = query_groups
    kmax = min(max(ks), gallery.shape[0])
    hits = {k: 0 for k in ks}
    gallery_groups = gallery_groups.to(gallery.device)
    for start in range(0, n, chunk):
        sims = query[start:start + chunk] @ gallery.t()
        top = sims.topk(kmax, dim=1).indices
        match = gallery_groups[top] == query_groups[start:start + chunk].to(gallery.device).unsqueeze(1)
        for k in ks:
            hits[k] += int(match[:, :k].any(dim=1).sum())
    return {k: hits[k] / max(n, 1) for k in ks}


def balanced_accuracy(y_true: Sequence[int] | torch.Tensor, y_pred: Sequence[int] | torch.Tensor) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (NaN when it is empty)."""
    t = torch.as_tensor(y_true).long().flatten()
    p = torch.as_tensor(y_pred).long().flatten()
    if t.numel() == 0:
        return float("nan")
    recalls = [float((p[t == c] == c).float().mean()) for c in t.unique().tolist()]
    return sum(recalls) / len(recalls)


__all__ = ["balanced_accuracy", "recall_at_k"]
