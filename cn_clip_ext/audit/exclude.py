"""``exclude.txt``: evaluation images to leave out, read by ``vclip-eval --exclude``."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Collection, Mapping

from ..files import read_text_lines
from ..evaluation.datasets import EvalSet

logger = logging.getLogger(__name__)


def read_exclude(path: str | Path) -> frozenset[str]:
    """Image references, one a line (blank lines and ``#`` comments ignored)."""
    lines = read_text_lines(path, "exclusion list")
    unreliable = [s for s in lines if s.startswith("# UNRELIABLE:")]
    if unreliable:
        logger.warning("%s: marked unreliable by vclip-audit (%s)", path, unreliable[0][len("# UNRELIABLE:"):].strip())
    return frozenset(s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#"))


def _resolved(ref: str) -> str:
    try:
        return str(Path(ref).resolve())
    except (OSError, RuntimeError):
        return ref


def without(eval_set: EvalSet, refs: Collection[str], name: str | None = None) -> EvalSet:
    """``eval_set`` minus the images named in ``refs`` (as given, or as the same resolved path)."""
    refs = set(refs)
    resolved = {_resolved(r) for r in refs}
    keep = [i for i, ref in enumerate(eval_set.images) if ref not in refs and _resolved(ref) not in resolved]
    return dataclasses.replace(eval_set, name=name or eval_set.name,
                               images=tuple(eval_set.images[i] for i in keep),
                               labels=tuple(eval_set.labels[i] for i in keep))


def excluded_name(name: str, n: int) -> str:
    """The report column of a data set with ``n`` images excluded."""
    return f"{name} (excl. {n} suspicious)"


def exclusion_sets(sets: Mapping[str, EvalSet], path: str | Path) -> dict[str, EvalSet]:
    """For ``vclip-eval --exclude``: each data set that loses images, again without them, under
    :func:`excluded_name` (data sets that lose none or all are left out, with a log line)."""
    refs = read_exclude(path)
    out: dict[str, EvalSet] = {}
    for name, s in sets.items():
        n = len(s) - len(without(s, refs))
        if n == 0:
            logger.info("%s: none of its images is in %s", name, path)
        elif n == len(s):
            logger.warning("%s: every image is in %s; no 'excluding' result", name, path)
        else:
            out[excluded_name(name, n)] = without(s, refs, excluded_name(name, n))
            logger.info("%s: %d of %d images excluded (%s)", name, n, len(s), path)
    return out


__all__ = ["exclusion_sets", "excluded_name", "read_exclude", "without"]
