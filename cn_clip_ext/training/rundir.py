"""A training run's output folder: one writer at a time, one run per folder, nothing lost.

:meth:`RunFolder.claim` takes the folder's write lock (:func:`cn_clip_ext.outputs.output_lock`), so a
second training into the same folder is refused at once. :meth:`RunFolder.check` then decides what
the folder may hold:

- a new or empty folder: a fresh run, marked as ours (``training-run`` owner marker);
- a folder that holds another run, without ``resume``: refused with the choices (``--resume auto``,
  another ``--output-dir``, or ``--overwrite``, which renames the old run to
  ``<folder>.replaced-<time>`` and never deletes it). A run that never wrote a checkpoint may be
  restarted with the same configuration: there is nothing to lose;
- a resume whose configuration changed a key that shapes the training (:func:`config_changes`) is
  refused unless ``allow_config_change`` says the change is meant; each change is logged;
- files that are not a training run: refused (``--overwrite`` moves only a training run).

Every checkpoint records its run (``state["run"]``: id, training items, and the step files the run
wrote and still keeps), so ``keep_last`` prunes only the run's own checkpoints, never a file it did
not write. Writing errors (disk full, read-only, permission denied) become one line with the path
and what to do (:func:`write_error`).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError
from ..outputs import LOCK_FILE, OWNER_FILE, output_lock, owner_kind, write_owner_marker
from . import checkpoint as ckpt
from ..files import read_structured
from .config import DERIVED_KEY, TrainConfig, fixed_keys
from .distributed import DistEnv, all_gather_object

logger = logging.getLogger(__name__)

RUN_KIND = "training-run"
"""The owner-marker kind of a ``vclip-train`` output folder."""


def config_changes(old: Mapping[str, Any], new: TrainConfig, old_items: int | None = None,
                   new_items: int | None = None) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for every trajectory-shaping key (:func:`fixed_keys`) that differs.

    ``epochs`` counts only where neither side sets ``max_steps`` (which overrides it); keys the old
    run did not record are skipped; ``train_items`` compares the training split's size (the data
    path itself may move, e.g. to a node's local disk).
    """
    changes = []
    for key in fixed_keys():
        if key not in old:
            continue
        if key == "epochs" and (old.get("max_steps") is not None or new.max_steps is not None):
            continue
        if old[key] != getattr(new, key):
            changes.append((key, old[key], getattr(new, key)))
    if old_items is not None and new_items is not None and old_items != new_items:
        changes.append(("train_items", old_items, new_items))
    return changes


# -- OS errors: one line with the path and what to do ------------------------------------------
_ADVICE = {
    errno.ENOSPC: ("disk full", "free space (or use another --output-dir), then rerun with --resume auto"),
    errno.EDQUOT: ("disk quota exceeded", "free space (or use another --output-dir), then rerun with --resume auto"),
    errno.EROFS: ("read-only file system", "choose a writable --output-dir"),
    errno.EACCES: ("permission denied", "fix the folder's permissions or choose another --output-dir"),
    errno.EPERM: ("permission denied", "fix the folder's permissions or choose another --output-dir"),
    errno.ENOTDIR: ("a file is in the way of a folder", "choose another --output-dir"),
    errno.EEXIST: ("a file is in the way of a folder", "choose another --output-dir"),
    errno.EISDIR: ("a folder is in the way of a file", "choose another --output-dir"),
}


def write_error(exc: OSError, what: str, last_checkpoint: Path | None = None, path: Path | None = None) -> UserError:
    """A one-line :class:`UserError` for an OS error while writing ``what`` (``"checkpoint"``, ...):
    the path, the reason ("disk full" ...), what to do, and the checkpoint that is still intact."""
    reason, todo = _ADVICE.get(exc.errno or -1, (exc.strerror or type(exc).__name__, "check the path"))
    path = exc.filename or path or what
    kept = (f"; the previous checkpoint {last_checkpoint} is intact" if last_checkpoint
            else "; no checkpoint had been written yet")
    return UserError(f"{path}: {reason} while writing the {what}{kept}: {todo}")


