"""vclip-eval: zero-shot, linear-probe and k-shot evaluation of checkpoints on fundus datasets in
their published layouts."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from cn_clip_ext import create_model, eval_transform, get_tokenizer
from cn_clip_ext.cli import device_arg, run_program, setup_logging
from cn_clip_ext.errors import UserError
from cn_clip_ext.evaluation.datasets import chosen_roots
from cn_clip_ext.extras import require
from cn_clip_ext.evaluation import (ClassEmbedder, encode_images, k_shot, linear_probe, load_dataset_table,
                                    load_eval_set, load_prompt_set, probe_split, write_reports, zero_shot_features)
from cn_clip_ext.evaluation.image_lists import apply_image_list
from cn_clip_ext.evaluation.multilabel import multilabel_zero_shot
from cn_clip_ext.evaluation.probe import PROBE_MODES
from cn_clip_ext.evaluation.prompts import PromptSet
from cn_clip_ext.evaluation.resources import DATASETS_TABLE, PROMPTS_DIR, prompt_set_path  # noqa: F401
from cn_clip_ext.model.factory import UnknownModelError
from cn_clip_ext.model.inference import decode_workers
from cn_clip_ext.evaluation.report import REPORT_FILES, REPORT_KIND
from cn_clip_ext.files import image_mb_arg, image_size_limit
from cn_clip_ext.model.bundle import file_sha256
from cn_clip_ext.model.checkpoints import load_checkpoint_full
from cn_clip_ext.outputs import check_replaceable
from cn_clip_ext.model.transforms import PREPROCESS_MODES
from cn_clip_ext.model.tripartite import SINGLE_EYE_HEADS

logger = logging.getLogger("vclip-eval")
UNTRAINED_SEED = 0
"""The seed of ``--untrained`` models' random initialisation (recorded in report.json)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vclip-eval",
        description="Zero-shot evaluation with Chinese prompt ensembles. Reports top-1, balanced accuracy "
                    "(ACA), macro-F1, quadratic kappa (graded tasks) and macro AUC with bootstrap 95% "
                    "intervals, beside the majority-class and uniform baselines.",
        epilog="example: vclip-eval --checkpoint runs/tiny/checkpoints/latest.pt "
               "--data fives=/data/FIVES --data refuge=/data/REFUGE --out reports/tiny")
    p.add_argument("--checkpoint", action="append", default=[], metavar="PATH[=LABEL]",
                   help="training or cn_clip-format checkpoint (repeatable); LABEL names its table row")
    p.add_argument("--untrained", action="append", default=[], metavar="ARCH",
                   help="also evaluate this architecture randomly initialised (repeatable)")
    p.add_argument("--models", type=Path, metavar="FILE",
                   help="models.yaml: models of any family (visionclip, cn_clip, retclip, open_clip, flair; "
                        "entries label, family, path, options, prompts) evaluated on every dataset in one "
                        "Table-1 table, each with its own preprocessing and prompts in its own language")
    p.add_argument("--model", help="architecture of checkpoints that do not record it, e.g. "
                                   "RN50@RoBERTa-wwm-ext-base-chinese (RET-CLIP weights default to "
                                   "ViT-B-16@RoBERTa-wwm-ext-base-chinese)")
    p.add_argument("--single-eye-head", choices=sorted(SINGLE_EYE_HEADS), default="global",
                   help="for tripartite models (RET-CLIP weights, patient-data training): the head that embeds "
                        "one eye image and the prompts; global (default): the patient head with the image as a "
                        "one-eyed patient")
    p.add_argument("--data", action="append", default=[], metavar="NAME=ROOT",
                   help="a dataset of the table and its root folder (repeatable)")
    p.add_argument("--data-root", type=Path, help="a folder holding datasets under their table names "
                                                  "(messidor2/, fives/, refuge/ ...): every one found is used")
    p.add_argument("--datasets-table", type=Path, default=DATASETS_TABLE,
                   help="YAML/JSON dataset table (default: the built-in table)")
    p.add_argument("--prompts", default="plain",
                   help="prompt set: a built-in set name (plain, expert), a YAML/JSON file, or mined:LMDB (mined "
                        "on the fly from a vclip-build-lmdb output's train captions, as vclip-prompts mine does)")
    p.add_argument("--corpus-lmdb", type=Path, metavar="LMDB",
                   help="print how much of the prompt set's wording each class's captions in this training LMDB "
                        "hold (vclip-prompts check), with a warning per class they do not speak for")
    p.add_argument("--preprocess", choices=sorted(PREPROCESS_MODES),
                   help="override the preprocessing recorded in each checkpoint or bundle (untrained models: fov); "
                        "fov: crop to the field of view and pad; squash: cn_clip's resize")
    p.add_argument("--max-image-mb", type=image_mb_arg, metavar="MB",
                   help="refuse image files larger than this before reading them (default 256)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="images per forward pass (default 64; at most 16 on the CPU, where larger "
                        "batches are no faster and start the model later)")
    p.add_argument("--workers", type=int, help="image decoding processes (default: 2 on the CPU; on a GPU up to 8, "
                                               "one core left free)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="cpu, cuda, cuda:N or auto (default: the GPU when there is one)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder for the reports; a later evaluation into it replaces the files its "
                        "manifest lists, and refuses to overwrite report files that no manifest lists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--image-list", action="append", default=[], metavar="NAME=FILE",
                   help="evaluate dataset NAME on the images a list names (a CSV with an 'image' column, such as "
                        "FLAIR's partition tables, or one path a line); repeatable")
    p.add_argument("--exclude", type=Path, metavar="FILE",
                   help="image references to leave out (vclip-audit's exclude.txt): each affected dataset is "
                        "also reported without them, as 'NAME (excl. N suspicious)'")
    g = p.add_argument_group("linear probe and k-shot (logistic regression on frozen image features)")
    g.add_argument("--probe", type=_probe_modes, default=(), metavar="MODES",
                   help="also run 'linear', 'kshot' or 'linear,kshot' (zero-shot always runs)")
    g.add_argument("--shots", type=_int_list, default=(1, 4, 16), metavar="K,K,...",
                   help="images per class for --probe kshot (default 1,4,16)")
    g.add_argument("--probe-seed", type=int, default=0,
                   help="seed of the stratified train/test split and of the first k-shot draw")
    g.add_argument("--probe-seeds", type=int, default=5,
                   help="k-shot draws per k (seeds S..S+N-1), reported as mean ± sd (default 5)")
    g.add_argument("--probe-train-fraction", type=float, default=0.5,
                   help="training share of each class where a dataset has no published split (default 0.5; "
                        "FIVES uses its train/test folders)")
    return p


def _probe_modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in PROBE_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"expected {' or '.join(PROBE_MODES)} (comma-separated), got {text!r}")
    return modes


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,4,16, got {text!r}")
    return values


