"""vclip-prompts: prompt sets in the training corpus's words.

``mine`` writes a prompt set (the plain.yaml format, evidence as comments and in a side JSON) whose
names are the caption phrases most specific to each class of each corpus task of the dataset
table; ``check`` says, per class, how much of a prompt set's wording that class's captions hold
against the other classes' captions, and warns where they hold none or less.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Sequence

from cn_clip_ext.cli import run_program, setup_logging
from cn_clip_ext.errors import UserError
from cn_clip_ext.evaluation import load_dataset_table, load_prompt_set
from cn_clip_ext.evaluation.mining import (check, check_table, corpus_tasks, evidence_json, mine, mined_yaml,
                                           read_corpus)
from cn_clip_ext.evaluation.resources import DATASETS_TABLE, prompt_set_path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lmdb", type=Path, required=True, help="a vclip-build-lmdb output (with labels.csv per split)")
    p.add_argument("--split", default="train", help="the split whose captions are read (default train)")
    p.add_argument("--max-captions", type=int, default=200_000,
                   help="read at most this many captions, a seeded sample (default 200000)")
    p.add_argument("--datasets-table", type=Path, default=DATASETS_TABLE,
                   help="dataset table whose synfundus entries are the tasks (default: the built-in one)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vclip-prompts", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mine", help="mine a prompt set from the corpus captions and labels")
    _common(m)
    m.add_argument("--out", type=Path, required=True, help="prompt set to write (YAML); evidence beside it in "
                                                          "OUT.evidence.json")
    m.add_argument("--base", default="plain", help="prompt set whose names classes without a mined phrase keep "
                                                   "(default plain)")
    m.add_argument("--min-count", type=int, default=5, help="captions of the class a phrase needs (default 5)")
    m.add_argument("--min-purity", type=float, default=0.8,
                   help="the class's share of the phrase's per-class frequencies (default 0.8)")
    m.add_argument("--per-class", type=int, default=8,
                   help="phrases per class at most (default 8); picking stops earlier when no phrase covers "
                        "--min-count more of the class's captions")
    m.add_argument("--force", action="store_true", help="replace OUT if it exists")
    c = sub.add_parser("check", help="how much of a prompt set's wording each class's captions hold")
    _common(c)
    c.add_argument("--prompts", default="plain", help="prompt set: a built-in name or a YAML/JSON file")
    c.add_argument("--json", type=Path, help="also write the check as JSON")
    c.add_argument("--strict", action="store_true", help="exit with status 1 when a class is flagged")
    return p


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()

    def body() -> int:
        if args.max_captions < 1:
            raise UserError(f"--max-captions must be at least 1, got {args.max_captions}")
        tasks = corpus_tasks(load_dataset_table(args.datasets_table))
        if args.command == "mine":
            if not 0 < args.min_purity <= 1 or args.min_count < 1 or args.per_class < 1:
                raise UserError("--min-purity must be in (0, 1], --min-count and --per-class at least 1")
            evidence = args.out.with_name(args.out.name + ".evidence.json")
            if args.out.suffix not in (".yaml", ".yml"):
                raise UserError(f"{args.out}: the mined prompt set is YAML (give a .yaml file)")
            if not args.force and (args.out.exists() or evidence.exists()):
                raise UserError(f"{args.out}: exists (use --force to replace it)")
            base = load_prompt_set(prompt_set_path(args.base))
            corpus = read_corpus(args.lmdb, args.split, args.max_captions)
            mined = mine(corpus, tasks, base, args.min_count, args.min_purity, args.per_class)
            _write_atomic(evidence, json.dumps(evidence_json(mined), indent=2, ensure_ascii=False))
            _write_atomic(args.out, mined_yaml(mined))
            print(mined_yaml(mined), end="")
            return 0
        prompts = load_prompt_set(prompt_set_path(args.prompts))
        checks = check(read_corpus(args.lmdb, args.split, args.max_captions), tasks, prompts)
        print(check_table(checks, prompts.name), end="")
        if args.json is not None:
            _write_atomic(args.json, json.dumps([c.as_dict() for c in checks], indent=2, ensure_ascii=False))
        return 1 if args.strict and any(c.warning for c in checks) else 0

    return run_program("vclip-prompts", body)


if __name__ == "__main__":
    raise SystemExit(main())
