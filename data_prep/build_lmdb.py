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

from cn_clip_ext.cli import run_program, setup_logging
from cn_clip_ext.lmdb.digest import verify_output
from cn_clip_ext.lmdb.writer import BuildConfig, build_lmdb
from cn_clip_ext.layouts import PATIENT_COLUMNS, PATIENTS_CSV
from cn_clip_ext.lmdb.splits import SplitRatios
from cn_clip_ext.lmdb.validate import PATIENTS_KIND, ImageOptions, InputSpec
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("input (a SynFundus-1M root, or a generic CSV)")
    src.add_argument("root", nargs="?", type=Path,
                     help="SynFundus-1M folder holding Fundus/ and SynFundus-1M_annotation.csv")
    src.add_argument("--csv", type=Path, help="a generic annotation CSV instead of ROOT")
    src.add_argument("--image-root", type=Path, help="folder the --image-col paths are relative to "
                                                     "(default: the CSV's folder)")
    src.add_argument("--image-col", default="file_name", help="column with the image path (generic CSV)")
    src.add_argument("--text-col", default="diagnosticAdvice", help="column with the caption (generic CSV)")
    src.add_argument("--encoding", help="CSV encoding (default: detect UTF-8, UTF-8 with BOM, UTF-16, GBK)")
    src.add_argument("--patients", action="store_true",
                     help=f"patient-level rows ({', '.join(PATIENT_COLUMNS)}); ROOT is then a folder holding "
                          f"{PATIENTS_CSV} (default: detected from the CSV's columns)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    split = p.add_argument_group("splits and shards")
    split.add_argument("--split", default="8:1:1", help="train:valid:test ratios")
    split.add_argument("--seed", type=int, default=0, help="seed of the file-name hash that assigns splits")
    split.add_argument("--shards", type=int, default=1,
                       help="split the output into N shard folders (by file-name hash), e.g. one per node")
    split.add_argument("--shard-index", type=int, help="build only this shard (0-based); default all")
    img = p.add_argument_group("stored images")
    img.add_argument("--size", type=int, default=256, help="longest side of stored images (0: keep)")
    img.add_argument("--format", choices=("jpeg", "png"), default="jpeg", help="stored image format")
    img.add_argument("--quality", type=int, default=95, help="JPEG quality")
    img.add_argument("--convert-modes", action="store_true",
                     help="convert grey / palette / RGBA / 16-bit images to RGB instead of rejecting them")
    run = p.add_argument_group("running")
    run.add_argument("--workers", type=int, default=0, help="worker processes (0: all cores)")
    run.add_argument("--batch", type=int, default=512, help="rows per LMDB transaction")
    run.add_argument("--context-length", type=int, default=52, help="for the caption truncation statistic")
    run.add_argument("--overwrite", action="store_true", help="replace a build with other settings in OUT")
    run.add_argument("--verify", action="store_true",
                     help="after building (or alone, with only --out), check OUT and print its content digest")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _input(args: argparse.Namespace) -> InputSpec | None:
    if args.root is not None and args.csv is not None:
        raise UserError("give either a SynFundus ROOT or --csv, not both")
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
                         encoding=args.encoding, kind=kind)
    return None


def _config(args: argparse.Namespace, spec: InputSpec) -> BuildConfig:
    try:
        return BuildConfig(
            input=spec, out=args.out, ratios=SplitRatios.parse(args.split), seed=args.seed,
            image=ImageOptions(args.size, args.format, args.quality, args.convert_modes),
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
    return 0 if report.ok else 1


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
        for r in results:
            logger.info("%s: train/valid/test %s, rejected %d (see rejects.csv, summary.json)",
                        r.out, "/".join(str(v) for v in r.counts.values()), r.rejected)
        return _verify(args.out) if args.verify else 0

    return run_program(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
