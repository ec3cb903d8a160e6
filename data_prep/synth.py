"""vclip-synth: write the synthetic SynFundus-1M corpus and evaluation sets (no downloads).

Examples::

    vclip-synth data/synth --n-images 2000 --n-eval 200 --workers 4
    vclip-synth data/synth --n-images 500 --no-eval           # corpus only
    vclip-synth data/synth --no-corpus --eval-sets refuge     # one evaluation set
    vclip-synth data/synth --no-corpus --no-eval --published all --n-eval 100   # APTOS-2019, IDRiD, ... lookalikes
    vclip-synth data/synth --no-corpus --no-eval --patients 500   # paired eyes + reports (RET-CLIP)
"""
from __future__ import annotations

import argparse
import errno
import logging
import tempfile
from pathlib import Path
from typing import Sequence

from cn_clip_ext.cli import DefaultsHelpFormatter, run_program, setup_logging
from cn_clip_ext.layouts import EVAL_LAYOUTS, PATIENTS_CSV, PATIENTS_DIR, SYNFUNDUS_CSV, SYNFUNDUS_IMAGE_DIR
from cn_clip_ext.synth.generator import ID_OFFSET, SynthConfig, generate
from cn_clip_ext.synth.published import PUBLISHED_WRITERS
from cn_clip_ext.errors import UserError

PROG = "vclip-synth"
logger = logging.getLogger(PROG)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Write a synthetic SynFundus-1M lookalike (procedural fundus photos with Chinese "
                    "captions) and MESSIDOR-2, FIVES and REFUGE lookalikes in their published layouts. "
                    "The same seed always gives byte-identical files.",
        epilog=f"Layout: OUT_DIR/{SYNFUNDUS_IMAGE_DIR}/{{id}}.png, OUT_DIR/{SYNFUNDUS_CSV}, "
               + ", ".join(f"OUT_DIR/{lay.folder}/" for lay in EVAL_LAYOUTS.values())
               + f"; with --patients, OUT_DIR/{PATIENTS_DIR}/{PATIENTS_CSV} (patient_id, left_image, "
                 "right_image, report) and its eye photos.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("out_dir", metavar="OUT_DIR",
                   help="folder to write into (created if missing): an empty folder or one vclip-synth wrote "
                        "before; any other folder is refused, and one run at a time writes it")
    p.add_argument("--n-images", type=int, default=200, metavar="N", help="SynFundus corpus images")
    p.add_argument("--n-eval", type=int, default=60, metavar="N", help="images per evaluation set")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (>= 0)")
    p.add_argument("--size", type=int, default=512, metavar="PX", help="image side in pixels (>= 32)")
    p.add_argument("--workers", type=int, default=1, metavar="W", help="rendering processes")
    p.add_argument("--caption-noise", type=float, default=0.03, metavar="P",
                   help="probability a caption drops or swaps a finding")
    p.add_argument("--low-quality-rate", type=float, default=0.06, metavar="P",
                   help="share of blurred/dark/hazy corpus photos")
    p.add_argument("--id-offset", type=int, default=ID_OFFSET, metavar="K", help="first corpus image id")
    p.add_argument("--patients", type=int, default=0, metavar="N",
                   help="also write N patients (both eyes, one report each) for RET-CLIP mode")
    p.add_argument("--missing-eye-rate", type=float, default=0.1, metavar="P",
                   help="share of patients with one eye photo missing")
    p.add_argument("--eval-sets", nargs="+", default=list(EVAL_LAYOUTS), choices=list(EVAL_LAYOUTS),
                   metavar="NAME", help=f"evaluation sets to write, of {', '.join(EVAL_LAYOUTS)}")
    p.add_argument("--published", nargs="+", default=[], choices=[*PUBLISHED_WRITERS, "all"], metavar="NAME",
                   help="also write lookalikes of further published datasets in their layouts (--n-eval images "
                        f"each): {', '.join(PUBLISHED_WRITERS)}, or all")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation sets")
    p.add_argument("--no-corpus", action="store_true", help="skip the SynFundus corpus")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _validate(args: argparse.Namespace) -> None:
    """One-line errors naming the offending option."""
    for flag, value, ok, need in (
        ("--n-images", args.n_images, args.n_images >= 0, ">= 0"),
        ("--n-eval", args.n_eval, args.n_eval >= 0, ">= 0"),
        ("--seed", args.seed, args.seed >= 0, ">= 0"),
        ("--size", args.size, args.size >= 32, "at least 32 pixels"),
        ("--workers", args.workers, args.workers >= 1, ">= 1"),
        ("--id-offset", args.id_offset, args.id_offset >= 0, ">= 0"),
        ("--patients", args.patients, args.patients >= 0, ">= 0"),
        ("--missing-eye-rate", args.missing_eye_rate, 0 <= args.missing_eye_rate <= 1, "in [0, 1]"),
        ("--caption-noise", args.caption_noise, 0 <= args.caption_noise <= 1, "in [0, 1]"),
        ("--low-quality-rate", args.low_quality_rate, 0 <= args.low_quality_rate <= 1, "in [0, 1]"),
    ):
        if not ok:
            raise UserError(f"{flag} must be {need}, got {value}")


def _check_out_dir(out: Path) -> None:
    """Fail early, in one line, when ``out`` cannot be created or written."""
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UserError(f"{out}: cannot create the output folder: {existing} is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UserError(f"{out}: output folder is not writable ({exc.strerror or exc})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vclip-synth``; returns the exit status."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        setup_logging(args.verbose)
        _validate(args)
        try:
            config = SynthConfig(n_images=args.n_images, n_eval=args.n_eval, seed=args.seed, size=args.size,
                                 caption_noise=args.caption_noise, low_quality_rate=args.low_quality_rate,
                                 id_offset=args.id_offset, n_patients=args.patients,
                                 missing_eye_rate=args.missing_eye_rate)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        out = Path(args.out_dir)
        _check_out_dir(out)
        eval_sets = [] if args.no_eval else list(dict.fromkeys(args.eval_sets))
        published = list(PUBLISHED_WRITERS) if "all" in args.published else args.published
        try:
            written = generate(out, config, workers=args.workers, corpus=not args.no_corpus,
                               eval_sets=eval_sets, progress=not args.no_progress, published_sets=published)
        except OSError as exc:
            where = exc.filename or out
            if exc.errno == errno.ENOSPC:
                raise UserError(f"{where}: no space left on device") from None
            raise UserError(f"{where}: cannot write ({exc.strerror or exc})") from None
        for name, path in written.items():
            logger.info("%s: %s", name, path)
        if not written:
            logger.warning("nothing to write (check --n-images/--n-eval/--patients/--no-corpus/--no-eval)")
        return 0

    return run_program(PROG, body)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
