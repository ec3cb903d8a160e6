"""Prompt sets in the training corpus's own words: mined from its captions and label side table,
and checked against them.

Zero-shot CLIP works when the prompts use the words the captions used in training. The tasks are
the dataset table's ``synfundus`` entries (side-table column, or a derived label such as the
4-class condition, and label value -> prompt class), so the mined set covers every class those
entries name, under the same keys as the built-in sets.

Mining. Each caption is cut into phrases: its sentences (split at ``。；！？``) and their clauses
(split further at ``，、：`` and their ASCII forms); Chinese needs no word segmenter for this, and
the tokenizer's word pieces (single characters for Chinese) are too fine to carry a finding. For
a class of a task, a phrase's *frequency* is the share of the class's captions holding it, and
its *purity* is the class's share of the phrase's frequencies over the task's classes (purity
under balanced classes, so a rare class's phrases are not drowned by the common class). Phrases
with at least ``min_count`` captions of the class and ``min_purity`` are candidates; the chosen
ones are picked greedily, each covering the most of the class's captions the earlier ones left
uncovered, at most ``per_class`` of them. A class with no candidate keeps the base set's names.

Checking. For each class, a prompt set's *wording* in a caption is the share of a class name's
character bigrams (the usual unit of Chinese text statistics) that the caption contains, best
over the class's names; averaged over a class's captions it says how much of the prompts that
class's captions speak. A class is flagged when no caption of it contains any of its names
verbatim, or when another class's captions hold more of its wording than its own. Templates are
shared by every class and are left out of both.
"""
from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import UserError
from .datasets import DatasetSpec
from .prompts import PromptSet

logger = logging.getLogger(__name__)

SENTENCE_SPLIT = re.compile(r"[。；;！!？?\n]+")
CLAUSE_SPLIT = re.compile(r"[，,、：:]+")
NON_TEXT = re.compile(r"[\s。；;！!？?，,、：:．.\"'“”‘’《》「」]+")
MINED_TEMPLATES = ("{}。",)
"""Mined phrases are caption sentences and clauses: one template closes them as a caption would."""


def phrases(caption: str) -> set[str]:
    """A caption's sentences and their clauses, stripped of punctuation."""
    out: set[str] = set()
    for sentence in SENTENCE_SPLIT.split(caption):
        sentence = sentence.strip(" ，,、：:")
        if not sentence:
            continue
        out.add(sentence)
        out.update(c.strip() for c in CLAUSE_SPLIT.split(sentence) if c.strip())
    return out


def bigrams(text: str) -> frozenset[str]:
    """Character bigrams of a text without punctuation (the text itself when one character)."""
    chars = NON_TEXT.sub("", text)
    if len(chars) < 2:
        return frozenset([chars]) if chars else frozenset()
    return frozenset(chars[i:i + 2] for i in range(len(chars) - 1))


@dataclass(frozen=True)
class Task:
    """One zero-shot task of the corpus: which label value means which prompt class."""

    name: str
    label: str
    classes: Mapping[str, str]  # label value -> prompt class
    value: Callable[[Mapping[str, str]], "str | None"] = field(repr=False)


def corpus_tasks(table: Mapping[str, DatasetSpec]) -> list[Task]:
    """The tasks of a dataset table's ``synfundus`` entries, derived labels included."""
    from .synfundus import DERIVED_LABELS

    tasks = []
    for spec in table.values():
        column = spec.options.get("label")
        if spec.reader != "synfundus" or not column:
            continue
        column = str(column)
        derive = DERIVED_LABELS.get(column)

        def value(row: Mapping[str, str], column: str = column, derive=derive) -> str | None:
            if derive is not None:
                try:
                    return derive(row)
                except (KeyError, ValueError):
                    return None
            v = row.get(column)
            return v.strip() if v is not None else None

        tasks.append(Task(spec.name, column, MappingProxyType(dict(spec.classes)), value))
    if not tasks:
        raise UserError("the dataset table has no synfundus entries: no corpus task to mine prompts for")
    return tasks


