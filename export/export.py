"""vclip-export: turn a checkpoint into a safe, self-contained bundle (safetensors, JSON, model card, ONNX)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from cn_clip_ext.model.bundle import (CONFIG_FILE, TOWERS, BundleConfig, SourceInfo, file_sha256, resolve_bundle_folder,
                                      write_bundle)
from cn_clip_ext.cli import run_program, setup_logging
from cn_clip_ext.errors import UserError, excerpt
from cn_clip_ext.extras import require
from cn_clip_ext.evaluation.prompts import load_prompt_set
from cn_clip_ext.model.onnx import DEFAULT_OPSET, bundle_hook
from cn_clip_ext.model.transforms import PREPROCESS_MODES

PROG = "vclip-export"
logger = logging.getLogger(PROG)


def default_prompts() -> list[Path]:
    """The library's built-in prompt sets (``cn_clip_ext/evaluation/resources/prompts/*.yaml``)."""
    from cn_clip_ext.evaluation.resources import builtin_prompt_sets

    return builtin_prompt_sets()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export a trained VisionCLIP model as a bundle folder that loads without the training "
                    "stack and without unpickling: model.safetensors, config.json (architecture, "
                    "preprocessing, hashes of every file), vocab.txt, prompt sets, evaluation report, "
                    "README.md model card and, with --onnx, ONNX encoders checked against PyTorch.",
        epilog="example: vclip-export runs/tiny/checkpoints/latest.pt visionclip-bundle --onnx "
               "--report reports/tiny/report.json\n"
               "load it: model, preprocess, tokenizer = cn_clip_ext.load_pretrained('visionclip-bundle')",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path,
                   help="training checkpoint (latest.pt), cn_clip-format .pt (with --model) or an existing bundle")
    p.add_argument("out_dir", type=Path, help="bundle folder to create (written to a temporary folder, then renamed)")
    p.add_argument("--model", metavar="ARCH",
                   help="architecture of a checkpoint that does not record it, e.g. RN50@RoBERTa-wwm-ext-base-chinese")
    towers = p.add_mutually_exclusive_group()
    towers.add_argument("--image-only", action="store_true", help="export only the image tower")
    towers.add_argument("--text-only", action="store_true", help="export only the text tower")
    p.add_argument("--fp16", action="store_true",
                   help="store weights in float16 (half the size; loaded back as float32)")
    p.add_argument("--onnx", action="store_true",
                   help="also write image_encoder.onnx / text_encoder.onnx (dynamic batch), checked with onnxruntime")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--report", type=Path, metavar="REPORT_JSON",
                   help="a vclip-eval report.json to include; its metrics go into the model card. A report that "
                        "records other checkpoints than this one (by SHA-256) is refused")
    p.add_argument("--force-report", action="store_true",
                   help="include --report even when it was made from another checkpoint")
    p.add_argument("--prompts", type=Path, nargs="+", metavar="FILE",
                   help="prompt-set YAML/JSON files to include (default: the ones vclip-eval ships)")
    p.add_argument("--no-prompts", action="store_true", help="include no prompt sets")
    p.add_argument("--preprocess", choices=sorted(PREPROCESS_MODES),
                   help="record this preprocessing mode instead of the checkpoint's (cn_clip checkpoints: squash)")
    p.add_argument("--force", action="store_true",
                   help="replace OUT_DIR if it is a bundle (every file in it listed by its config.json); any other "
                        "folder is refused, never removed")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _load(args: argparse.Namespace):
    """``(cn_clip CLIP model, preprocess mode, source, towers available)`` for the input."""
    from cn_clip_ext.model.pretrained import load_pretrained

    if args.checkpoint.is_dir():
        model, _, _ = load_pretrained(args.checkpoint, model_name=args.model, preprocess=args.preprocess)
        cfg = BundleConfig.from_file(resolve_bundle_folder(args.checkpoint) / CONFIG_FILE)
        return model.clip, model.preprocess_mode, SourceInfo(**cfg.source), model.towers
    if not args.checkpoint.is_file():
        raise UserError(f"{args.checkpoint}: checkpoint not found")
    from cn_clip_ext.model.checkpoints import load_checkpoint_full

    loaded = load_checkpoint_full(args.checkpoint, args.model)
    mode = args.preprocess or loaded.config.get("preprocess") or ("fov" if loaded.is_visionclip else "squash")
    source = SourceInfo(str(args.checkpoint), file_sha256(args.checkpoint), loaded.step, loaded.epoch)
    return loaded.model, mode, source, TOWERS


def _check_report(path: Path, source: SourceInfo, force: bool) -> None:
    """Refuse (unless ``force``) a report whose rows were made from other checkpoints than ``source``."""
    from cn_clip_ext.files import read_structured

    data = read_structured(path, "evaluation report")
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not models:
        logger.warning("%s: the report does not record which checkpoints made it (an older vclip-eval); it cannot "
                       "be checked against %s", path, source.checkpoint)
        return
    made_from = {str(r.get("sha256")) for r in models.values() if isinstance(r, dict)}
    if source.sha256 in made_from:
        return
    paths = sorted(str(r.get("path")) for r in models.values() if isinstance(r, dict))
    message = (f"{path}: made from another checkpoint ({excerpt(paths, 120)}), not from {source.checkpoint} "
               f"(sha256 {source.sha256[:12]}…)")
    if not force:
        raise UserError(f"{message}; evaluate this checkpoint, or pass --force-report to include it anyway")
    logger.warning("%s; included because of --force-report", message)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        require("tokenizers", extra="export", purpose="writing the bundle's tokenizer.json")  # fail before loading
        if args.onnx:
            for module in ("onnx", "onnxruntime"):
                require(module, extra="export", purpose="--onnx")
        towers = ("image",) if args.image_only else ("text",) if args.text_only else TOWERS
        if args.prompts and args.no_prompts:
            raise UserError("--prompts and --no-prompts contradict each other")
        prompts = [] if args.no_prompts else (args.prompts or default_prompts())
        for path in prompts:
            if Path(path).is_file():
                load_prompt_set(path)  # a one-line UserError naming a file that is not a prompt set
        clip, mode, source, available = _load(args)
        if args.report is not None:
            _check_report(args.report, source, args.force_report)
        lacking = [t for t in towers if t not in available]
        if lacking:
            raise UserError(f"{args.checkpoint}: has no {lacking[0]} tower to export")
        out = write_bundle(clip, args.out_dir, source=source, preprocess=mode, towers=towers, fp16=args.fp16,
                           prompts=prompts, report=args.report,
                           onnx=bundle_hook(args.opset) if args.onnx else None, force=args.force)
        logger.info("done: load it with cn_clip_ext.load_pretrained(%r)", str(out))
        return 0

    return run_program(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