def _prompt_path(value: str) -> Path:
    return prompt_set_path(value)  # the Chinese sets: every model here is of the cn_clip family


def _prompt_set(value: str, table) -> PromptSet:
    """``--prompts``: a built-in set, a file, or ``mined:LMDB`` (classes without a mined phrase keep
    the plain set's names)."""
    if value.startswith("mined:"):
        from cn_clip_ext.evaluation.mining import mine_from_lmdb

        return mine_from_lmdb(value[len("mined:"):], table, load_prompt_set(_prompt_path("plain"))).prompts
    return load_prompt_set(_prompt_path(value))


def _datasets(args: argparse.Namespace, table) -> dict[str, Path]:
    return chosen_roots(table, args.data_root, args.data, args.datasets_table, "dataset")


def _image_lists(args: argparse.Namespace, sets: dict) -> dict:
    """``--image-list NAME=FILE``: dataset NAME restricted to the listed images."""
    out = {}
    for item in args.image_list:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise UserError(f"--image-list {item!r}: expected NAME=FILE")
        if name not in sets:
            raise UserError(f"--image-list {item!r}: {name!r} is not a dataset given with --data (given: {sorted(sets)})")
        out[name] = apply_image_list(sets[name], path)
    return out


def _models(args: argparse.Namespace):
    """Yield ``(label, model, architecture)`` one at a time (one model in memory at once)."""
    for label, model, arch, _ in _sourced_models(args):
        yield label, model, arch