@dataclass(frozen=True)
class Corpus:
    """Captions and their label rows (one per image or patient record)."""

    source: str
    captions: tuple[str, ...]
    labels: tuple[Mapping[str, str], ...]


def read_corpus(lmdb_root: str | Path, split: str = "train", max_captions: int | None = 200_000,
                seed: int = 0) -> Corpus:
    """The captions (reports, for a patient-level build) and side-table rows of one split of a
    ``vclip-build-lmdb`` output; at most ``max_captions`` of them (a seeded sample)."""
    from ..lmdb.reader import open_lmdb_dataset

    split_dir = Path(lmdb_root) / split
    if not (split_dir / "pairs").is_dir():
        raise UserError(f"{split_dir}: no LMDB split here (expected {split_dir}/imgs and pairs; "
                        "build one with vclip-build-lmdb)")
    try:
        ds = open_lmdb_dataset(split_dir, transform=lambda image: image)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"{split_dir}: not a readable LMDB split ({exc})") from None
    n = len(ds)
    order = np.arange(n)
    if max_captions is not None and n > max_captions:
        order = np.sort(np.random.default_rng(seed).choice(n, max_captions, replace=False))
    captions, labels = [], []
    try:
        for i in order.tolist():
            record = ds.record(i)
            captions.append(str(getattr(record, "text", None) or getattr(record, "report", "")))
            try:
                labels.append(ds.labels(i))
            except (KeyError, FileNotFoundError):
                raise UserError(f"{split_dir}: no label side table row for record {i} (rebuild with "
                                "vclip-build-lmdb, which writes labels.csv)") from None
    finally:
        ds.close()
    return Corpus(str(split_dir), tuple(captions), tuple(labels))


def _groups(corpus: Corpus, task: Task) -> dict[str, list[int]]:
    """Prompt class -> indices of the captions whose label maps to it."""
    out: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(corpus.labels):
        value = task.value(row)
        if value is not None and value in task.classes:
            out[task.classes[value]].append(i)
    return out


@dataclass(frozen=True)
class Evidence:
    phrase: str
    task: str
    n_class: int  # captions of the class holding the phrase
    n_total: int  # captions of the task holding it
    class_size: int
    frequency: float  # n_class / class_size
    purity: float
    new_captions: int  # captions it covered that earlier picks had not

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class MinedPrompts:
    prompts: PromptSet
    evidence: Mapping[str, tuple[Evidence, ...]]  # class -> chosen phrases
    sizes: Mapping[str, Mapping[str, int]]  # task -> class -> captions
    fallback: tuple[str, ...]  # classes that kept the base set's names
    settings: Mapping[str, object]