# -- the folder ------------------------------------------------------------------------------
class RunFolder:
    """The output folder of this run on this process (only rank 0 locks and writes it)."""

    def __init__(self, path: Path, env: DistEnv):
        self.path, self.env = path, env
        self.ckpt_dir = path / "checkpoints"
        self.created = False
        self.run_id = ""
        self.train_items: int | None = None
        self.checkpoints: list[str] = []  # this run's step files on disk, oldest first
        self._stack = contextlib.ExitStack()

    @classmethod
    def claim(cls, path: str | Path, env: DistEnv) -> "RunFolder":
        """Take the folder's write lock on rank 0 (creating it); every rank learns of a refusal."""
        folder = cls(Path(path), env)
        error = None
        if env.is_main:
            try:
                folder._lock()
            except UserError as exc:
                error = str(exc)
        error = all_gather_object(error)[0]  # rank 0's verdict, on every rank
        if error:
            raise UserError(error)
        return folder

    def _lock(self) -> None:
        self.created = self.created or not self.path.exists()
        self._stack.enter_context(output_lock(self.path, "training output folder (--output-dir)"))

    # -- what the folder holds ----------------------------------------------------------------
    def _entries(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE)

    def _recorded_config(self) -> dict[str, Any] | None:
        """The config.json of the run this folder holds, ``{}`` for a marked run without one,
        ``None`` when the folder holds no run of ours."""
        path = self.path / "config.json"
        marked = owner_kind(self.path) == RUN_KIND
        try:
            values = read_structured(path) if path.is_file() and path.stat().st_size < 1 << 20 else None
        except (UserError, OSError):
            values = None
        if isinstance(values, dict) and {"model", "output_dir"} <= set(values):
            return {k: v for k, v in values.items() if k != DERIVED_KEY}
        return {} if marked else None

    def _describe(self, recorded: Mapping[str, Any]) -> str:
        steps = [s for s, _ in ckpt.list_step_checkpoints(self.ckpt_dir)]
        where = f"last checkpoint step {steps[-1]}" if steps else "no checkpoint"
        return f"{recorded.get('model', 'unknown model')}, {where}"

    def _has_checkpoints(self) -> bool:
        return (self.ckpt_dir / ckpt.LATEST).exists() or bool(ckpt.list_step_checkpoints(self.ckpt_dir))

    # -- the decision --------------------------------------------------------------------------
    def check(self, config: TrainConfig, resume_path: Path | None, state: Mapping[str, Any] | None,
              train_items: int) -> None:
        """Decide (on rank 0) whether this run may write the folder; see the module doc."""
        error = None
        result: dict[str, Any] = {}
        if self.env.is_main:
            try:
                result = self._decide(config, resume_path, state, train_items)
            except UserError as exc:
                error = str(exc)
        error = all_gather_object(error)[0]  # rank 0's verdict, on every rank
        if error:
            raise UserError(error)
        self.train_items = train_items
        for name, value in result.items():
            setattr(self, name, value)

    def _decide(self, config: TrainConfig, resume_path: Path | None, state: Mapping[str, Any] | None,
                train_items: int) -> dict[str, Any]:
        entries = self._entries()
        recorded = self._recorded_config() if entries else None
        kind = owner_kind(self.path) if entries else None
        if entries and recorded is None:
            what = f"a {kind} folder" if kind else f"files that are not a training run ({', '.join(entries[:3])})"
            raise UserError(f"{self.path}: holds {what}; choose another --output-dir (--overwrite moves aside "
                            "only a training run)")
        if state is not None:
            return self._resume(config, resume_path, state, recorded, train_items)  # type: ignore[arg-type]
        if recorded is not None:
            changes = config_changes(recorded, config)
            restartable = not self._has_checkpoints() and not changes
            if config.overwrite:
                self._move_aside()
            elif config.resume is not None and not self._has_checkpoints():
                self._refuse_changes(changes, config, "its config.json")
                logger.info("%s: no checkpoint to resume from; starting afresh", self.path)
            elif config.resume is not None:
                raise UserError(f"{self.ckpt_dir}: no {ckpt.LATEST} to resume from, but step files are there; "
                                "resume one with --resume PATH")
            elif not restartable:
                raise UserError(
                    f"{self.path}: holds another training run ({self._describe(recorded)}); continue it with "
                    "--resume auto, choose another --output-dir, or pass --overwrite to move it aside "
                    "(renamed, never deleted)")
        run_id = uuid.uuid4().hex
        write_owner_marker(self.path, RUN_KIND, run_id=run_id, model=config.model)
        return {"run_id": run_id, "checkpoints": []}

    def _resume(self, config: TrainConfig, resume_path: Path, state: Mapping[str, Any],
                recorded: Mapping[str, Any] | None, train_items: int) -> dict[str, Any]:
        run = state.get("run") if isinstance(state.get("run"), dict) else {}
        inside = resume_path.resolve().parent == self.ckpt_dir.resolve()
        marker_id = _marker_value(self.path, "run_id")
        if recorded is not None and not inside and not (run.get("id") and run.get("id") == marker_id):
            raise UserError(f"{self.path}: holds another training run ({self._describe(recorded)}) than "
                            f"{resume_path}; resume it into another --output-dir")
        old = state.get("config") if isinstance(state.get("config"), dict) else {}
        changes = config_changes(old, config, run.get("train_items"), train_items)
        self._refuse_changes(changes, config, str(resume_path))
        run_id = str(run.get("id") or marker_id or uuid.uuid4().hex)
        if owner_kind(self.path) != RUN_KIND:
            write_owner_marker(self.path, RUN_KIND, run_id=run_id, model=config.model)
        if isinstance(run.get("checkpoints"), list):
            owned = [str(n) for n in run["checkpoints"]]
        else:  # a checkpoint from before runs recorded their files: only the one resumed from is known
            owned = [ckpt.step_name(int(state.get("step", 0)))] if inside else []
        owned = [n for n in owned if (self.ckpt_dir / n).is_file()]
        others = [p.name for _, p in ckpt.list_step_checkpoints(self.ckpt_dir) if p.name not in owned]
        if others:
            logger.info("%s: %d step file(s) this run did not record writing are never pruned (%s)",
                        self.ckpt_dir, len(others), ", ".join(others[:3]))
        return {"run_id": run_id, "checkpoints": owned}

    def _refuse_changes(self, changes: list[tuple[str, Any, Any]], config: TrainConfig, source: str) -> None:
        if not changes:
            return
        shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes)
        if not config.allow_config_change:
            raise UserError(f"{self.path}: resuming would change the run's configuration ({shown}, from {source}); "
                            "pass --allow-config-change if that is meant, or train into another --output-dir")
        for key, a, b in changes:
            logger.warning("resume changes %s from %r to %r (--allow-config-change)", key, a, b)

    def _move_aside(self) -> None:
        """Rename the folder's run to ``<folder>.replaced-<time>`` and lock a new, empty folder."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.replaced-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.replaced-{stamp}-{n}")
        os.rename(self.path, target)
        logger.warning("--overwrite: moved the previous run in %s to %s (nothing deleted)", self.path, target)
        self._stack.close()  # the old lock went with the old run
        self._stack = contextlib.ExitStack()
        self.created = False
        self._lock()
        self.moved_to = target

    # -- writing -------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """What a checkpoint records of its run (see the module doc)."""
        return {"id": self.run_id, "train_items": self.train_items, "checkpoints": list(self.checkpoints)}

    def save(self, state: Mapping[str, Any], step: int, keep_last: int, last: Path | None) -> Path:
        """Write ``state`` as this run's checkpoint of ``step``; prune only this run's older files."""
        name = ckpt.step_name(step)
        ledger = [n for n in self.checkpoints if n != name] + [name]
        keep, drop = ledger[-keep_last:], ledger[:-keep_last]
        full = {**state, "run": {**self.meta(), "checkpoints": keep}}
        try:
            path = ckpt.save_checkpoint(full, self.ckpt_dir, step, prune=drop)
        except OSError as exc:
            intact = self.ckpt_dir / self.checkpoints[-1] if self.checkpoints else last
            raise write_error(exc, f"checkpoint {name}", intact, self.ckpt_dir / name) from None
        self.checkpoints = keep
        return path

    def save_config(self, config: TrainConfig, derived: Mapping[str, Any]) -> None:
        config.save(self.path / "config.json", derived=derived)

    def release(self, failed: bool = False) -> None:
        """Drop the lock; after a failed start, remove the folder when this process created it and
        nothing but its own bookkeeping is in it."""
        try:
            if failed and self.created and self.env.is_main and self.path.is_dir():
                ours = {LOCK_FILE, OWNER_FILE, "checkpoints"}
                if set(p.name for p in self.path.iterdir()) <= ours and not (
                        self.ckpt_dir.is_dir() and any(self.ckpt_dir.iterdir())):
                    for name in (OWNER_FILE, LOCK_FILE):
                        with contextlib.suppress(FileNotFoundError):
                            (self.path / name).unlink()
                    with contextlib.suppress(OSError):
                        if self.ckpt_dir.is_dir():
                            self.ckpt_dir.rmdir()
                        self.path.rmdir()
        finally:
            self._stack.close()


def _marker_value(folder: Path, key: str) -> str | None:
    import json

    try:
        data = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return str(value) if value else None


__all__ = ["RUN_KIND", "RunFolder", "config_changes", "write_error"]
