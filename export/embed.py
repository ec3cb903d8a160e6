"""vclip-embed: embed a folder or CSV of fundus images, or a file of captions, into .npy + index.csv."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from cn_clip_ext.cli import device_arg, run_program, setup_logging
from cn_clip_ext.errors import UserError
from cn_clip_ext.files import image_mb_arg, image_size_limit
from cn_clip_ext.outputs import check_replaceable
from cn_clip_ext.model.inference import decode_workers
from cn_clip_ext.model.transforms import PREPROCESS_MODES

PROG = "vclip-embed"
logger = logging.getLogger(PROG)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Embed images or captions with a trained VisionCLIP model. Writes OUT/embeddings.npy "
                    "(float32, L2-normalised, one row per input), OUT/index.csv (which input each row is) and, "
                    "for images, OUT/skipped.csv (unreadable images and why; they do not stop the run).",
        epilog="examples:\n"
               "  vclip-embed --model visionclip-bundle --images fundus_photos/ --out emb/photos\n"
               "  vclip-embed --model visionclip-bundle --images list.csv --column path --out emb/list\n"
               "  vclip-embed --model runs/tiny/checkpoints/latest.pt --captions captions.txt --out emb/captions",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, metavar="PATH",
                   help="a bundle folder (vclip-export), a training checkpoint or a cn_clip-format .pt")
    p.add_argument("--arch", metavar="ARCH", help="architecture of a cn_clip-format checkpoint, "
                                                  "e.g. RN50@RoBERTa-wwm-ext-base-chinese")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, metavar="DIR|CSV",
                     help="a folder (searched recursively) or a CSV with an image-path column")
    src.add_argument("--captions", type=Path, metavar="TXT", help="a UTF-8 text file, one caption per line")
    p.add_argument("--column", help="the CSV's image-path column (default: path, image, image_path, file, ...)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder; a later run into it replaces the files its manifest lists, and refuses "
                        "to overwrite embedding files that no manifest lists")
    p.add_argument("--max-image-mb", type=image_mb_arg, metavar="MB",
                   help="refuse image files larger than this before reading them (default 256)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="images (captions: texts) per forward pass (default 64; images at most 16 on the CPU, "
                        "where larger batches are no faster)")
    p.add_argument("--workers", type=int, help="image decoding processes (0: in this process; default: 2 on the "
                                               "CPU, on a GPU up to 8, one core left free)")
    p.add_argument("--preprocess", choices=sorted(PREPROCESS_MODES),
                   help="override the model's recorded preprocessing mode")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="cpu, cuda, cuda:N or auto (default: the GPU when there is one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        from cn_clip_ext.model import embed
        from cn_clip_ext.model.pretrained import load_pretrained

        workers = decode_workers(args.batch_size, args.workers, args.device)
        check_replaceable(args.out, embed.EMBED_KIND, embed.OUTPUT_FILES)
        if args.captions is not None:
            captions = embed.captions_from_file(args.captions)
            model, _, _ = load_pretrained(args.model, device=args.device, model_name=args.arch)
            result = embed.embed_captions(model, captions, args.out, args.batch_size, progress=not args.quiet)
        else:
            if args.images.is_dir():
                items = embed.images_from_folder(args.images)
            elif args.images.suffix.lower() == ".csv":
                items = embed.images_from_csv(args.images, args.column)
            else:
                raise UserError(f"{args.images}: --images must be a folder or a .csv file")
            model, preprocess, _ = load_pretrained(args.model, device=args.device, model_name=args.arch,
                                                   preprocess=args.preprocess)
            with image_size_limit(args.max_image_mb):
                result = embed.embed_images(model, preprocess, items, args.out, args.batch_size, workers,
                                            progress=not args.quiet)
            if result.skipped:
                logger.warning("%d of %d images skipped as unreadable: see %s", len(result.skipped), len(items),
                               args.out / embed.SKIPPED_FILE)
        print(f"{result.count} embeddings of width {result.dim} -> {result.embeddings}")
        return 0

    return run_program(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
