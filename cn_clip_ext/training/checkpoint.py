"""Checkpoints: atomic writes, ``latest.pt`` plus ``step_N.pt`` (keep the last K), safe loading.

Layout (cn_clip-compatible keys first)::

    {"epoch", "step", "name", "state_dict", "optimizer",          # as cn_clip writes them
     "config", "rng", "position", "scaler", "format_version"}    # ours

``state_dict`` has no ``module.`` prefix. ``rng`` holds one entry per rank (torch CPU/CUDA,
NumPy and Python states); ``position`` is ``{"epoch", "batch"}``: the next micro-batch to read.
Everything is plain tensors and Python containers, so it loads with ``weights_only=True``.
"""
from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..errors import UserError, describe
from ..model.checkpoints import load_checkpoint  # noqa: F401  (the reading side lives with the model)
from ..model.weights import strip_module  # noqa: F401

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
LATEST = "latest.pt"
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def step_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            try:
                torch.save(obj, fh)
            except RuntimeError as exc:
                # a full disk inside torch's zip writer surfaces as "unexpected pos" from its cleanup,
                # with the OSError (ENOSPC) as the context: raise that, so callers see the real cause
                if isinstance(exc.__context__, OSError):
                    raise exc.__context__ from None
                raise
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _atomic_link(src: Path, dst: Path) -> None:
    """Make ``dst`` a second name of ``src`` atomically (copy where hard links fail)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if tmp.exists():
            tmp.unlink()  # a copy cut short by a full disk never stays behind
        raise


def list_step_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step_N.pt`` in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name))]
    return sorted(found)


def save_checkpoint(state: Mapping[str, Any], folder: str | Path, step: int, prune: Iterable[str] = ()) -> Path:
    """Write ``step_N.pt``, point ``latest.pt`` at it, then delete the files named in ``prune``
    (the caller's own older checkpoints: see :class:`cn_clip_ext.training.rundir.RunFolder`).

    Both writes are atomic, so a failure (a full disk) leaves the previous ``latest.pt`` as it was.
    """
    folder = Path(folder)
    path = atomic_save(dict(state), folder / step_name(step))
    _atomic_link(path, folder / LATEST)
    _fsync_dir(folder)
    for name in prune:
        if name == path.name or not _STEP_RE.match(name):
            continue
        try:
            (folder / name).unlink()
        except FileNotFoundError:
            pass
    logger.info("saved checkpoint %s", path)
    return path


def find_resume(spec: str | None, folder: str | Path) -> Path | None:
    """``None`` -> no resume; ``"auto"`` -> ``folder/latest.pt`` when it exists; else the path given."""
    if spec is None:
        return None
    if spec == "auto":
        latest = Path(folder) / LATEST
        return latest if latest.exists() else None
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"{path}: --resume checkpoint not found")
    return path


# -- random-number generator states (weights_only-safe) -----------------------------------------
def capture_rng() -> dict[str, Any]:
    """This process's RNG states as tensors, lists and tuples only."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(np_state[0]), torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


__all__ = ["FORMAT_VERSION", "LATEST", "atomic_save", "capture_rng", "find_resume", "list_step_checkpoints",
           "load_checkpoint", "restore_rng", "save_checkpoint", "step_name", "strip_module"]