def _sourced_models(args: argparse.Namespace):
    """Yield ``(label, model, architecture, record)`` one at a time (one model in memory at once);
    ``record`` says where the model came from (path, SHA-256, step, seed) and which preprocessing
    it is evaluated with: the one recorded in the checkpoint or bundle unless ``--preprocess``."""
    forced = getattr(args, "preprocess", None)
    for item in args.checkpoint:
        path, sep, label = item.partition("=")
        if Path(path).is_dir():  # an exported bundle (vclip-export)
            from cn_clip_ext.model.bundle import BundleConfig
            from cn_clip_ext.model.pretrained import load_pretrained

            model, _, _ = load_pretrained(path, device=args.device, model_name=args.model, preprocess=forced)
            arch = model.vclip_config.name
            source = BundleConfig.from_file(Path(path) / "config.json").source
            record = {"kind": "bundle", "path": str(Path(path).resolve()), "sha256": source.get("sha256"),
                      "step": source.get("step"), "seed": source.get("seed"),
                      "source_checkpoint": source.get("checkpoint"), "preprocess": model.preprocess_mode}
        else:
            loaded = load_checkpoint_full(path, args.model, args.device)
            model, arch = loaded.model, loaded.name
            mode = forced or loaded.config.get("preprocess") or ("fov" if loaded.is_visionclip else "squash")
            record = {"kind": "checkpoint", "path": str(Path(path).resolve()), "sha256": file_sha256(path),
                      "step": loaded.step, "seed": loaded.config.get("seed"), "preprocess": mode}
        inner = getattr(model, "clip", model)
        if hasattr(inner, "set_single_eye_head"):
            inner.set_single_eye_head(args.single_eye_head)
            logger.info("%s: tripartite model, single-eye head %r (%s)", path, args.single_eye_head,
                        SINGLE_EYE_HEADS[args.single_eye_head].description)
        record["preprocess_source"] = "--preprocess" if forced else "recorded"
        yield (label if sep else path), model, arch, {"architecture": arch, **record}
    for arch in args.untrained:
        try:
            model = create_model(arch, seed=UNTRAINED_SEED, device=args.device).eval()
        except UnknownModelError as exc:
            raise UserError(str(exc)) from None
        yield f"{arch} (untrained)", model, arch, {
            "architecture": arch, "kind": "untrained", "path": None, "sha256": None, "step": 0,
            "seed": UNTRAINED_SEED, "preprocess": forced or "fov",
            "preprocess_source": "--preprocess" if forced else "default"}


def _eval_sets(args: argparse.Namespace, table=None) -> dict:
    table = load_dataset_table(args.datasets_table) if table is None else table
    sets = {name: load_eval_set(table[name], root) for name, root in _datasets(args, table).items()}
    sets.update(_image_lists(args, sets))
    if args.exclude is not None:
        from cn_clip_ext.audit.exclude import exclusion_sets

        sets.update(exclusion_sets(sets, args.exclude))
    for name, s in sets.items():
        logger.info("%s: %d images, classes %s", name, len(s), list(s.classes))
    return sets


