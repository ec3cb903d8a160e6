"""Batch inference set-up shared by the evaluation and embedding programs.

:func:`image_inference` prepares a model for encoding many image batches and undoes it after:

- the image tower's BatchNorm layers are folded into the convolutions before them (found by a
  symbolic trace of its ``forward``; the original modules are put back after). BatchNorm was
  about a quarter of the CPU time of ResNet inference, measured with the tiny tower;
- cn_clip's attention pooling computes only the query it returns (:class:`FirstTokenAttentionPool`);
- convolution weights in channels-last layout (about 1.8x faster ResNet inference on the CPU);
- on the CPU, the model's intra-op threads limited to the cores the decoding workers leave free when the
  decoding is the bottleneck (a small tower; see :func:`threads_beside_workers`).

:func:`encode_batches` runs a model over a dataset of decoded images with all of that.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils.data import DataLoader, Dataset
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import UserError, describe
from .protocols import PixelsThenBatch, square_size
from .transforms import accepts_arrays

logger = logging.getLogger(__name__)


CPU_BATCH = 16
"""Largest forward batch on the CPU. CPU throughput does not grow with the batch (measured with the
tiny tower), while small batches start the model sooner and keep the decoding workers evenly
loaded to the end: about 1.2x the images per second of batches of 64 (tiny tower, 2 cores)."""


def forward_batch(batch_size: int, device: str | torch.device) -> int:
    """Images per forward pass: ``batch_size``, at most :data:`CPU_BATCH` on the CPU."""
    return min(batch_size, CPU_BATCH) if torch.device(device).type == "cpu" else batch_size


GPU_DECODE_WORKERS = 8


def default_workers(device: str | torch.device) -> int:
    """Decoding processes when the user gives none: 2 on the CPU, where they share the cores with
    the model (measured best on 2 cores); on a GPU, which encodes far faster than a few processes
    decode, up to :data:`GPU_DECODE_WORKERS`, one core left to the encoding process."""
    if torch.device(device).type == "cpu":
        return min(2, cpu_count())
    return max(1, min(GPU_DECODE_WORKERS, cpu_count() - 1))


def decode_workers(batch_size: int, workers: int | None, device: str | torch.device) -> int:
    """The programs' ``--workers`` (``None``: :func:`default_workers`), after checking it and
    ``--batch-size``; a :class:`UserError` for a batch below 1 or a negative count."""
    workers = default_workers(device) if workers is None else workers
    if batch_size < 1 or workers < 0:
        raise UserError("--batch-size must be at least 1 and --workers at least 0")
    return workers


@dataclass(frozen=True)
class SplitTransform:
    """An image transform cut for batch encoding: ``per_image`` runs in the decoding workers,
    ``per_batch`` (or nothing) on the collated batch in the encoding process.

    A :class:`~.protocols.PixelsThenBatch` transform (the evaluation transform) sends ``uint8``
    pixels between processes (a quarter of the bytes) and normalises whole batches; any other runs
    whole per image. The fundus transforms take RGB arrays (``wants_array``), and with a square
    output (:class:`~.protocols.SquareOutput`) a JPEG may be decoded at ``min_size``, twice its side (see
    :func:`cn_clip_ext.model.transforms.open_rgb`).
    """

    per_image: Callable
    per_batch: Callable | None = None
    min_size: int | None = None
    wants_array: bool = False

    @classmethod
    def of(cls, transform: Callable) -> "SplitTransform":
        size = square_size(transform)
        min_size = 2 * size if size is not None else None
        if not isinstance(transform, PixelsThenBatch):
            return cls(transform, None, min_size, accepts_arrays(transform))
        return cls(transform.pixels, transform.batch_transform, min_size, accepts_arrays(transform))


Decoded = tuple[int, "torch.Tensor | None", str]
"""What a decoding dataset returns per item: ``(index, tensor, "")`` or ``(index, None, reason)``."""


def decoded(index: int, make: Callable[[], torch.Tensor]) -> Decoded:
    """``make()`` as a :data:`Decoded` item; a failure becomes a one-line reason, so one bad file
    does not end the DataLoader with a worker traceback."""
    try:
        return index, make(), ""
    except Exception as exc:  # noqa: BLE001 - any decoder failure: the caller decides
        return index, None, describe(exc)


def collate_decoded(items: list[Decoded]) -> tuple[list[int], "torch.Tensor | None", list[tuple[int, str]]]:
    """``(indices decoded, their stacked tensors or None, [(index, reason)] that failed)``."""
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, reason) for i, x, reason in items if x is None]
    return [i for i, _ in good], (torch.stack([x for _, x in good]) if good else None), bad


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


HEAVY_TOWER_PARAMS = 5_000_000
"""Image-tower size from which the model keeps all CPU threads beside the decoding workers."""


@contextlib.contextmanager
def threads_beside_workers(device: str | torch.device, workers: int, heavy: bool = False) -> Iterator[None]:
    """On the CPU, leave one core to each decoding worker, unless the model is ``heavy``.

    Which side needs the cores depends on which is the bottleneck. A tower that encodes faster than
    the workers decode (the tiny tower, a few hundred thousand parameters) competing with the workers
    for the cores halved throughput, so one core is left to each worker (``bench/bench_eval.py``). A
    tower of millions of parameters (RN50 at 224 px, 38 M; FLAIR's ResNet-50 at 512 px) takes far
    longer per image than decoding one, so the workers sit idle most of the time, and limited to the
    cores they leave it ran about 1.5x slower than a plain loop on all cores
    (``bench/bench_families.py``); such a model, :data:`HEAVY_TOWER_PARAMS` or more, keeps all threads.
    Measuring the two sides while encoding is no surer: the workers decode ahead while the model is
    prepared, so the first batches arrive without waiting whichever side is slower.
    """
    before = torch.get_num_threads()
    wanted = max(1, min(before, cpu_count() - workers))
    if torch.device(device).type != "cpu" or workers == 0 or heavy or wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tower_parameters(model: nn.Module) -> int:
    """Parameters of the model's image towers (of the whole model when it names none)."""
    return sum(p.numel() for tower in (_towers(model) or [model]) for p in tower.parameters())


def _conv_bn_pairs(tower: nn.Module) -> list[tuple[str, str]]:
    """``(conv name, BatchNorm name)`` pairs where the BatchNorm is the convolution's only consumer
    and each module is called once (from a symbolic trace of ``tower.forward``)."""
    graph = fx.symbolic_trace(tower).graph
    modules = dict(tower.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules[src.target], nn.Conv2d)
                and len(src.users) == 1 and calls[src.target] == calls[node.target] == 1
                and modules[node.target].track_running_stats):
            pairs.append((src.target, node.target))
    return pairs


