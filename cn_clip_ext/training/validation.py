"""Validation during training: contrastive loss, recall@1/5 both ways, zero-shot balanced accuracy
(image-report pairs: :func:`evaluate`; patients with two eyes, per head: :func:`evaluate_patients`).

Each rank embeds a contiguous shard of the valid split; shards are gathered so every rank holds
all embeddings in dataset order and computes the same numbers.

Both take one :class:`ValidationOptions` (batch sizes, how many items, zero-shot labels and prompts).

Zero-shot prompts are data, the same that ``vclip-eval`` uses: a :class:`PromptSet` and, per
side-table label column, ``{label value -> prompt class}`` (the ``synfundus`` entries of a
dataset table, see :func:`load_zeroshot_setup`). Without them, zero-shot accuracy is skipped.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import UserError
from ..evaluation.datasets import load_dataset_table
from ..evaluation.prompts import PromptSet, load_prompt_set
from ..evaluation.synfundus import synfundus_label_classes
from ..evaluation.scores import balanced_accuracy, recall_at_k
from ..evaluation.classifier import class_embeddings, predict
from .data import ColumnLabelled
from .distributed import DistEnv, all_gather_tensor, unwrap
from .loss import clip_loss

logger = logging.getLogger(__name__)

LabelClasses = Mapping[str, Mapping[str, str]]
"""Side-table column -> {label value as text -> prompt class key}."""


@dataclass(frozen=True)
class ValidationOptions:
    """How one validation pass runs, for pairs (:func:`evaluate`) and patients (:func:`evaluate_patients`)."""

    batch_size: int
    """Items per device batch while embedding."""
    loss_batch_size: int
    """Rows per global batch of the validation loss (training's global batch, so that the losses compare)."""
    num_workers: int = 0
    """DataLoader worker processes."""
    max_samples: int | None = None
    """Validate on the first this many items (``None``: all of them)."""
    label_names: Sequence[str] = ("dr_grade", "is_gc", "is_amd")
    """Side-table label columns to report zero-shot balanced accuracy for (``zs_<label>_bacc``)."""
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    """The mixed-precision context the forward passes run in."""
    prompts: PromptSet | None = None
    """The zero-shot prompt set; ``None`` skips zero-shot accuracy."""
    label_classes: LabelClasses | None = None
    """Per label column, ``{label value -> class of prompts}``; ``None`` skips zero-shot accuracy."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_names", tuple(self.label_names))


MINED = "mined"
"""``zeroshot_prompts`` value: prompts mined from the training data's own captions."""


def load_zeroshot_setup(prompts_path: str | Path, table_path: str | Path,
                        data_root: str | Path | None = None) -> tuple[PromptSet, LabelClasses]:
    """The prompt set and label -> class mapping for zero-shot validation, from a prompt file and
    a dataset table (its ``synfundus`` entries). ``prompts_path`` ``"mined"`` mines the set from the
    captions of ``data_root``'s train split (``"mined:LMDB"`` from another build's), classes
    without a mined phrase keeping the built-in plain set's names (see
    :mod:`cn_clip_ext.evaluation.mining`)."""
    table = load_dataset_table(table_path)
    text = str(prompts_path)
    if text == MINED or text.startswith(MINED + ":"):
        from ..evaluation.mining import mine_from_lmdb
        from ..evaluation.resources import prompt_set_path

        root = text[len(MINED) + 1:] or data_root
        if not root:
            raise UserError("zeroshot_prompts 'mined' needs an LMDB training data root (or 'mined:LMDB')")
        mined = mine_from_lmdb(root, table, load_prompt_set(prompt_set_path("plain")))
        logger.info("zero-shot validation with prompts mined from %s (%d classes from the corpus)", root,
                    len(mined.prompts.classes) - len(mined.fallback))
        return mined.prompts, synfundus_label_classes(table)
    return load_prompt_set(prompts_path), synfundus_label_classes(table)


def _shard(n: int, world: int, rank: int) -> list[int]:
    per = math.ceil(n / world)
    idx = list(range(rank * per, min(n, (rank + 1) * per)))
    return idx + [n - 1] * (per - len(idx))  # pad so every rank gathers the same count


def _label_values(dataset: Dataset, name: str, n: int, values: Sequence[str]) -> torch.Tensor | None:
    """Class index (position in ``values``) of each of the first ``n`` items; -1 unknown or other."""
    if not isinstance(dataset, ColumnLabelled):
        return None
    try:
        column = dataset.labels[name]
    except (KeyError, IndexError, TypeError):
        return None
    index = {v: i for i, v in enumerate(values)}
    return torch.tensor([-1 if v is None or (isinstance(v, float) and math.isnan(v)) else index.get(str(int(v)), -1)
                         for v in list(column)[:n]], dtype=torch.long)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, env: DistEnv, tokenizer: Callable,
             options: ValidationOptions) -> dict[str, float]:
    """Metrics on ``dataset`` (first ``options.max_samples`` items): ``loss``, ``i2t_r1`` ... and, for
    each of ``options.label_names`` that ``options.label_classes`` maps to classes of ``options.prompts``,
    ``zs_<label>_bacc``."""
    return _run(_evaluate_pairs, model, dataset, env, tokenizer, options)


