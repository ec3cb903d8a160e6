"""The typed training configuration: one frozen dataclass, JSON/YAML files, CLI overrides.

Defaults describe the paper's set-up (ResNet-50 + RoBERTa-wwm-ext-base-chinese trained from
scratch on SynFundus with the CLIP/Chinese-CLIP contrastive recipe). :meth:`TrainConfig.tiny`
is the CPU demo configuration used by ``run_scripts/train_tiny_cpu.sh`` and the tests.

GPU memory of the paper's set-up (RN50@RoBERTa-wwm-ext-base-chinese, 224 px, context 52,
``batch_size=128`` per GPU, bf16 autocast, AdamW): about 141 M parameters, so weights + grads +
AdamW moments take ~2.3 GiB in fp32; activations at 128 samples/GPU add roughly 10-14 GiB, so
expect a peak of about 14-18 GiB per GPU (fits a 24 GiB card; ``batch_size=256`` needs ~30 GiB,
fine on 40/80 GiB A100/H100). ``grad_checkpointing=True`` cuts activations by about 3x. These
are estimates from parameter counts and activation sizes, not yet measured on a GPU.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import UserError, excerpt
from ..files import read_structured
from ..model.factory import VISIONCLIP, VISIONCLIP_TINY
from ..model.transforms import PREPROCESS_MODES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TOY_DATA_PREFIXES = ("toy", "toy-patients")
DERIVED_KEY = "derived"
"""The ``config.json`` entry holding what a run derived from its keys (not itself a key)."""
"""``data`` specs of generated in-memory sets (``toy:N`` pairs, ``toy-patients:N`` patients)."""
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class Bounds:
    """The values one config key accepts; checked whenever a config is built, so a flag is refused
    at parse time and a config file when it is read.

    Numbers must lie within ``ge``/``gt``/``le``/``lt`` (floats must also be finite); strings must be
    one of ``choices`` or pass ``check`` (a function returning what is wrong, or ``None``).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (``None``: nothing, or an unset optional key)."""
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number (got {value})"
        for limit, ok, sign in ((self.ge, lambda v, x: v >= x, ">="), (self.gt, lambda v, x: v > x, ">"),
                                (self.le, lambda v, x: v <= x, "<="), (self.lt, lambda v, x: v < x, "<")):
            if limit is not None and isinstance(value, (int, float)) and not ok(value, limit):
                return f"must be {self.describe()} (got {value!r})"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)} (got {value!r})"
        return self.check(value) if self.check is not None else None

    def describe(self) -> str:
        """``">= 0, < 1"``: the numeric range, for messages and ``--help``."""
        parts = [f"{sign} {_num(limit)}" for limit, sign in ((self.ge, ">="), (self.gt, ">"), (self.le, "<="),
                                                               (self.lt, "<")) if limit is not None]
        return " and ".join(parts)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _check_data(spec: str) -> str | None:
    """``toy:N``/``toy-patients:N`` need a whole number N >= 1; anything else is an LMDB folder path."""
    if not spec.strip():
        return "must be an LMDB folder, toy:N or toy-patients:N (got an empty string)"
    prefix, colon, num = spec.partition(":")
    if prefix in TOY_DATA_PREFIXES and colon and not (num.isdigit() and int(num) >= 1):
        return f"{prefix}:N needs a whole number N >= 1 of generated items (got {spec!r})"
    return None


def _check_device(name: str) -> str | None:
    return None if _DEVICE.fullmatch(name) else f"must be auto, cpu, cuda or cuda:N (got {name!r})"


def _check_resume(spec: str) -> str | None:
    return None if spec.strip() else "must be 'auto' or a checkpoint path (got an empty string)"


def _doc(text: str, default: Any, *, fixed: bool = False, **bounds: Any) -> Any:
    """A config key: its help text, default and :class:`Bounds`; ``fixed`` keys shape the training
    trajectory, so a resume that changes one is refused unless ``allow_config_change`` is set."""
    return field(default=default, metadata={"help": text, "bounds": Bounds(**bounds), "fixed": fixed})


_PREPROCESS = tuple(PREPROCESS_MODES)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` next to the checkpoints."""

    # model
    model: str = _doc("architecture '<vision>@<text>' from cn_clip_ext's factory", VISIONCLIP, fixed=True)
    model_config_dir: str | None = _doc("extra folder (or JSON file) of tower configs to register", None)
    context_length: int = _doc("text length in tokens", 52, fixed=True, ge=1)
    preprocess: str = _doc("fundus preprocessing: fov, pad or squash", "fov", fixed=True, choices=_PREPROCESS)
    warm_start: str | None = _doc(
        "warm start from a cn_clip checkpoint file or a Hugging Face chinese-roberta-wwm-ext folder", None)
    grad_checkpointing: bool = _doc("activation checkpointing in both towers (saves GPU memory)", False)
    sync_bn: bool = _doc("convert BatchNorm to SyncBatchNorm when distributed on CUDA", False, fixed=True)
    compile: bool = _doc("torch.compile the model (a one-time compile, then faster steps on CUDA)", False)
    channels_last: bool = _doc("channels-last memory layout for the image tower and its input on CUDA", True)
    deterministic: bool = _doc("deterministic CUDA kernels (slower): a resumed GPU run repeats its losses exactly",
                               False)
    # data
    data: str | None = _doc("LMDB root with train/ and valid/ (or 'toy:N' for a generated in-memory set)", None,
                            check=_check_data)
    num_workers: int = _doc("DataLoader worker processes per rank (kept alive across epochs)", 4, ge=0)
    batch_size: int = _doc("samples per process per micro-batch", 128, fixed=True, ge=1)
    accum_steps: int = _doc("micro-batches per optimizer step; the contrastive loss is over all of them "
                            "(feature-cached accumulation: the same gradient as one K-times larger batch)", 1, fixed=True,
                            ge=1)
    augment: bool = _doc("fundus-safe training augmentation (rotation, zoom, shift, colour); --no-augment: none",
                         True, fixed=True)
    # schedule
    epochs: int = _doc("passes over the training split", 10, fixed=True, ge=1)
    max_steps: int | None = _doc("optimizer steps in the schedule (overrides epochs)", None, fixed=True, ge=1)
    stop_after: int | None = _doc("stop (without saving) after this global step; the schedule is unchanged", None,
                                  ge=1)
    lr: float = _doc("peak learning rate", 5e-4, fixed=True, gt=0)
    warmup_steps: int = _doc("linear warm-up steps before the cosine decay", 500, fixed=True, ge=0)
    weight_decay: float = _doc("AdamW weight decay (not on norms, biases, embeddings, logit scale)", 0.2,
                               fixed=True, ge=0)
    beta1: float = _doc("AdamW beta1", 0.9, fixed=True, ge=0, lt=1)
    beta2: float = _doc("AdamW beta2", 0.98, fixed=True, ge=0, lt=1)
    eps: float = _doc("AdamW epsilon", 1e-6, fixed=True, gt=0)
    grad_clip: float | None = _doc("clip the gradient norm to this value", None, fixed=True, gt=0)
    precision: str = _doc("auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, bf16 or fp16", "auto", fixed=True,
                          choices=PRECISIONS)
    seed: int = _doc("seed for model init, data order, augmentation and dropout", 123, fixed=True, ge=0,
                     lt=2**63)
    # validation
    valid_every: int = _doc("validate every N optimizer steps (0: only at the end)", 1000, ge=0)
    valid_batch_size: int = _doc("samples per process when embedding the valid split", 256, ge=1)
    valid_max_samples: int | None = _doc("use at most this many valid samples", None, ge=1)
    zeroshot_labels: tuple[str, ...] = _doc("side-table labels for zero-shot balanced accuracy",
                                            ("dr_grade", "is_gc", "is_amd"))
    zeroshot_prompts: str | None = _doc(
        "prompt set file (YAML/JSON) for zero-shot validation (vclip-train: the library's plain.yaml), or "
        "'mined': mined from the training data's own captions and labels (as vclip-prompts mine does)", None)
    zeroshot_table: str | None = _doc(
        "dataset table whose synfundus entries map label values to prompt classes (vclip-train: the "
        "library's datasets.yaml)", None)
    # checkpoints and logs
    output_dir: str = _doc("folder for checkpoints, config.json, metrics.csv, TensorBoard and curves",
                           "runs/visionclip_rn50_roberta")
    save_every: int = _doc("write step_N.pt and latest.pt every N optimizer steps", 1000, ge=1)
    keep_last: int = _doc("keep this many of this run's step_N.pt files (latest.pt is always kept)", 3, ge=1)
    resume: str | None = _doc("'auto' (output_dir/checkpoints/latest.pt when present) or a checkpoint path", None,
                              check=_check_resume)
    overwrite: bool = _doc("when output_dir holds another run, move it aside (renamed, never deleted) and start "
                           "afresh", False)
    allow_config_change: bool = _doc("let a resume change keys that shape the training (batch, lr, seed, model, "
                                     "schedule ...); each change is logged", False)
    log_every: int = _doc("write training metrics every N optimizer steps", 10, ge=1)
    tensorboard: bool = _doc("write TensorBoard scalars (needs the tensorboard package)", True)
    plot: bool = _doc("write a loss/recall curve PNG at the end (needs matplotlib)", True)
    progress: bool = _doc("show a progress bar on rank 0", True)
    device: str = _doc("auto (cuda:LOCAL_RANK when available, else cpu), cpu or cuda", "auto", check=_check_device)

    def __post_init__(self) -> None:
        problems = [f"{f.name} {p}" for f in fields(self) if (p := bounds_of(f.name).problem(getattr(self, f.name)))]
        if self.overwrite and self.resume is not None:
            problems.append("overwrite starts afresh and resume continues a run: choose one")
        if problems:
            raise UserError("bad training config: " + "; ".join(problems))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides: Any) -> "TrainConfig":
        """The CPU demo: RN-tiny@BERT-tiny-chinese at 128 px, small batches, frequent checks."""
        base = dict(model=VISIONCLIP_TINY, batch_size=16, num_workers=2, epochs=3, lr=1e-3,
                    warmup_steps=10, weight_decay=0.1, valid_every=50, valid_batch_size=64,
                    save_every=50, keep_last=2, log_every=5, output_dir="runs/visionclip_tiny_cpu")
        base.update(overrides)
        return cls.from_dict(base)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        """Build from a mapping (unknown keys are an error); values are type-checked and coerced."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"unknown training config keys {unknown}; known: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        coerced = {k: coerce(k, hints[k], v) for k, v in values.items()}
        return dataclasses.replace(base, **coerced) if base is not None else cls(**coerced)

    @classmethod
    def from_file(cls, path: str | Path, base: "TrainConfig | None" = None) -> "TrainConfig":
        """Read a JSON or YAML file of config keys."""
        values = read_structured(path) or {}
        if not isinstance(values, dict):
            raise UserError(f"{path}: a training config must be a mapping of keys to values")
        values = {k: v for k, v in values.items() if k != DERIVED_KEY}  # what a run's config.json adds
        return cls.from_dict(values, base)

    def override(self, **values: Any) -> "TrainConfig":
        """A copy with some keys replaced (type-checked like :meth:`from_dict`)."""
        return self.from_dict(values, base=self)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["zeroshot_labels"] = list(self.zeroshot_labels)
        return out

    def save(self, path: str | Path, derived: Mapping[str, Any] | None = None) -> None:
        """Write the keys as JSON; ``derived`` (what a run computed from them, e.g. the epochs a
        ``max_steps`` schedule covers) goes under :data:`DERIVED_KEY`, which :meth:`from_file` skips."""
        values = self.to_dict() if derived is None else {**self.to_dict(), DERIVED_KEY: dict(derived)}
        Path(path).write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @staticmethod
    def help_of(name: str) -> str:
        for f in fields(TrainConfig):
            if f.name == name:
                return str(f.metadata.get("help", ""))
        raise KeyError(name)


def bounds_of(name: str) -> Bounds:
    """The :class:`Bounds` of config key ``name``."""
    return _FIELDS[name].metadata["bounds"]


def fixed_keys() -> tuple[str, ...]:
    """The keys that shape the training trajectory (a resume may change them only when allowed)."""
    return tuple(name for name, f in _FIELDS.items() if f.metadata["fixed"])


def parse_value(name: str, text: Any) -> Any:
    """``text`` (a command-line string) as the value of config key ``name``, type- and bound-checked;
    a :class:`UserError` says what is wrong (``vclip-train`` turns it into a parse-time error)."""
    value = coerce(name, _HINTS[name], text)
    problem = bounds_of(name).problem(value)
    if problem:
        raise UserError(problem)
    return value


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def coerce(name: str, tp: Any, value: Any) -> Any:
    """Coerce ``value`` (possibly a string from the command line) to the field type ``tp``."""
    inner, optional = _strip_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise UserError(f"config key {name!r} cannot be empty")
    try:
        if inner is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if inner is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if inner is float:
            return float(value)
        if inner is str:
            return str(value)
        if typing.get_origin(inner) is tuple:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return tuple(str(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"config key {name!r}: {excerpt(value)} is not a valid {getattr(inner, '__name__', inner)}") from None
    return value


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)

__all__ = ["Bounds", "DERIVED_KEY", "PRECISIONS", "TOY_DATA_PREFIXES", "TrainConfig", "bounds_of", "coerce",
           "fixed_keys", "parse_value"]
