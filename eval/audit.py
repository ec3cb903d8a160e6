"""vclip-audit: are evaluation images (or near-copies of them) inside the training corpus?"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from cn_clip_ext.cli import device_arg, run_program, setup_logging
from cn_clip_ext.errors import UserError
from cn_clip_ext.extras import require
from cn_clip_ext.files import image_mb_arg, image_size_limit
from cn_clip_ext.outputs import check_replaceable
from cn_clip_ext.evaluation.resources import DATASETS_TABLE

PROG = "vclip-audit"
logger = logging.getLogger(PROG)


def build_parser() -> argparse.ArgumentParser:
    from cn_clip_ext.audit.hashing import MAX_HASH_DISTANCE

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Compare a training corpus with evaluation sets and report near-duplicates at two levels: "
                    "perceptual hashes of the vessel-enhanced field of view (Hamming distance of 512 bits; exact "
                    "and near copies) and nearest neighbours in an embedding space (cosine; altered copies). "
                    "Writes OUT/audit.json, audit.md, pairs.csv, exclude.txt (for vclip-eval --exclude), "
                    "contact_sheet.png and nn_distributions.png. Corpus hashes and embeddings are computed in "
                    "one streaming pass and cached in OUT/audit_cache (or --cache-dir), never inside the corpus. "
                    "When the corpus-vs-corpus baseline shows that a threshold cannot separate copies, the reports "
                    "say so first and exclude.txt is marked unreliable.",
        epilog="examples:\n"
               "  vclip-audit --corpus lmdb/ --data-root eval_data/ --out reports/audit\n"
               "  vclip-audit --corpus SynFundus-1M/Fundus --data fives=/data/FIVES "
               "--model visionclip-bundle --out reports/audit\n"
               "  vclip-eval --checkpoint visionclip-bundle --data-root eval_data/ "
               "--exclude reports/audit/exclude.txt --out reports/eval",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True, metavar="PATH",
                   help="training corpus: a vclip-build-lmdb output (all its splits), one LMDB split, an image "
                        "folder (recursive) or a CSV with an image-path column")
    p.add_argument("--splits", help="comma-separated LMDB splits to audit (default: every split present)")
    p.add_argument("--column", help="the corpus CSV's image-path column (default: path, image, file, ...)")
    p.add_argument("--data", action="append", default=[], metavar="NAME=ROOT",
                   help="an evaluation set of the dataset table and its root folder (repeatable)")
    p.add_argument("--data-root", type=Path, help="a folder holding evaluation sets under their table names")
    p.add_argument("--datasets-table", type=Path, default=DATASETS_TABLE,
                   help="YAML/JSON dataset table (default: vclip-eval's datasets.yaml)")
    enc = p.add_mutually_exclusive_group()
    enc.add_argument("--model", type=Path, metavar="PATH",
                     help="embedding level with this model's image tower: a bundle, a training checkpoint or a "
                          "cn_clip-format .pt (a generic encoder); default: the weight-free vessel descriptor")
    enc.add_argument("--no-embedding", action="store_true", help="hash level only")
    p.add_argument("--arch", help="architecture of a cn_clip-format checkpoint")
    p.add_argument("--max-hash-distance", type=int, default=MAX_HASH_DISTANCE,
                   help=f"copy threshold, Hamming distance of 512 bits (default {MAX_HASH_DISTANCE}, measured)")
    p.add_argument("--min-cosine", default="auto",
                   help="embedding threshold, or 'auto': the encoder's measured default or the corpus-vs-corpus "
                        "nearest-neighbour quantile, whichever is higher (default)")
    p.add_argument("--baseline-samples", type=int, default=1000,
                   help="corpus images queried for the corpus-vs-corpus baseline (default 1000)")
    p.add_argument("--baseline-quantile", type=float, default=0.999)
    p.add_argument("--k", type=int, default=5, help="neighbours kept per image and level")
    p.add_argument("--cache-dir", type=Path, help="cache root, shared between runs (default: OUT/audit_cache; "
                                                  "never inside the corpus)")
    p.add_argument("--no-cache", action="store_true", help="compute everything, write no cache")
    p.add_argument("--max-sheet-pairs", type=int, default=60, help="pairs shown on the contact sheet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="decoding and hashing processes (0: in this process)")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="for --model: cpu, cuda, cuda:N or auto (default: the GPU when there is one)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder for the reports; a later audit into it replaces the files its manifest "
                        "lists, and refuses to overwrite report files that no manifest lists")
    p.add_argument("--max-image-mb", type=image_mb_arg, metavar="MB",
                   help="refuse image files larger than this before reading them (default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _eval_roots(args: argparse.Namespace, table) -> dict[str, Path]:
    from cn_clip_ext.evaluation.datasets import chosen_roots

    return chosen_roots(table, args.data_root, args.data, args.datasets_table, "evaluation set")


def _cache_root(args: argparse.Namespace, corpus) -> Path:
    """``--cache-dir`` or ``OUT/audit_cache``; one line when that would be inside the user's corpus."""
    root = args.cache_dir or args.out / "audit_cache"
    if corpus.location is not None:
        inside = root.resolve()
        location = corpus.location.resolve()
        if inside == location or location in inside.parents:
            raise UserError(f"{root}: the audit cache would be inside the corpus {corpus.location}; "
                            "give --cache-dir (or --out) outside it")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        for module in ("imagehash", "matplotlib"):  # before the corpus is read
            require(module, extra="audit", purpose=PROG)
        from cn_clip_ext.audit import (AuditConfig, ModelEncoder, VesselEncoder, open_corpus, run_audit,
                                       write_audit_report)
        from cn_clip_ext.audit.report import AUDIT_KIND, FILES
        from cn_clip_ext.evaluation import load_dataset_table, load_eval_set

        if args.min_cosine == "auto":
            min_cosine = None
        else:
            try:
                min_cosine = float(args.min_cosine)
            except ValueError:
                raise UserError(f"--min-cosine {args.min_cosine!r}: expected a number or 'auto'") from None
        if args.arch and args.model is None:
            raise UserError("--arch only applies with --model")
        try:
            config = AuditConfig(max_hash_distance=args.max_hash_distance, min_cosine=min_cosine, k=args.k,
                                 baseline_samples=args.baseline_samples, baseline_quantile=args.baseline_quantile,
                                 batch_size=args.batch_size, workers=args.workers, progress=not args.quiet)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        check_replaceable(args.out, AUDIT_KIND, FILES)
        table = load_dataset_table(args.datasets_table)
        sets = {name: load_eval_set(table[name], root) for name, root in _eval_roots(args, table).items()}
        splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
        corpus = open_corpus(args.corpus, splits, args.column)
        if args.no_embedding:
            encoder = None
        elif args.model is not None:
            encoder = ModelEncoder(args.model, args.arch, args.device)
        else:
            encoder = VesselEncoder()
        cache_root = None if args.no_cache else _cache_root(args, corpus)
        logger.info("corpus %s: %d images; evaluation sets: %s; cache: %s", corpus.name, len(corpus),
                    ", ".join(f"{n} ({len(s)})" for n, s in sets.items()), cache_root or "off")
        with image_size_limit(args.max_image_mb):
            result = run_audit(corpus, sets, encoder, cache_root, config)
        files = write_audit_report(result, args.out, args.max_sheet_pairs)
        print(files["audit.md"].read_text(encoding="utf-8"))
        return 0

    return run_program(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