_Pass = Callable[[torch.nn.Module, Dataset, int, DistEnv, Callable, ValidationOptions], dict[str, float]]


def _run(metrics: _Pass, model: torch.nn.Module, dataset: Dataset, env: DistEnv, tokenizer: Callable,
         options: ValidationOptions) -> dict[str, float]:
    """``metrics`` of the first ``options.max_samples`` items (none: ``{}``), computed on the unwrapped
    (DDP-free) model in eval mode; its training mode comes back afterwards."""
    total = len(dataset)  # type: ignore[arg-type]
    n = total if options.max_samples is None else min(total, options.max_samples)
    if n == 0:
        return {}
    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        return metrics(net, dataset, n, env, tokenizer, options)
    finally:
        net.train(was_training)


def _loader(dataset: Dataset, n: int, env: DistEnv, batch_size: int, num_workers: int) -> DataLoader:
    """This rank's share of the first ``n`` items, in order."""
    return DataLoader(Subset(dataset, _shard(n, env.world_size, env.rank)), batch_size=batch_size,
                      num_workers=num_workers, pin_memory=env.device.type == "cuda",
                      generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone


def _evaluate_pairs(net: torch.nn.Module, dataset: Dataset, n: int, env: DistEnv, tokenizer: Callable,
                    options: ValidationOptions) -> dict[str, float]:
    loader = _loader(dataset, n, env, options.batch_size, options.num_workers)
    img_parts, txt_parts, tok_parts = [], [], []
    for images, tokens in loader:
        images = images.to(env.device, non_blocking=True)
        tokens = tokens.to(env.device, non_blocking=True)
        with options.autocast():
            img_parts.append(F.normalize(net.encode_image(images).float(), dim=-1))
            txt_parts.append(F.normalize(net.encode_text(tokens).float(), dim=-1))
        tok_parts.append(tokens)
    img = all_gather_tensor(torch.cat(img_parts))[:n]
    txt = all_gather_tensor(torch.cat(txt_parts))[:n]
    tok = all_gather_tensor(torch.cat(tok_parts))[:n]
    scale = net.logit_scale.exp().float()

    out: dict[str, float] = {}
    loss = _chunked_loss(img, txt, scale, torch.ones(n, dtype=torch.bool, device=img.device), options.loss_batch_size)
    if loss is not None:
        out["loss"] = loss
    # identical captions are interchangeable: group texts by their token ids
    _, groups = torch.unique(tok.cpu(), dim=0, return_inverse=True)
    groups = groups.to(img.device)
    for key, (q, g) in {"i2t": (img, txt), "t2i": (txt, img)}.items():
        rec = recall_at_k(q, g, (1, 5), groups, groups)
        out[f"{key}_r1"], out[f"{key}_r5"] = rec[1], rec[5]
    out.update(_zero_shot(net, dataset, img, n, tokenizer, env, options))
    return out


def _zero_shot(net: torch.nn.Module, dataset: Dataset, img: torch.Tensor, n: int, tokenizer: Callable, env: DistEnv,
               options: ValidationOptions) -> dict[str, float]:
    """``zs_<label>_bacc`` for each label column the dataset has and the prompts cover."""
    out: dict[str, float] = {}
    prompts = options.prompts
    for name in options.label_names:
        classes = (options.label_classes or {}).get(name)
        y = _label_values(dataset, name, n, list(classes)) if classes and prompts is not None else None
        if y is None:
            logger.debug("zero-shot: no label %r, no prompt classes for it or no prompt set; skipped", name)
            continue
        keep = y >= 0
        if not bool(keep.any()):
            continue
        emb = class_embeddings(net.encode_text, tokenizer, prompts.for_classes(list(classes.values())),  # type: ignore[union-attr]
                               env.device)
        pred = predict(img[keep.to(img.device)], emb).cpu()
        out[f"zs_{name}_bacc"] = balanced_accuracy(y[keep], pred)
    return out


def _chunked_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, present: torch.Tensor,
                  chunk: int) -> float | None:
    """Mean :func:`clip_loss` over consecutive global batches of ``chunk`` rows (present rows only),
    as training sees them; ``None`` when no batch has two present rows."""
    n = img.shape[0]
    starts = range(0, n - chunk + 1, chunk) if n >= chunk else [0]
    losses = []
    for s in starts:
        rows = present[s:s + chunk].nonzero().view(-1) + s
        if rows.numel() > 1:
            losses.append(float(clip_loss(img[rows], txt[rows], scale)))
    return sum(losses) / len(losses) if losses else None


