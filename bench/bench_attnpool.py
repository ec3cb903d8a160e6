"""Does computing only the pooled query of cn_clip's attention pooling speed up image encoding?

    .venv/bin/python bench/bench_attnpool.py [--model RN50@RoBERTa-wwm-ext-base-chinese] [--images 64] [--runs 5]

Encodes the same random batches with the batch-inference set-up (:func:`cn_clip_ext.model.inference.image_inference`)
twice per run, alternating: with the stock rewrites, and with the first-token attention pooling left out
(``first_token_attention_pools``); reports images/s, best and median of the runs, and the ratio. Randomly initialised
weights (the speed does not depend on them); CPU, the forward batch of the programs. Also counted, independent of
the machine's load: the floating-point operations of one forward batch both ways (``torch.utils.flop_counter``), and
the time of the attention pooling alone.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from cn_clip_ext.model import inference
from cn_clip_ext.model.factory import create_model


def _rate(model: torch.nn.Module, batches: list[torch.Tensor], rewrites: tuple) -> float:
    saved = inference.INFERENCE_REWRITES
    inference.INFERENCE_REWRITES = rewrites
    try:
        with inference.image_inference(model, "cpu", workers=0), torch.inference_mode():
            model.encode_image(batches[0])  # warm-up
            start = time.perf_counter()
            for batch in batches:
                model.encode_image(batch)
            return sum(len(b) for b in batches) / (time.perf_counter() - start)
    finally:
        inference.INFERENCE_REWRITES = saved


def _flops(model: torch.nn.Module, batch: torch.Tensor, rewrites: tuple) -> int:
    saved = inference.INFERENCE_REWRITES
    inference.INFERENCE_REWRITES = rewrites
    try:
        with inference.image_inference(model, "cpu", workers=0), torch.inference_mode(), \
                FlopCounterMode(display=False) as counter:
            model.encode_image(batch)
        return counter.get_total_flops()
    finally:
        inference.INFERENCE_REWRITES = saved


def _pool_rate(pool: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        pool(x)
        start = time.perf_counter()
        for _ in range(repeats):
            pool(x)
        return repeats * len(x) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="RN50@RoBERTa-wwm-ext-base-chinese")
    p.add_argument("--images", type=int, default=64, help="images encoded per measurement")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--pool-repeats", type=int, default=20, help="forward passes per timing of the pooling alone")
    args = p.parse_args(argv)
    model = create_model(args.model, seed=0).eval()
    size = model.vclip_config.image_size
    batch = inference.forward_batch(64, "cpu")
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(min(batch, args.images - i), 3, size, size, generator=gen).contiguous(
        memory_format=torch.channels_last) for i in range(0, args.images, batch)]
    with_pool = inference.INFERENCE_REWRITES
    without = tuple(r for r in with_pool if r is not inference.first_token_attention_pools)
    flops = {"with": _flops(model, batches[0], with_pool), "without": _flops(model, batches[0], without)}
    pool = model.visual.attnpool.eval()
    grid = size // 32
    x = torch.randn(batch, pool.k_proj.in_features, grid, grid, generator=gen)
    first = inference.FirstTokenAttentionPool(pool)
    pool_rates: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(args.runs):
        pool_rates["with"].append(_pool_rate(first, x, args.pool_repeats))
        pool_rates["without"].append(_pool_rate(pool, x, args.pool_repeats))
    rates: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(args.runs):
        rates["with"].append(_rate(model, batches, with_pool))
        rates["without"].append(_rate(model, batches, without))
    best = {k: max(v) for k, v in rates.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{args.model}, {size} px, {args.images} random images in batches of {batch}, CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.machine()}, "
          f"{args.runs} alternating runs")
    print("| measure | with first-token pooling | stock pooling | ratio |")
    print("|---|---|---|---|")
    print(f"| GFLOPs per forward batch of {len(batches[0])} | {flops['with'] / 1e9:.2f} | "
          f"{flops['without'] / 1e9:.2f} | {flops['without'] / flops['with']:.3f}x fewer |")
    pb, pw = statistics.median(pool_rates["with"]), statistics.median(pool_rates["without"])
    print(f"| attention pooling alone, images/s, median | {pb:.1f} | {pw:.1f} | {pb / pw:.3f}x |")
    print(f"| images/s, best | {best['with']:.2f} | {best['without']:.2f} | {best['with'] / best['without']:.3f}x |")
    print(f"| images/s, median | {med['with']:.2f} | {med['without']:.2f} | {med['with'] / med['without']:.3f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
