"""Import paths of the previous release, kept for one release.

The library was reorganised into rooms (``model``, ``lmdb``, ``synth``, ``training``, ``evaluation``);
code written against the old flat paths (``cn_clip_ext.transforms``, ``cn_clip_ext.data.lmdb_reader``,
...) still imports, with a :class:`DeprecationWarning` naming the new path. The alias is the new
module object itself, so there is one implementation and monkeypatching either name patches both.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

ALIASES: dict[str, str] = {
    "cn_clip_ext.factory": "cn_clip_ext.model.factory",
    "cn_clip_ext.tokenizer": "cn_clip_ext.model.tokenizer",
    "cn_clip_ext.transforms": "cn_clip_ext.model.transforms",
    "cn_clip_ext.png": "cn_clip_ext.model.png",
    "cn_clip_ext.loading": "cn_clip_ext.model.checkpoints",
    "cn_clip_ext.bundle": "cn_clip_ext.model.bundle",
    "cn_clip_ext.pretrained": "cn_clip_ext.model.pretrained",
    "cn_clip_ext.onnx_export": "cn_clip_ext.model.onnx",
    "cn_clip_ext.inference": "cn_clip_ext.model.inference",
    "cn_clip_ext.embed": "cn_clip_ext.model.embed",
    "cn_clip_ext.tripartite": "cn_clip_ext.model.tripartite",
    "cn_clip_ext.zeroshot": "cn_clip_ext.evaluation.classifier",
    "cn_clip_ext.metrics": "cn_clip_ext.evaluation.scores",
    "cn_clip_ext.training.evaluation": "cn_clip_ext.training.validation",
    "cn_clip_ext.data.lmdb_writer": "cn_clip_ext.lmdb.writer",
    "cn_clip_ext.data.lmdb_reader": "cn_clip_ext.lmdb.reader",
    "cn_clip_ext.data.lmdb_journal": "cn_clip_ext.lmdb.journal",
    "cn_clip_ext.data.lmdb_tables": "cn_clip_ext.lmdb.tables",
    "cn_clip_ext.data.lmdb_records": "cn_clip_ext.lmdb.records",
    "cn_clip_ext.data.lmdb_pickle": "cn_clip_ext.lmdb.unpickle",
    "cn_clip_ext.data.lmdb_store": "cn_clip_ext.lmdb.store",
    "cn_clip_ext.data.lmdb_digest": "cn_clip_ext.lmdb.digest",
    "cn_clip_ext.data.splits": "cn_clip_ext.lmdb.splits",
    "cn_clip_ext.data.validate": "cn_clip_ext.lmdb.validate",
    "cn_clip_ext.data.schema": "cn_clip_ext.layouts",
    "cn_clip_ext.data.synth": "cn_clip_ext.synth.generator",
    "cn_clip_ext.data.render": "cn_clip_ext.synth.renderer",
    "cn_clip_ext.data.captions": "cn_clip_ext.synth.captions",
    "cn_clip_ext.data.patients": "cn_clip_ext.synth.toys",
}
"""Old module name -> the module that now holds its code."""
_OLD_PACKAGES = ("cn_clip_ext.data",)


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str | None):
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if self.target is None:  # an old package: an empty namespace whose submodules are aliases
            module = types.ModuleType(spec.name, "Former package; see cn_clip_ext.compat.ALIASES.")
            module.__path__ = []
            return module
        warnings.warn(f"{spec.name} is now {self.target}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=3)
        return importlib.import_module(self.target)

    def exec_module(self, module: types.ModuleType) -> None:
        """The target module is already executed; nothing to run."""


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: D401 - importlib's signature
        if fullname in ALIASES:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(ALIASES[fullname]))
        if fullname in _OLD_PACKAGES:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(None), is_package=True)
        return None


def install() -> None:
    """Make the old paths importable (idempotent)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())


__all__ = ["ALIASES", "install"]
