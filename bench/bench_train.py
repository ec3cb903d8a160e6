"""Benchmark the trainer's overhead and its LMDB input pipeline (not a test).

On the CPU with the tiny model, in one run:

* ``bare``: a bare PyTorch loop (forward, cn_clip-style contrastive loss, backward, AdamW step)
  over pre-built in-memory batches - the floor;
* ``ours/memory``: :class:`cn_clip_ext.training.Trainer` fed the same tensors from memory;
* ``ours/lmdb``: the trainer fed from an LMDB built from synthetic SynFundus at the model's
  input size (decode + the fundus geometry in DataLoader workers), against ``ours/memory`` on
  the same decoded images.

Every variant applies the train transform's per-batch colour jitter and normalisation to its
``uint8`` batches (the trainer on the device, the bare loop likewise). ``--items`` sets the
training set's size; by default the timed steps of a variant fit in one epoch, as in real
training where an epoch (each one restarts the DataLoader's workers) is thousands of steps.

Targets: ours/memory within 5% of bare; ours/lmdb at least 90% of ours/memory.
Variants alternate over rounds (a shared machine's load hits all alike); reported numbers
are medians over rounds, by wall clock and by this process's CPU time.

    .venv/bin/python bench/bench_train.py --rounds 2 --steps 6 --batch-size 16

The GPU comparison against cn_clip's own loop is not implemented here yet (needs a GPU).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cn_clip_ext import VISIONCLIP_TINY, create_model_and_transforms
from cn_clip_ext.training import TrainConfig, TensorPairs, Trainer, build_optimizer, clip_loss
from cn_clip_ext.training.distributed import DistEnv


def bare_loop(images: torch.Tensor, tokens: torch.Tensor, batch: int, steps: int, seed: int) -> tuple[float, float]:
    """``(wall s, CPU s)`` of ``steps`` bare training steps (model set-up excluded); ``uint8``
    images get the train transform's per-batch colour jitter and normalisation, as in the trainer."""
    model, train_tf, _ = create_model_and_transforms(VISIONCLIP_TINY, seed=seed)
    model.train()
    opt = build_optimizer(model, 1e-4, 0.1, (0.9, 0.98), 1e-6)
    n = images.shape[0] // batch
    gen = torch.Generator().manual_seed(seed)
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        k = step % n
        x = images[k * batch:(k + 1) * batch]
        x = train_tf.batch_transform(x, gen) if x.dtype == torch.uint8 else x
        img_f, txt_f, scale = model(x, tokens[k * batch:(k + 1) * batch])
        loss = clip_loss(img_f, txt_f, scale)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # the trainer reads the loss every step too
    return time.perf_counter() - wall, time.process_time() - cpu


def ours(dataset, batch: int, steps: int, seed: int, workers: int, out: Path) -> tuple[float, float]:
    """``(wall s, CPU s of this process)`` of ``steps`` trainer steps (set-up, validation and the
    final checkpoint excluded: the run stops one step before its schedule ends)."""
    cfg = TrainConfig.tiny(output_dir=str(out), batch_size=batch, num_workers=workers, max_steps=steps + 1,
                           stop_after=steps, valid_every=0, save_every=10**9, log_every=1, progress=False,
                           plot=False, tensorboard=False, seed=seed, lr=1e-4)
    trainer = Trainer(cfg, DistEnv(), dataset, None)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.run()
    return time.perf_counter() - wall, time.process_time() - cpu


def steady_rate(out: Path, batch: int, skip: int) -> float:
    """Samples/s of a finished trainer run over its steps after the first ``skip`` (read from the
    per-step ``samples_per_s`` in ``metrics.csv``): without the DataLoader start-up (forking the
    workers, their first batches), which real training pays once per epoch."""
    import csv

    with open(out / "metrics.csv", encoding="utf-8", newline="") as fh:
        rates = [float(r["value"]) for r in csv.DictReader(fh)
                 if r["split"] == "train" and r["metric"] == "samples_per_s" and int(r["step"]) > skip]
    return len(rates) * batch / sum(batch / x for x in rates)


