"""Validation during training: contrastive loss, recall@1/5 both ways, zero-shot balanced accuracy.

Each rank embeds a contiguous shard of the valid split; shards are gathered so every rank holds
all embeddings in dataset order and computes the same numbers.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..metrics import balanced_accuracy, recall_at_k
from ..zeroshot import class_embeddings, expand_prompts, predict
from .distributed import DistEnv, all_gather_tensor
from .loss import clip_loss

logger = logging.getLogger(__name__)

ZEROSHOT_TEMPLATES = ("{}。", "眼底照片显示{}。", "诊断：{}。")
"""Prompt templates; a class embedding averages its prompts (see :mod:`cn_clip_ext.zeroshot`)."""

ZEROSHOT_CLASSES: dict[str, tuple[str, ...]] = {
    "dr_grade": ("无糖尿病视网膜病变", "轻度非增殖性糖尿病视网膜病变", "中度非增殖性糖尿病视网膜病变",
                 "重度非增殖性糖尿病视网膜病变", "增殖性糖尿病视网膜病变"),
    "is_gc": ("无青光眼", "青光眼"),
    "is_amd": ("无年龄相关性黄斑变性", "年龄相关性黄斑变性"),
    "is_dr": ("无糖尿病视网膜病变", "糖尿病视网膜病变"),
    "is_hr": ("无高血压视网膜病变", "高血压视网膜病变"),
    "is_pm": ("无病理性近视", "病理性近视"),
}
"""Class names (index = label value) of SynFundus side-table labels known to validation."""


def _shard(n: int, world: int, rank: int) -> list[int]:
    per = math.ceil(n / world)
    idx = list(range(rank * per, min(n, (rank + 1) * per)))
    return idx + [n - 1] * (per - len(idx))  # pad so every rank gathers the same count


def _label_values(dataset: Dataset, name: str, n: int) -> torch.Tensor | None:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        return None
    try:
        values = labels[name]
    except (KeyError, IndexError, TypeError):
        return None
    out = torch.tensor([-1 if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
                        for v in list(values)[:n]], dtype=torch.long)
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, env: DistEnv, tokenizer: Callable, *,
             batch_size: int, loss_batch_size: int, num_workers: int = 0, max_samples: int | None = None,
             label_names: Sequence[str] = ("dr_grade", "is_gc", "is_amd"),
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             classes: Mapping[str, Sequence[str]] = ZEROSHOT_CLASSES,
             templates: Sequence[str] = ZEROSHOT_TEMPLATES) -> dict[str, float]:
    """Metrics on ``dataset`` (first ``max_samples`` items): ``loss``, ``i2t_r1`` ... ``zs_<label>_bacc``."""
    net = getattr(model, "module", model)
    was_training = net.training
    net.eval()
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)  # type: ignore[arg-type]
    if n == 0:
        return {}
    loader = DataLoader(Subset(dataset, _shard(n, env.world_size, env.rank)), batch_size=batch_size,
                        num_workers=num_workers, pin_memory=env.device.type == "cuda",
                        generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone
    img_parts, txt_parts, tok_parts = [], [], []
    for images, tokens in loader:
        images = images.to(env.device, non_blocking=True)
        tokens = tokens.to(env.device, non_blocking=True)
        with autocast():
            img_parts.append(F.normalize(net.encode_image(images).float(), dim=-1))
            txt_parts.append(F.normalize(net.encode_text(tokens).float(), dim=-1))
        tok_parts.append(tokens)
    img = all_gather_tensor(torch.cat(img_parts))[:n]
    txt = all_gather_tensor(torch.cat(txt_parts))[:n]
    tok = all_gather_tensor(torch.cat(tok_parts))[:n]
    scale = net.logit_scale.exp().float()

    out: dict[str, float] = {}
    losses = [float(clip_loss(img[s:s + loss_batch_size], txt[s:s + loss_batch_size], scale))
              for s in range(0, n - loss_batch_size + 1, loss_batch_size)] or [float(clip_loss(img, txt, scale))]
    out["loss"] = sum(losses) / len(losses)
    # identical captions are interchangeable: group texts by their token ids
    _, groups = torch.unique(tok.cpu(), dim=0, return_inverse=True)
    groups = groups.to(img.device)
    for key, (q, g) in {"i2t": (img, txt), "t2i": (txt, img)}.items():
        rec = recall_at_k(q, g, (1, 5), groups, groups)
        out[f"{key}_r1"], out[f"{key}_r5"] = rec[1], rec[5]
    for name in label_names:
        y = _label_values(dataset, name, n)
        if y is None or name not in classes:
            logger.debug("zero-shot: no label %r (or no class names for it); skipped", name)
            continue
        keep = y >= 0
        if not bool(keep.any()):
            continue
        emb = class_embeddings(net.encode_text, tokenizer, expand_prompts(classes[name], templates), env.device)
        pred = predict(img[keep.to(img.device)], emb).cpu()
        out[f"zs_{name}_bacc"] = balanced_accuracy(y[keep], pred)
    if was_training:
        net.train()
    return out


__all__ = ["ZEROSHOT_CLASSES", "ZEROSHOT_TEMPLATES", "evaluate"]
