"""vclip-train: train VisionCLIP (cn_clip's CLIP) from scratch, on CPU or GPUs, under torchrun.

The same command runs everywhere; torchrun's environment decides the process layout::

    vclip-train --preset tiny --data toy:256 --output-dir runs/demo            # 1 CPU process
    torchrun --nproc_per_node 2 -m vclip_train.train --preset tiny --data ...  # 2 CPU (gloo)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d \\
        --rdzv-endpoint $MASTER_ADDR:29500 -m vclip_train.train --data /data/lmdb  # 16 GPUs (NCCL)

Configuration: defaults (the paper's recipe, or ``--preset tiny``) < ``--config FILE`` (JSON or
YAML) < the flags below. The final configuration is saved as ``OUTPUT_DIR/config.json``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from dataclasses import fields
from typing import Sequence

from cn_clip_ext.cli import run_program, setup_logging
from cn_clip_ext.errors import UserError
from cn_clip_ext.training.config import TrainConfig, _strip_optional, bounds_of, parse_value

PROG = "vclip-train"
EPILOG = """\
Resume an interrupted run with '--resume auto' and the same --output-dir. A folder that holds another
run is refused: continue it (--resume auto), choose another --output-dir, or pass --overwrite to move
it aside (renamed, never deleted). A resume that changes a key shaping the training (batch, lr, seed,
model, schedule ...) needs --allow-config-change.

Exit status: 0 done; 2 bad input, an unwritable output or a diverged (NaN) loss, with a one-line
message; 75 stopped by SIGTERM or SIGUSR1 (SLURM preemption, scancel, time limit) after saving a
checkpoint at the next optimizer step: rerun with --resume auto to continue exactly; 130 Ctrl-C."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value: object) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


def _help(name: str, paper: TrainConfig, tiny: TrainConfig) -> str:
    """A key's help with both presets' defaults (once each; ``%`` escaped for argparse)."""
    text = TrainConfig.help_of(name)
    bounds = bounds_of(name).describe()
    if bounds:
        text += f"; {bounds}"
    a, b = getattr(paper, name), getattr(tiny, name)
    if a is not None or b is not None:
        text += f" (default: {_shown(a)}" + (f"; --preset tiny: {_shown(b)})" if a != b else ")")
    return text.replace("%", "%%")


def _arg_type(name: str):
    """argparse ``type`` for key ``name``: the config's own coercion and bounds, at parse time."""
    def convert(text: str) -> object:
        try:
            return parse_value(name, text)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names the type in some messages
    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0] + " Reads RANK/WORLD_SIZE/LOCAL_RANK from torchrun, or "
                           "SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID when srun starts one task per GPU.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML file of config keys (flags override it)")
    parser.add_argument("--preset", choices=("paper", "tiny"), default="paper",
                        help="starting defaults: the paper's RN50+RoBERTa recipe (default), or the CPU demo")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    hints = typing.get_type_hints(TrainConfig)
    paper, tiny = TrainConfig(), TrainConfig.tiny()
    group = parser.add_argument_group("training config (keys of config.json)")
    for f in fields(TrainConfig):
        tp, _ = _strip_optional(hints[f.name])
        helptext = _help(f.name, paper, tiny)
        if tp is bool:
            group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=helptext)
        else:
            group.add_argument(_flag(f.name), dest=f.name, default=None, metavar=f.name.upper(),
                               type=_arg_type(f.name), help=helptext)
    return parser


def default_zeroshot_files() -> dict[str, str]:
    """The library's plain prompt set and dataset table, so validation and evaluation share prompts."""
    from cn_clip_ext.evaluation.resources import DATASETS_TABLE, PROMPTS_DIR

    return {"zeroshot_prompts": str(PROMPTS_DIR / "plain.yaml"), "zeroshot_table": str(DATASETS_TABLE)}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Preset, then the config file, then explicit flags; zero-shot prompt files default to vclip-eval's."""
    config = TrainConfig.tiny() if args.preset == "tiny" else TrainConfig()
    if args.config:
        config = TrainConfig.from_file(args.config, base=config)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    config = config.override(**overrides) if overrides else config
    missing = {k: v for k, v in default_zeroshot_files().items() if getattr(config, k) is None}
    return config.override(**missing) if missing else config


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) != "0" and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)  # one rank's INFO is enough

    def body() -> int:
        from cn_clip_ext.training import train
        from cn_clip_ext.training.preemption import Preempted

        try:
            train(config_from_args(args))
        except Preempted as stop:
            sys.stderr.write(f"{PROG}: {stop}\n")
            return stop.exit_status
        return 0

    return run_program(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