def build_lmdb(tmp: Path, n: int) -> Path:
    from cn_clip_ext.synth.generator import write_synfundus
    from vclip_data_prep.build_lmdb import main as build_main

    write_synfundus(tmp / "syn", n=n, seed=0, size=128, workers=1, progress=False)
    if build_main([str(tmp / "syn"), "--out", str(tmp / "lmdb"), "--split", "1:0:0", "--size", "128",
                   "--workers", "1", "--no-progress"]) != 0:
        raise SystemExit("LMDB build failed")
    return tmp / "lmdb"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of all variants")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the LMDB variant")
    p.add_argument("--lmdb", type=Path, help="an existing LMDB root (default: build one from synthetic data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--items", type=int, help="training items (default: batch size x (steps + 1), one epoch)")
    p.add_argument("--skip", type=int, default=2, help="first steps left out of the steady-state rates")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)
    n = args.items or args.batch_size * (args.steps + 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tiny model {VISIONCLIP_TINY}, "
          f"batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps", file=sys.stderr)
    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "ours/memory": [], "ours/lmdb": []}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        root = args.lmdb or build_lmdb(tmp, n)
        from cn_clip_ext import get_tokenizer
        from cn_clip_ext.lmdb.reader import LmdbPairDataset

        _, train_tf, _ = create_model_and_transforms(VISIONCLIP_TINY, seed=0)
        lmdb_ds = LmdbPairDataset(root / "train", transform=train_tf, tokenizer=get_tokenizer(VISIONCLIP_TINY))
        # the "in-memory batch": the same items decoded and given their per-sample (geometry) transform
        # once, kept as uint8 tensors; every variant still applies the per-batch colour + normalisation
        items = [lmdb_ds[i] for i in range(min(n, len(lmdb_ds)))]
        images = torch.stack([x for x, _ in items])
        tokens = torch.stack([t for _, t in items])
        memory = TensorPairs(images, tokens)
        # variants alternate round by round so that load from other processes hits all alike
        outs: dict[str, list[Path]] = {"ours/memory": [], "ours/lmdb": []}
        for r in range(args.rounds):
            runs["bare"].append(bare_loop(images, tokens, args.batch_size, args.steps, args.seed))
            outs["ours/memory"].append(tmp / f"m{r}")
            runs["ours/memory"].append(ours(memory, args.batch_size, args.steps, args.seed, 0, tmp / f"m{r}"))
            outs["ours/lmdb"].append(tmp / f"l{r}")
            runs["ours/lmdb"].append(ours(lmdb_ds, args.batch_size, args.steps, args.seed, args.workers,
                                          tmp / f"l{r}"))
        steady = {k: [steady_rate(o, args.batch_size, args.skip) for o in v] for k, v in outs.items()}
    samples = args.batch_size * args.steps
    wall = {k: statistics.median(samples / w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(samples / c for _, c in v) for k, v in runs.items()}
    print(f"{'variant':<14}{'samples/s (wall)':>18}{'samples/CPU-s':>15}   per round (wall)")
    for k in runs:
        per_round = " ".join(f"{samples / w:.1f}" for w, _ in runs[k])
        cpu_txt = f"{cpu[k]:>15.1f}" if k != "ours/lmdb" else f"{'(workers)':>15}"
        print(f"{k:<14}{wall[k]:>18.1f}{cpu_txt}   {per_round}")
    print(f"trainer overhead vs bare loop: wall {(1 - wall['ours/memory'] / wall['bare']) * 100:+.1f}%, "
          f"CPU time {(1 - cpu['ours/memory'] / cpu['bare']) * 100:+.1f}% (target <= 5%)")
    print(f"LMDB-fed / in-memory (wall): {wall['ours/lmdb'] / wall['ours/memory'] * 100:.1f}% (target >= 90%)")
    steady_med = {k: statistics.median(v) for k, v in steady.items()}
    print(f"steady state after step {args.skip} (DataLoader start-up excluded; it recurs once per epoch): "
          f"ours/memory {steady_med['ours/memory']:.1f}, ours/lmdb {steady_med['ours/lmdb']:.1f} samples/s, "
          f"LMDB-fed / in-memory {steady_med['ours/lmdb'] / steady_med['ours/memory'] * 100:.1f}%")
    if torch.cuda.is_available():
        print("GPU present: the comparison with cn_clip's own loop is not implemented yet")
    else:
        print("no GPU: the H100 comparison with cn_clip's loop was skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
