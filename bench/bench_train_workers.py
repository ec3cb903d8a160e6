"""Benchmark the training DataLoader across short epochs: workers kept alive vs restarted (not a test).

In one run, alternating over rounds, it times ``--epochs`` epochs of ``--steps`` micro-batches read
the way the trainer reads them (:class:`~cn_clip_ext.training.data.SeededDataset` over generated toy
pairs, :class:`~cn_clip_ext.training.data.ResumableSampler`, ``--workers`` worker processes):

* ``restarted``: a new ``DataLoader`` per epoch without persistent workers (the stock PyTorch path,
  and the trainer's before its loader was kept for the whole run): each epoch forks its workers;
* ``persistent``: :func:`cn_clip_ext.training.loader.training_loader`, built once, ``iter()`` per epoch.

Reports the median seconds per epoch of each and their ratio.

    .venv/bin/python bench/bench_train_workers.py --rounds 3 --epochs 6 --steps 5 --workers 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from cn_clip_ext.synth.toys import make_toy_pairs
from cn_clip_ext.training.data import ResumableSampler, SeededDataset
from cn_clip_ext.training.loader import shutdown, training_loader


def _restarted(seeded, sampler, args) -> float:
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        seeded.epoch = epoch
        loader = DataLoader(seeded, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                            drop_last=True, generator=torch.Generator().manual_seed(epoch),
                            prefetch_factor=4, persistent_workers=False)
        for _ in loader:
            pass
    return (time.perf_counter() - t0) / args.epochs


def _persistent(seeded, sampler, args) -> float:
    t0 = time.perf_counter()
    loader = training_loader(seeded, sampler, args.batch_size, args.workers, False, 0)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for _ in loader:
            pass
    shutdown(loader)
    return (time.perf_counter() - t0) / args.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5, help="micro-batches per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    args = parser.parse_args()
    data = make_toy_pairs(args.steps * args.batch_size, args.size, seed=0)
    seeded = SeededDataset(data, seed=0)
    sampler = ResumableSampler(len(data), args.batch_size, seed=0)
    times: dict[str, list[float]] = {"restarted": [], "persistent": []}
    for _ in range(args.rounds):
        times["restarted"].append(_restarted(seeded, sampler, args))
        times["persistent"].append(_persistent(seeded, sampler, args))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.workers} workers, {args.steps} micro-batches of {args.batch_size} per epoch, {args.epochs} epochs, "
          f"{args.rounds} rounds (median s/epoch):")
    for k, v in med.items():
        print(f"  {k:>10}: {v:.3f} s/epoch")
    print(f"  restarted / persistent: {med['restarted'] / med['persistent']:.2f}x")


if __name__ == "__main__":
    main()
