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
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError, excerpt
from ..files import read_structured
from ..model.factory import VISIONCLIP, VISIONCLIP_TINY

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _doc(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` next to the checkpoints."""

    # model
    model: str = _doc("architecture '<vision>@<text>' from cn_clip_ext's factory", VISIONCLIP)
    model_config_dir: str | None = _doc("extra folder (or JSON file) of tower configs to register", None)
    context_length: int = _doc("text length in tokens", 52)
    preprocess: str = _doc("fundus preprocessing: fov, pad or squash", "fov")
    warm_start: str | None = _doc(
        "warm start from a cn_clip checkpoint file or a Hugging Face chinese-roberta-wwm-ext folder", None)
    grad_checkpointing: bool = _doc("activation checkpointing in both towers (saves GPU memory)", False)
    sync_bn: bool = _doc("convert BatchNorm to SyncBatchNorm when distributed on CUDA", False)
    compile: bool = _doc("torch.compile the model (a one-time compile, then faster steps on CUDA)", False)
    channels_last: bool = _doc("channels-last memory layout for the image tower and its input on CUDA", True)
    deterministic: bool = _doc("deterministic CUDA kernels (slower): a resumed GPU run repeats its losses exactly",
                               False)
    # data
    data: str | None = _doc("LMDB root with train/ and valid/ (or 'toy:N' for a generated in-memory set)", None)
    num_workers: int = _doc("DataLoader worker processes per rank", 4)
    batch_size: int = _doc("samples per process per micro-batch", 128)
    accum_steps: int = _doc("micro-batches per optimizer step; the contrastive loss is over all of them "
                            "(feature-cached accumulation: the same gradient as one K-times larger batch)", 1)
    augment: bool = _doc("fundus-safe training augmentation (rotation, zoom, shift, colour); --no-augment: none",
                         True)
    # schedule
    epochs: int = _doc("passes over the training split", 10)
    max_steps: int | None = _doc("optimizer steps in the schedule (overrides epochs)", None)
    stop_after: int | None = _doc("stop (without saving) after this global step; the schedule is unchanged", None)
    lr: float = _doc("peak learning rate", 5e-4)
    warmup_steps: int = _doc("linear warm-up steps before the cosine decay", 500)
    weight_decay: float = _doc("AdamW weight decay (not on norms, biases, embeddings, logit scale)", 0.2)
    beta1: float = _doc("AdamW beta1", 0.9)
    beta2: float = _doc("AdamW beta2", 0.98)
    eps: float = _doc("AdamW epsilon", 1e-6)
    grad_clip: float | None = _doc("clip the gradient norm to this value", None)
    precision: str = _doc("auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, bf16 or fp16", "auto")
    seed: int = _doc("seed for model init, data order, augmentation and dropout", 123)
    # validation
    valid_every: int = _doc("validate every N optimizer steps (0: only at the end)", 1000)
    valid_batch_size: int = _doc("samples per process when embedding the valid split", 256)
    valid_max_samples: int | None = _doc("use at most this many valid samples", None)
    zeroshot_labels: tuple[str, ...] = _doc("side-table labels for zero-shot balanced accuracy",
                                            ("dr_grade", "is_gc", "is_amd"))
    zeroshot_prompts: str | None = _doc(
        "prompt set file (YAML/JSON) for zero-shot validation (vclip-train: vclip-eval's plain.yaml)", None)
    zeroshot_table: str | None = _doc(
        "dataset table whose synfundus entries map label values to prompt classes (vclip-train: "
        "vclip-eval's datasets.yaml)", None)
    # checkpoints and logs
    output_dir: str = _doc("folder for checkpoints, config.json, metrics.csv, TensorBoard and curves",
                           "runs/visionclip_rn50_roberta")
    save_every: int = _doc("write step_N.pt and latest.pt every N optimizer steps", 1000)
    keep_last: int = _doc("keep this many step_N.pt files (latest.pt is always kept)", 3)
    resume: str | None = _doc("'auto' (output_dir/checkpoints/latest.pt when present) or a checkpoint path", None)
    log_every: int = _doc("write training metrics every N optimizer steps", 10)
    tensorboard: bool = _doc("write TensorBoard scalars (needs the tensorboard package)", True)
    plot: bool = _doc("write a loss/recall curve PNG at the end (needs matplotlib)", True)
    progress: bool = _doc("show a progress bar on rank 0", True)
    device: str = _doc("auto (cuda:LOCAL_RANK when available, else cpu), cpu or cuda", "auto")

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "accum_steps", "epochs", "keep_last", "log_every", "save_every",
                     "valid_batch_size", "context_length"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append("max_steps must be >= 1")
        if self.valid_every < 0 or self.warmup_steps < 0 or self.num_workers < 0:
            problems.append("valid_every, warmup_steps and num_workers must be >= 0")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}")
        if self.lr <= 0:
            problems.append("lr must be > 0")
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
        return cls.from_dict(values, base)

    def override(self, **values: Any) -> "TrainConfig":
        """A copy with some keys replaced (type-checked like :meth:`from_dict`)."""
        return self.from_dict(values, base=self)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["zeroshot_labels"] = list(self.zeroshot_labels)
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

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


__all__ = ["PRECISIONS", "TrainConfig", "coerce"]