@contextlib.contextmanager
def batchnorm_folded(tower: nn.Module) -> Iterator[int]:
    """Inside the block, each BatchNorm of ``tower`` (in eval mode) that directly follows a
    convolution is folded into a copy of that convolution, and the BatchNorm is ``Identity``;
    the original modules are put back after. Yields the number of BatchNorms folded (0 when the
    tower is training, has none, or its ``forward`` cannot be traced)."""
    pairs: list[tuple[str, str]] = []
    if not tower.training and any(isinstance(m, nn.BatchNorm2d) for m in tower.modules()):
        try:
            pairs = _conv_bn_pairs(tower)
        except Exception as exc:  # noqa: BLE001 - an untraceable tower is run as it is
            logger.debug("BatchNorm folding skipped for %s: %s", type(tower).__name__, exc)
    saved = [(name, tower.get_submodule(name)) for pair in pairs for name in pair]
    try:
        for conv_name, bn_name in pairs:
            _replace(tower, conv_name, fuse_conv_bn_eval(tower.get_submodule(conv_name), tower.get_submodule(bn_name)))
            _replace(tower, bn_name, nn.Identity())
        yield len(pairs)
    finally:
        for name, module in saved:
            _replace(tower, name, module)


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


class FirstTokenAttentionPool(nn.Module):
    """Inference form of cn_clip's ``AttentionPool2d``: the pooled output is the attention output
    of the first token (the mean of the grid) alone, so only its query and its output projection
    are computed instead of those of every grid position. Same parameters, same result."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool
        tokens = x.flatten(2).permute(2, 0, 1)  # [N, C, H, W] -> [HW, N, C]
        tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens])
        tokens = tokens + p.positional_embedding[:, None, :].to(tokens.dtype)
        out, _ = F.multi_head_attention_forward(
            tokens[:1], tokens, tokens, tokens.shape[-1], p.num_heads, in_proj_weight=None,
            in_proj_bias=torch.cat([p.q_proj.bias, p.k_proj.bias, p.v_proj.bias]), bias_k=None, bias_v=None,
            add_zero_attn=False, dropout_p=0.0, out_proj_weight=p.c_proj.weight, out_proj_bias=p.c_proj.bias,
            training=False, need_weights=False, use_separate_proj_weight=True, q_proj_weight=p.q_proj.weight,
            k_proj_weight=p.k_proj.weight, v_proj_weight=p.v_proj.weight)
        return out[0]


@contextlib.contextmanager
def first_token_attention_pools(tower: nn.Module) -> Iterator[int]:
    """Inside the block, each cn_clip ``AttentionPool2d`` of ``tower`` (in eval mode) is wrapped in a
    :class:`FirstTokenAttentionPool` (RN50, the paper's model: 5 % fewer operations per image, the
    pooling alone 1.8x and image encoding 1.3x as fast on the CPU, bench/bench_attnpool.py); yields
    how many, and puts the originals back after."""
    from cn_clip.clip.model import AttentionPool2d

    names = [] if tower.training else [n for n, m in tower.named_modules() if isinstance(m, AttentionPool2d)]
    saved = [(name, tower.get_submodule(name)) for name in names]
    try:
        for name, pool in saved:
            _replace(tower, name, FirstTokenAttentionPool(pool))
        yield len(saved)
    finally:
        for name, pool in saved:
            _replace(tower, name, pool)


INFERENCE_REWRITES: tuple[Callable[[nn.Module], contextlib.AbstractContextManager], ...] = (
    batchnorm_folded, first_token_attention_pools)
"""Exact, temporary rewrites of an image tower for batch inference, applied in this order."""


@contextlib.contextmanager
def _channels_last(tower: nn.Module) -> Iterator[None]:
    tower.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        tower.to(memory_format=torch.contiguous_format)


def _towers(model: nn.Module) -> list[nn.Module]:
    """The image towers (modules held as ``visual`` by the model or its submodules), each once."""
    found = {id(m.visual): m.visual for m in model.modules() if isinstance(getattr(m, "visual", None), nn.Module)}
    return list(found.values())


@contextlib.contextmanager
def image_inference(model: nn.Module, device: str | torch.device = "cpu", workers: int = 0) -> Iterator[None]:
    """Inside the block, ``model.encode_image`` runs with the image tower rewritten by
    :data:`INFERENCE_REWRITES` and its weights channels-last, and on the CPU with the threads split
    as :func:`threads_beside_workers` does; all is undone after. Feed it channels-last batches
    (``batch.contiguous(memory_format=torch.channels_last)``)."""
    heavy = tower_parameters(model) >= HEAVY_TOWER_PARAMS
    with contextlib.ExitStack() as stack:
        for tower in _towers(model):
            for rewrite in INFERENCE_REWRITES:
                stack.enter_context(rewrite(tower))
            stack.enter_context(_channels_last(tower))
        stack.enter_context(threads_beside_workers(device, workers, heavy))
        yield


Encoded = tuple[list[int], "torch.Tensor | None", list[tuple[int, str]]]
"""``(indices encoded, their [n, D] float CPU features or None, [(index, reason)] not decoded)``."""


def encode_batches(model: nn.Module, images: Dataset, split: SplitTransform, batch_size: int = 64,
                   workers: int = 2, device: str | torch.device = "cpu") -> Iterator[Encoded]:
    """``model.encode_image`` over a dataset of :data:`Decoded` items, batch by batch.

    The items come from ``workers`` DataLoader processes (``split.per_image``); each batch gets
    ``split.per_batch`` on ``device`` and is encoded channels-last under :func:`image_inference`,
    :func:`forward_batch` images at a time. Failed items are passed on for the caller to report.
    Close the generator (``contextlib.closing``) when stopping early: that restores the model.
    """
    device = torch.device(device)
    loader = DataLoader(images, batch_size=forward_batch(batch_size, device), num_workers=workers,
                        collate_fn=collate_decoded, persistent_workers=False, pin_memory=device.type == "cuda")
    batches = iter(loader)  # the workers start decoding while the tower is prepared
    with image_inference(model, device, workers):
        for indices, pixels, bad in batches:
            features = None
            if pixels is not None:
                with torch.inference_mode():
                    batch = pixels.to(device, non_blocking=True)
                    if split.per_batch is not None:
                        batch = split.per_batch(batch)
                    features = model.encode_image(batch.contiguous(memory_format=torch.channels_last)).float().cpu()
            yield indices, features, bad