def mine(corpus: Corpus, tasks: Sequence[Task], base: PromptSet | None = None, min_count: int = 5,
         min_purity: float = 0.8, per_class: int = 8) -> MinedPrompts:
    """Mine a prompt set (see the module notes); classes the corpus cannot speak for (no label,
    no candidate phrase) take ``base``'s names, and ``base``'s other classes are kept too."""
    units = [phrases(c) for c in corpus.captions]
    chosen: dict[str, list[Evidence]] = defaultdict(list)
    sizes: dict[str, dict[str, int]] = {}
    for task in tasks:
        groups = _groups(corpus, task)
        sizes[task.name] = {k: len(v) for k, v in groups.items()}
        if len(groups) < 2:
            logger.warning("%s: fewer than two classes among the captions; nothing mined", task.name)
            continue
        holders: dict[str, dict[str, set[int]]] = {k: defaultdict(set) for k in groups}
        for key, members in groups.items():
            for i in members:
                for u in units[i]:
                    holders[key][u].add(i)
        freq = {k: {u: len(s) / len(groups[k]) for u, s in h.items()} for k, h in holders.items()}
        for key, members in groups.items():
            candidates = []
            for u, holding in holders[key].items():
                if len(holding) < min_count:
                    continue
                total = sum(f.get(u, 0.0) for f in freq.values())
                purity = freq[key][u] / total
                if purity >= min_purity:
                    candidates.append((u, holding, purity))
            covered: set[int] = set()
            for _ in range(per_class):
                best = max(candidates, key=lambda c: (len(c[1] - covered), c[2], -len(c[0]), c[0]), default=None)
                if best is None or len(best[1] - covered) < min_count:
                    break
                u, holding, purity = best
                n_total = sum(len(h.get(u, ())) for h in holders.values())
                chosen[key].append(Evidence(u, task.name, len(holding), n_total, len(members),
                                            len(holding) / len(members), purity, len(holding - covered)))
                covered |= holding
                candidates.remove(best)
    classes: dict[str, tuple[str, ...]] = {}
    fallback = []
    task_classes = list(dict.fromkeys(k for t in tasks for k in t.classes.values()))
    for key in task_classes:
        names = tuple(dict.fromkeys(e.phrase for e in chosen.get(key, ())))
        if names:
            classes[key] = names
        elif base is not None and key in base.classes:
            classes[key] = base.classes[key]
            fallback.append(key)
            logger.warning("%s: no caption phrase specific enough (min_count=%d, min_purity=%.2f); keeping "
                           "the base set's names", key, min_count, min_purity)
        else:
            raise UserError(f"class {key!r}: no caption phrase specific enough and no base prompt set to fall back on")
    if base is not None:
        for key, names in base.classes.items():
            if key not in classes:
                classes[key] = names
                fallback.append(key)
    prompts = PromptSet("mined", MINED_TEMPLATES, MappingProxyType(classes))
    settings = {"source": corpus.source, "captions": len(corpus.captions), "min_count": min_count,
                "min_purity": min_purity, "per_class": per_class, "base": base.name if base else None}
    return MinedPrompts(prompts, MappingProxyType({k: tuple(v) for k, v in chosen.items()}),
                        MappingProxyType({k: MappingProxyType(v) for k, v in sizes.items()}), tuple(fallback),
                        MappingProxyType(settings))


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def mined_yaml(mined: MinedPrompts) -> str:
    """The mined set in the prompt-set YAML format, each class preceded by its evidence."""
    s = mined.settings
    lines = [f"# Prompt set mined by vclip-prompts from the captions of {s['source']} ({s['captions']} captions),",
             f"# min_count={s['min_count']}, min_purity={s['min_purity']}, per_class={s['per_class']}. Per phrase:",
             "# captions of the class holding it / of its task holding it, its frequency in the class and purity",
             "# (the class's share of its per-class frequencies). Classes marked 'base' keep the names of the",
             f"# base set {s['base']!r}.",
             "name: mined", "templates:", *[f"  - {_quoted(t)}" for t in mined.prompts.templates], "classes:"]
    for key, names in mined.prompts.classes.items():
        evidence = mined.evidence.get(key, ())
        if key in mined.fallback:
            lines.append(f"  # {key}: base")
        for e in evidence:
            lines.append(f"  # {key} [{e.task}, {e.class_size} captions]: {e.phrase}  {e.n_class}/{e.n_total}, "
                         f"frequency {e.frequency:.2f}, purity {e.purity:.2f}")
        lines.append(f"  {key}: [{', '.join(_quoted(n) for n in names)}]")
    return "\n".join(lines) + "\n"


def evidence_json(mined: MinedPrompts) -> dict:
    return {"settings": dict(mined.settings), "captions_per_class": {t: dict(v) for t, v in mined.sizes.items()},
            "fallback": list(mined.fallback),
            "classes": {k: [e.as_dict() for e in v] for k, v in mined.evidence.items()}}


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class ClassCheck:
    task: str
    key: str
    captions: int
    verbatim: float  # share of the class's captions holding one of its names verbatim
    wording: Mapping[str, float]  # class of the task -> mean wording of this class's prompts in its captions
    warning: str | None

    def as_dict(self) -> dict:
        return {"task": self.task, "class": self.key, "captions": self.captions, "verbatim": self.verbatim,
                "wording": dict(self.wording), "warning": self.warning}