def _table1(args: argparse.Namespace) -> int:
    """``--models FILE``: every model of the file on every dataset, one Table-1 table."""
    from cn_clip_ext.evaluation.table1 import METRIC_NOTE, evaluate_entry, read_models, table1_markdown

    if args.checkpoint or args.untrained or args.probe:
        raise UserError("--models evaluates the models of its file zero-shot: leave out --checkpoint, "
                        "--untrained and --probe")
    entries = read_models(args.models)
    sets = _eval_sets(args)
    workers = decode_workers(args.batch_size, args.workers, args.device)
    check_replaceable(args.out, REPORT_KIND, REPORT_FILES)
    with image_size_limit(args.max_image_mb):
        runs = [evaluate_entry(e, sets, device=args.device, batch_size=args.batch_size, workers=workers,
                               bootstrap=args.bootstrap, progress=not args.quiet) for e in entries]
    records = {run.entry.label: {**run.to_dict(), "sha256": file_sha256(run.entry.path)
                                 if run.entry.path.is_file() else None} for run in runs}
    meta = {"mode": "table1", "bootstrap": args.bootstrap, "metric_note": METRIC_NOTE}
    write_reports({run.entry.label: dict(run.results) for run in runs}, sets, args.out, meta=meta,
                  models=records, table=table1_markdown(runs))
    print((args.out / "table.md").read_text(encoding="utf-8"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()

    def body() -> int:
        if args.probe:  # before any model or image is loaded
            require("sklearn", extra="eval", purpose="--probe")
        if args.models is not None:
            return _table1(args)
        if not args.checkpoint and not args.untrained:
            raise UserError("nothing to evaluate: give --checkpoint PATH, --untrained ARCH or --models FILE")
        table = load_dataset_table(args.datasets_table)
        prompts = _prompt_set(args.prompts, table)
        if args.corpus_lmdb is not None:
            from cn_clip_ext.evaluation.mining import check, check_table, corpus_tasks, read_corpus

            checks = check(read_corpus(args.corpus_lmdb), corpus_tasks(table), prompts)
            print(check_table(checks, prompts.name))
        sets = _eval_sets(args, table)
        workers = decode_workers(args.batch_size, args.workers, args.device)
        if not 0 < args.probe_train_fraction < 1:
            raise UserError(f"--probe-train-fraction must be between 0 and 1, got {args.probe_train_fraction}")
        splits = {name: probe_split(s, args.probe_train_fraction, args.probe_seed) for name, s in sets.items()
                  if not s.multi_label} if args.probe else {}
        seeds = tuple(range(args.probe_seed, args.probe_seed + max(1, args.probe_seeds)))
        check_replaceable(args.out, REPORT_KIND, REPORT_FILES)
        results, linear, kshot, records, multilabel = {}, {}, {}, {}, {}
        for label, model, arch, record in _sourced_models(args):
            model.eval()
            records[label] = record
            logger.info("%s: preprocessing %s (%s)", label, record["preprocess"], record["preprocess_source"])
            size = model.vclip_config.image_size
            transform = eval_transform(size, preprocess=record["preprocess"])
            tokenizer = get_tokenizer(arch)
            embedder = ClassEmbedder(model, tokenizer, prompts, args.device)  # shared classes encoded once
            results[label], linear_rows, kshot_rows = {}, {}, {}
            for name, s in sets.items():
                with image_size_limit(args.max_image_mb):
                    feats = encode_images(model, s, transform, args.batch_size, workers, args.device,
                                          progress=not args.quiet)
                if s.multi_label:
                    m = multilabel.setdefault(label, {})[name] = multilabel_zero_shot(
                        model, tokenizer, s, prompts, feats, args.device, args.bootstrap, embedder)
                    logger.info("%s on %s (multi-label): macro AUC %.3f, mAP %.3f", label, name,
                                m.metrics["macro_auc"], m.metrics["map"])
                    if args.probe:
                        logger.warning("%s: multi-label; no linear probe or k-shot", name)
                    continue
                r = results[label][name] = zero_shot_features(model, tokenizer, s, prompts, feats, args.device,
                                                              args.bootstrap, embedder)
                logger.info("%s on %s: balanced accuracy %.3f, top-1 %.3f", label, name,
                            r.metrics["balanced_accuracy"], r.metrics["top1"])
                if not args.probe:
                    continue
                split = splits[name]
                if not split.train or not split.test:
                    logger.warning("%s: no training or no test images for the probe; skipped", name)
                    continue
                x = feats.numpy()
                if "linear" in args.probe:
                    r = linear_rows[name] = linear_probe(x, s, split, args.bootstrap, args.probe_seed)
                    logger.info("%s on %s, linear probe (C=%g, %d train / %d test, %s split): balanced accuracy "
                                "%.3f", label, name, r.extra["C"], len(split.train), len(split.test),
                                split.source, r.metrics["balanced_accuracy"])
                if "kshot" in args.probe:
                    kshot_rows[name] = [k_shot(x, s, split, k, seeds) for k in args.shots]
            if linear_rows:
                linear[label] = linear_rows
            if kshot_rows:
                kshot[label] = kshot_rows
        meta = {"prompts": prompts.name, "preprocess": args.preprocess or "recorded", "bootstrap": args.bootstrap}
        if args.probe:
            meta["probe"] = {"modes": list(args.probe), "seed": args.probe_seed, "kshot_seeds": list(seeds),
                             "shots": list(args.shots), "train_fraction": args.probe_train_fraction,
                             "splits": {n: sp.source for n, sp in splits.items()}}
        if args.image_list:
            meta["image_lists"] = dict(item.partition("=")[::2] for item in args.image_list)
        write_reports(results, sets, args.out, meta=meta, linear=linear or None, kshot=kshot or None,
                      models=records, multilabel=multilabel or None)
        print((args.out / "table.md").read_text(encoding="utf-8"))
        return 0

    return run_program("vclip-eval", body)


if __name__ == "__main__":
    raise SystemExit(main())
