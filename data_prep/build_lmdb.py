"""vclip-build-lmdb: pack SynFundus-1M (or any fundus CSV) into Chinese-CLIP LMDB splits.

    vclip-build-lmdb /data/SynFundus-1M --out /data/lmdb
    vclip-build-lmdb --csv ann.csv --image-root imgs --image-col path --text-col caption --out lmdb
    vclip-build-lmdb --out /data/lmdb --verify          # digest and check a finished build
    vclip-build-lmdb --patients data/synth/patients --out /data/lmdb-patients   # RET-CLIP, patients.csv

Re-running the same command resumes an interrupted build; the result is identical to an
uninterrupted one (compare the ``--verify`` digests).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import Sequence

from cn_clip_ext.cli import DefaultsHelpFormatter, bounded_int, run_program, setup_logging
from cn_clip_ext.files import DEFAULT_MAX_INPUT_BYTES
from cn_clip_ext.lmdb.digest import verify_output
from cn_clip_ext.lmdb.writer import BuildConfig, BuildResult, build_lmdb
from cn_clip_ext.layouts import PATIENT_COLUMNS, PATIENTS_CSV
from cn_clip_ext.lmdb.splits import SPLITS, SplitRatios
from cn_clip_ext.lmdb.images import ImageOptions
from cn_clip_ext.lmdb.rows import PATIENTS_KIND, InputSpec
from cn_clip_ext.errors import UserError

PROG = "vclip-build-lmdb"
logger = logging.getLogger(PROG)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="Outputs: OUT/{train,valid,test}/{imgs,pairs,labels.csv}, OUT/splits.csv, OUT/rejects.csv, "
               "OUT/summary.json, OUT/manifest.json. Bad rows go to rejects.csv with a reason; "
               "they never stop the build. A CSV with the columns " + ", ".join(PATIENT_COLUMNS) + " (or "
               "--patients) builds a patient-level (RET-CLIP) LMDB: one record per patient with both eyes.",
        formatter_class=DefaultsHelpFormatter)
    src = p.add_argument_group("input (a SynFundus-1M root, or a generic CSV)")
    src.add_argument("root", nargs="?", type=Path,
                     help="SynFundus-1M folder holding Fundus/ and SynFundus-1M_annotation.csv")
    src.add_argument("--csv", type=Path, help="a generic annotation CSV instead of ROOT")
    src.add_argument("--image-root", type=Path, help="folder the --image-col paths are relative to "
                                                     "(default: the CSV's folder)")
    src.add_argument("--image-col", default="file_name", help="column with the image path (generic CSV)")
    src.add_argument("--text-col", default="diagnosticAdvice", help="column with the caption (generic CSV)")
    src.add_argument("--encoding", help="CSV encoding (default: detect UTF-8, UTF-8 with BOM, UTF-16, GBK)")
    src.add_argument("--allow-outside-root", action="store_true",
                     help="with --csv: accept image paths outside --image-root (absolute, '..', symlinks); "
                          "otherwise such rows are rejected as path_outside_root")
    src.add_argument("--patients", action="store_true",
                     help=f"patient-level rows ({', '.join(PATIENT_COLUMNS)}); ROOT is then a folder holding "
                          f"{PATIENTS_CSV} (default: detected from the CSV's columns)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    split = p.add_argument_group("splits and shards")
    split.add_argument("--split", default=SplitRatios(), type=_ratios, help="train:valid:test ratios")
    split.add_argument("--seed", type=int, default=0, help="seed of the file-name hash that assigns splits")
    split.add_argument("--shards", type=bounded_int(1), default=1,
                       help="split the output into N shard folders (by file-name hash), e.g. one per node")
    split.add_argument("--shard-index", type=bounded_int(0), help="build only this shard (0-based; default: all)")
    img = p.add_argument_group("stored images")
    img.add_argument("--size", type=bounded_int(0), default=256, help="longest side of stored images (0: keep)")
    img.add_argument("--format", choices=("jpeg", "png"), default="jpeg", help="stored image format")
    img.add_argument("--quality", type=bounded_int(1, 100), default=95, help="JPEG quality (1-100)")
    img.add_argument("--convert-modes", action="store_true",
                     help="convert grey / palette / RGBA / 16-bit images to RGB instead of rejecting them")
    img.add_argument("--max-image-bytes", type=bounded_int(1), default=DEFAULT_MAX_INPUT_BYTES, metavar="N",
                     help="image files larger than this are rejected (file_too_large) before they are read")
    run = p.add_argument_group("running")
    run.add_argument("--workers", type=bounded_int(0), default=0, help="worker processes (0: all cores)")
    run.add_argument("--batch", type=bounded_int(1), default=512, help="rows per LMDB transaction")
    run.add_argument("--context-length", type=bounded_int(3), default=52,
                     help="for the caption truncation statistic")
    run.add_argument("--overwrite", action="store_true",
                     help="replace a build with other settings in OUT (only a folder holding a build of this "
                          "toolkit; anything else is refused)")
    run.add_argument("--verify", action="store_true",
                     help="after building (or alone, with only --out), check OUT: decode every image, compare "
                          "the content digest recorded by the build, print it")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _ratios(text: str) -> SplitRatios:
    try:
        return SplitRatios.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _input(args: argparse.Namespace) -> InputSpec | None:
    if args.root is not None and args.csv is not None:
        raise UserError("give either a SynFundus ROOT or --csv, not both")
    if args.allow_outside_root and args.csv is None:
        raise UserError("--allow-outside-root applies to --csv only: a SynFundus or patients ROOT keeps its "
                        "images inside it")
    kind = PATIENTS_KIND if args.patients else None
    if args.root is not None and args.patients:
        if not args.root.is_dir():
            raise UserError(f"{args.root}: no such folder (expected one holding {PATIENTS_CSV})")
        return InputSpec(args.root / PATIENTS_CSV, args.image_root or args.root, encoding=args.encoding, kind=kind)
    if args.root is not None:
        if not args.root.is_dir():
            raise UserError(f"{args.root}: no such SynFundus-1M folder")
        return dataclasses.replace(InputSpec.synfundus(args.root), encoding=args.encoding)
    if args.csv is not None:
        return InputSpec(args.csv, args.image_root or args.csv.parent, args.image_col, args.text_col,
                         encoding=args.encoding, kind=kind, allow_outside_root=args.allow_outside_root)
    return None


def _config(args: argparse.Namespace, spec: InputSpec) -> BuildConfig:
    try:
        return BuildConfig(
            input=spec, out=args.out, ratios=args.split, seed=args.seed,
            image=ImageOptions(args.size, args.format, args.quality, args.convert_modes, args.max_image_bytes),
            shards=args.shards, shard_index=args.shard_index, context_length=args.context_length,
            workers=args.workers or os.cpu_count() or 1, batch_rows=args.batch,
            progress=not args.no_progress, overwrite=args.overwrite)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _verify(out: Path) -> int:
    if not out.is_dir():
        raise UserError(f"{out}: no such output folder")
    report = verify_output(out)
    for problem in report.problems:
        logger.error("%s", problem)
    print(f"sha256:{report.digest}  {out}")
    if report.ok:
        logger.info("%s: %d images decoded, digest as recorded by the build", out, report.images)
    return 0 if report.ok else 1


def _report(results: Sequence[BuildResult]) -> None:
    """Counts in train/valid/test order; an empty result is an error, an empty split a warning."""
    for r in results:
        logger.info("%s: train/valid/test %s, rejected %d (see rejects.csv, summary.json)",
                    r.out, "/".join(str(r.counts[s]) for s in SPLITS), r.rejected)
        empty = [s for s in SPLITS if not r.counts[s]]
        if empty and len(empty) < len(SPLITS):
            logger.warning("%s: no samples in the %s split%s", r.out, "/".join(empty), "s" if len(empty) > 1 else "")
    if not any(sum(r.counts.values()) for r in results):
        rejected = sum(r.rejected for r in results)
        raise UserError(f"{results[0].out if len(results) == 1 else results[0].out.parent}: no sample was stored "
                        f"(all {rejected} rows rejected; the reasons are in rejects.csv)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        spec = _input(args)
        if spec is None:
            if not args.verify:
                raise UserError("give a SynFundus ROOT or --csv (or --verify to check an existing --out)")
            return _verify(args.out)
        results = build_lmdb(_config(args, spec))
        _report(results)
        return _verify(args.out) if args.verify else 0

    return run_program(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