def _wording(name_grams: Sequence[frozenset[str]], caption_grams: Iterable[frozenset[str]]) -> float:
    values = [max((len(g & c) / len(g) for g in name_grams if g), default=0.0) for c in caption_grams]
    return float(np.mean(values)) if values else 0.0


def check(corpus: Corpus, tasks: Sequence[Task], prompts: PromptSet) -> list[ClassCheck]:
    """How much of each class's prompt wording its own captions and the other classes' hold."""
    grams = [bigrams(c) for c in corpus.captions]
    texts = [NON_TEXT.sub("", c) for c in corpus.captions]
    out = []
    for task in tasks:
        groups = _groups(corpus, task)
        for key, members in groups.items():
            names = prompts.classes.get(key)
            if not names:
                out.append(ClassCheck(task.name, key, len(members), 0.0, {}, f"prompt set {prompts.name!r} has no "
                                      f"class {key!r}"))
                continue
            name_grams = [bigrams(n) for n in names]
            bare = [NON_TEXT.sub("", n) for n in names]
            verbatim = float(np.mean([any(b and b in texts[i] for b in bare) for i in members]))
            wording = {k: _wording(name_grams, (grams[i] for i in m)) for k, m in groups.items()}
            warning = None
            rival = max((k for k in wording if k != key), key=lambda k: wording[k], default=None)
            if verbatim == 0.0:
                warning = f"its prompts never occur verbatim in its {len(members)} captions"
            if rival is not None and wording[rival] > wording[key]:
                more = (f"its wording is more in {rival!r} captions ({wording[rival]:.2f}) than in its own "
                        f"({wording[key]:.2f})")
                warning = f"{warning}; {more}" if warning else more
            out.append(ClassCheck(task.name, key, len(members), verbatim, MappingProxyType(wording), warning))
    return out


def check_table(checks: Sequence[ClassCheck], prompts_name: str) -> str:
    """The check as a Markdown table and the warnings below it."""
    lines = [f"prompt set {prompts_name!r} against the corpus captions: verbatim = share of the class's captions "
             "holding one of its names; wording = share of the names' character bigrams in a caption, mean over "
             "the class's captions, and its highest value among the other classes", "",
             "| task | class | captions | verbatim | wording (own) | wording (highest other) | warning |",
             "|---|---|---|---|---|---|---|"]
    for c in checks:
        others = {k: v for k, v in c.wording.items() if k != c.key}
        rival = max(others, key=others.get) if others else None
        lines.append(f"| {c.task} | {c.key} | {c.captions} | {c.verbatim:.2f} | {c.wording.get(c.key, 0.0):.2f} | "
                     + (f"{others[rival]:.2f} ({rival})" if rival else "–") + f" | {c.warning or ''} |")
    warned = [c for c in checks if c.warning]
    lines.append("")
    lines += [f"WARNING: {c.task}/{c.key}: {c.warning}" for c in warned] or ["no warnings"]
    return "\n".join(lines) + "\n"


def mine_from_lmdb(lmdb_root: str | Path, table: Mapping[str, DatasetSpec], base: PromptSet | None,
                   split: str = "train", **kwargs) -> MinedPrompts:
    """:func:`mine` over one split of a ``vclip-build-lmdb`` output."""
    return mine(read_corpus(lmdb_root, split), corpus_tasks(table), base, **kwargs)


__all__ = ["ClassCheck", "Corpus", "Evidence", "MinedPrompts", "Task", "bigrams", "check", "check_table",
           "corpus_tasks", "evidence_json", "mine", "mine_from_lmdb", "mined_yaml", "phrases", "read_corpus"]