@torch.no_grad()
def evaluate_patients(model: torch.nn.Module, dataset: Dataset, env: DistEnv, tokenizer: Callable,
                      options: ValidationOptions) -> dict[str, float]:
    """Metrics of a tripartite model on patients ``(left, right, has_left, has_right, tokens)``.

    Per head: ``loss_<head>`` and recall@1/5 both ways over the patients that have that eye
    (``left_i2t_r1`` ...; the patient head's recalls keep the plain names ``i2t_r1`` ...);
    ``loss`` is the sum of the three, as in training. Zero-shot ``zs_<label>_bacc`` uses the
    patient feature and runs only when the dataset has such label columns.
    """
    return _run(_evaluate_patients, model, dataset, env, tokenizer, options)


def _evaluate_patients(net: torch.nn.Module, dataset: Dataset, n: int, env: DistEnv, tokenizer: Callable,
                       options: ValidationOptions) -> dict[str, float]:
    from ..model.tripartite import HEADS

    loader = _loader(dataset, n, env, options.batch_size, options.num_workers)
    parts: dict[str, list[torch.Tensor]] = {}
    for left, right, has_left, has_right, tokens in loader:
        batch = [t.to(env.device, non_blocking=True) for t in (left, right, has_left, has_right, tokens)]
        with options.autocast():
            out = net(*batch)
        for key, value in out._asdict().items():
            if value.ndim:
                parts.setdefault(key, []).append(value.float() if value.is_floating_point() else value.to(torch.uint8))
        parts.setdefault("tokens", []).append(batch[4])
    full = {k: all_gather_tensor(torch.cat(v))[:n] for k, v in parts.items()}
    _, groups = torch.unique(full["tokens"].cpu(), dim=0, return_inverse=True)
    groups = groups.to(env.device)
    everyone = torch.ones(n, dtype=torch.bool, device=env.device)
    present = {"global": everyone, "left": full["has_left"].bool(), "right": full["has_right"].bool()}
    scales = dict(zip(HEADS, (net.logit_scale, net.logit_scale_left, net.logit_scale_right)))
    metrics: dict[str, float] = {"loss": 0.0}
    for head in HEADS:
        img, txt, rows = full[f"image_{head}"], full[f"text_{head}"], present[head].nonzero().view(-1)
        loss = _chunked_loss(img, txt, scales[head].exp().float(), present[head], options.loss_batch_size)
        if loss is None:
            continue
        metrics[f"loss_{head}"] = loss
        metrics["loss"] += loss
        prefix = "" if head == "global" else f"{head}_"
        for key, (q, g) in {"i2t": (img[rows], txt[rows]), "t2i": (txt[rows], img[rows])}.items():
            rec = recall_at_k(q, g, (1, 5), groups[rows], groups[rows])
            metrics[f"{prefix}{key}_r1"], metrics[f"{prefix}{key}_r5"] = rec[1], rec[5]
    metrics.update(_zero_shot(net, dataset, full["image_global"], n, tokenizer, env, options))
    return metrics


__all__ = ["LabelClasses", "ValidationOptions", "evaluate", "evaluate_patients", "load_zeroshot_setup"]
