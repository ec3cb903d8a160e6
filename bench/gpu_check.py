"""GPU check of the training path (not a test): one run on one H100/H200 writes the GPU section of
``bench/RESULTS.md``. ``bench/gpu_check.sh`` runs it; ``--cpu-smoke`` runs every part with tiny sizes
on the CPU (what the test suite does, so the GPU run cannot fail on a typo).

Parts, all in the same process and run, on the same model (RN50@RoBERTa-wwm-ext-base-chinese on the GPU):

(a) CUDA smoke: ``vclip-train`` for 50 steps in bf16 from a small LMDB, deterministic kernels; a second
    run is killed (SIGKILL) after its step-25 checkpoint and resumed with ``--resume auto``: the losses
    of all 50 steps must be identical to the uninterrupted run's.
(b) model-only samples/s (batch already on the GPU) at batch 128 and 256, bf16, with and without
    ``torch.compile``: our training step (forward, global contrastive loss, backward, fused AdamW),
    peak memory, and achieved FLOP/s (counted by ``torch.utils.flop_counter``) as a fraction of a bf16
    matrix-product peak measured on the same card.
(c) stock cn_clip's training step on the same model and batch: its ``get_loss`` (from
    ``cn_clip.training.train``) under its ``amp`` recipe (fp16 autocast, GradScaler, plain AdamW, DDP
    over one process), as its ``train()`` runs it; samples/s in the same run.
(d) end to end: ``vclip-train``'s trainer from an LMDB with DataLoader workers, against (b)'s
    model-only number at the same batch.

Targets (issue): ours >= 1.5x cn_clip's step; end to end >= 90% of model-only; >= 1,500 samples/s
model-only for RN50+RoBERTa-base on one H100-class GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"
logger = logging.getLogger("gpu_check")


@dataclass(frozen=True)
class Sizes:
    """What each part runs: the GPU sizes, or the CPU smoke's tiny ones."""

    model: str
    cn_clip_towers: tuple[str, str] | None  # cn_clip's own (vision, text) config names for part (c)
    device: str
    images: int  # generated SynFundus images for the LMDB
    image_px: int
    smoke_batch: int
    smoke_steps: int
    smoke_save: int
    batches: tuple[int, ...]
    warmup: int
    timed: int
    e2e_batch: int
    e2e_steps: int
    e2e_workers: int
    matmul_n: int
    compile: bool
    precision: str  # bf16 on the GPU; fp32 in the CPU smoke (CPU bf16 kernels are far slower than fp32)


GPU = Sizes(model="RN50@RoBERTa-wwm-ext-base-chinese", cn_clip_towers=("RN50", "RoBERTa-wwm-ext-base-chinese"),
            device="cuda", images=5200, image_px=256, smoke_batch=32, smoke_steps=50, smoke_save=25,
            batches=(128, 256), warmup=5, timed=20, e2e_batch=128, e2e_steps=30, e2e_workers=8, matmul_n=8192,
            compile=True, precision="bf16")
SMOKE = Sizes(model="RN-tiny@BERT-tiny-chinese", cn_clip_towers=None, device="cpu", images=60, image_px=96,
              smoke_batch=4, smoke_steps=12, smoke_save=4, batches=(4, 8), warmup=1, timed=2, e2e_batch=4,
              e2e_steps=4, e2e_workers=1, matmul_n=256, compile=False, precision="fp32")


@dataclass
class Report:
    sizes: Sizes
    started: float = field(default_factory=time.perf_counter)
    rows: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    budget_s: float = 450.0  # the compiled runs are skipped past this (bench/gpu_check.sh has 8 minutes)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def env_for_children() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK") and
           not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    env.setdefault("OMP_NUM_THREADS", "1")  # two trainings run side by side in (a)
    return env


# -- data ---------------------------------------------------------------------------------------
def build_lmdb(work: Path, sizes: Sizes) -> Path:
    from cn_clip_ext.synth.generator import write_synfundus
    from vclip_data_prep.build_lmdb import main as build_main

    workers = max(1, min(16, os.cpu_count() or 1))
    write_synfundus(work / "syn", n=sizes.images, seed=0, size=sizes.image_px, workers=workers, progress=False)
    rc = build_main([str(work / "syn"), "--out", str(work / "lmdb"), "--split", "8:1:1", "--size",
                     str(sizes.image_px), "--workers", str(workers), "--no-progress"])
    if rc != 0:
        raise SystemExit(f"gpu_check: vclip-build-lmdb failed with status {rc}")
    return work / "lmdb"


# -- (a) resume smoke ---------------------------------------------------------------------------
def _train_cmd(sizes: Sizes, lmdb: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vclip_train.train", "--model", sizes.model, "--data", str(lmdb),
            "--output-dir", str(out), "--batch-size", str(sizes.smoke_batch), "--max-steps", str(sizes.smoke_steps),
            "--warmup-steps", "5", "--lr", "1e-4", "--save-every", str(sizes.smoke_save), "--valid-every", "0",
            "--log-every", "1", "--num-workers", "2", "--precision", sizes.precision, "--deterministic", "--device",
            sizes.device, "--no-plot", "--no-tensorboard", "--seed", "11", *extra]


def _losses(metrics_csv: Path) -> dict[int, float]:
    if not metrics_csv.is_file():
        return {}
    with metrics_csv.open(newline="", encoding="utf-8") as fh:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(fh)
                if r["split"] == "train" and r["metric"] == "loss"}


def part_a(report: Report, lmdb: Path, work: Path) -> None:
    s = report.sizes
    env = env_for_children()
    logs = {name: (work / f"a_{name}.log").open("w") for name in ("full", "killed", "resumed")}
    full = subprocess.Popen(_train_cmd(s, lmdb, work / "a_full"), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=logs["full"])
    killed_out = work / "a_killed"
    victim = subprocess.Popen(_train_cmd(s, lmdb, killed_out), env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=logs["killed"])
    kill_after = s.smoke_save + max(1, s.smoke_save // 5)  # past the checkpoint, before the next one
    killed_at = None
    while victim.poll() is None:
        done = max(_losses(killed_out / "metrics.csv"), default=0)
        if done >= kill_after and (killed_out / "checkpoints" / "latest.pt").is_file():
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            killed_at = done
            break
        time.sleep(0.05)
    full.wait()

    def last_line(name: str) -> str:
        if not logs[name].closed:
            logs[name].flush()
        lines = (work / f"a_{name}.log").read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    victim_err = last_line("killed")
    if full.returncode != 0:
        report.failures.append(f"(a) uninterrupted run failed: {last_line('full')}")
        return
    if killed_at is None:
        note = "the run ended before it could be killed"
        if s.device == "cuda":
            report.failures.append(f"(a) {note}: {victim_err}")
            return
        report.rows.setdefault("notes", []).append(f"(a) {note}")  # tiny CPU steps can outrun the poll
    resumed = subprocess.run(_train_cmd(s, lmdb, killed_out, "--resume", "auto"), env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=logs["resumed"])
    for fh in logs.values():
        fh.close()
    if resumed.returncode != 0:
        report.failures.append(f"(a) resumed run failed: {last_line('resumed')}")
        return
    want, got = _losses(work / "a_full" / "metrics.csv"), _losses(killed_out / "metrics.csv")
    identical = sorted(want) == list(range(1, s.smoke_steps + 1)) and got == want
    report.rows["a"] = {"steps": s.smoke_steps, "killed_after_step": killed_at, "checkpoint_step": s.smoke_save,
                        "identical": identical, "first_loss": want.get(1), "last_loss": want.get(s.smoke_steps),
                        "max_abs_difference": max((abs(got.get(k, float("nan")) - v) for k, v in want.items()),
                                                  default=float("nan"))}
    if not identical:
        report.failures.append("(a) the resumed run's losses differ from the uninterrupted run's")


# -- (b) model-only -----------------------------------------------------------------------------
def matmul_peak(device: torch.device, n: int) -> float:
    """Measured bf16 matrix-product FLOP/s (best of a few timed repeats)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t) / 10)
    return 2 * n**3 / best


def synthetic_batch(batch: int, size: int, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """Normalised-looking images and caption ids of length 52 (the [CLS] ... [SEP] layout), on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=gen)
    tokens = torch.zeros(batch, 52, dtype=torch.long)
    tokens[:, 0] = 101
    tokens[:, 1:40] = torch.randint(672, 7000, (batch, 39), generator=gen)
    tokens[:, 40] = 102
    return [images.to(device), tokens.to(device)]


def _timed(step: Callable[[], None], device: torch.device, warmup: int, timed: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(timed):
        step()
    sync(device)
    return (time.perf_counter() - t) / timed


def ours_step_fn(model_name: str, batch: int, device: torch.device, compile_model: bool, precision: str = "bf16"
                 ) -> tuple[Callable[[], None], torch.nn.Module, list[torch.Tensor]]:
    """Our training step exactly as the trainer runs it (bf16 autocast, channels-last image tower,
    fused AdamW on CUDA, the objective's loss, logit-scale clamp)."""
    from cn_clip_ext.model.factory import create_model
    from cn_clip_ext.training.accumulation import plain_step
    from cn_clip_ext.training.loss import clamp_logit_scale
    from cn_clip_ext.training.objectives import ClipObjective
    from cn_clip_ext.training.optim import build_optimizer
    from cn_clip_ext.training.speed import (channels_last_images, compiled, configure_backends,
                                            image_tower_channels_last, uses_channels_last)

    model = create_model(model_name, seed=0).to(device).train()
    configure_backends(device, deterministic=False)
    last = uses_channels_last(True, device)
    if last:
        image_tower_channels_last(model)
    forward = compiled(model, compile_model)
    optimizer = build_optimizer(model, 1e-4, 0.2, (0.9, 0.98), 1e-6)
    objective = ClipObjective()
    data = synthetic_batch(batch, model.vclip_config.image_size, device)
    if last:
        data[0] = channels_last_images(data[0])
    def autocast():
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    scaler = torch.amp.GradScaler("cuda", enabled=False)

    def step() -> None:
        plain_step(forward, objective, data, autocast, scaler, lambda _: None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale(model)

    return step, forward, data


def step_flops(step: Callable[[], None]) -> float:
    """FLOPs of one training step (forward and backward; the optimizer's element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def part_b(report: Report, peak: float, compile_model: bool) -> None:
    """Our step at each batch size, eager or compiled (the compiled rows reuse the eager FLOP count)."""
    s = report.sizes
    device = torch.device(s.device)
    rows = report.rows.setdefault("b", [])
    if compile_model and not s.compile:
        report.rows.setdefault("notes", []).append("torch.compile is not run in the CPU smoke")
        return
    for batch in s.batches:
        if compile_model and report.elapsed() > s_budget(report) - 150:
            report.rows.setdefault("notes", []).append(f"compiled batch {batch} skipped: time budget")
            continue
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step, _, _ = ours_step_fn(s.model, batch, device, compile_model, s.precision)
        t0 = time.perf_counter()
        step()  # the first step (compiles when asked)
        sync(device)
        first = time.perf_counter() - t0
        seconds = _timed(step, device, s.warmup, s.timed)
        eager = next((r for r in rows if r["batch"] == batch and not r["compile"]), None)
        flops = eager["flops_per_step"] if compile_model and eager else step_flops(step)
        rows.append({"batch": batch, "compile": compile_model, "samples_per_s": batch / seconds,
                     "step_ms": 1000 * seconds, "first_step_s": first, "flops_per_step": flops,
                     "achieved_tflops": flops / seconds / 1e12, "peak_fraction": flops / seconds / peak,
                     "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
                     else None})
        logger.info("(b) batch %d compile=%s: %.1f samples/s", batch, compile_model, rows[-1]["samples_per_s"])
        del step
        if compile_model:
            torch._dynamo.reset()


def s_budget(report: Report) -> float:
    return report.budget_s


# -- (c) stock cn_clip's step -------------------------------------------------------------------
def _single_process_group(device: torch.device) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29000 + os.getpid() % 1000))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def cn_clip_model(towers: tuple[str, str] | None, model_name: str) -> torch.nn.Module:
    """cn_clip's ``CLIP`` built as its ``main.py`` builds it (from its own tower configs, fp32)."""
    from cn_clip.clip.model import CLIP

    if towers is None:  # the CPU smoke's tiny towers are ours (cn_clip ships none that small)
        from cn_clip_ext.model.factory import create_model

        return create_model(model_name, seed=0)
    import cn_clip

    folder = Path(cn_clip.__file__).parent / "clip" / "model_configs"
    info = json.loads((folder / f"{towers[0]}.json").read_text())
    info.update(json.loads((folder / f"{towers[1]}.json").read_text()))
    if isinstance(info["vision_layers"], str):
        info["vision_layers"] = json.loads(info["vision_layers"])
    info["use_flash_attention"] = False
    return CLIP(**info).float()


def part_c(report: Report) -> None:
    """cn_clip's own step (train.py, ``accum_freq == 1`` and ``precision == "amp"``)."""
    from cn_clip.training.train import get_loss

    s = report.sizes
    device = torch.device(s.device)
    model = cn_clip_model(s.cn_clip_towers, s.model).to(device)
    if device.type != "cuda":
        # cn_clip's step calls .cuda() on its targets: the smoke checks everything up to the step itself
        import inspect

        params = list(inspect.signature(get_loss).parameters)
        assert params[:6] == ["model", "images", "texts", "loss_img", "loss_txt", "args"], params
        report.rows["c"] = {"note": "cn_clip's step needs CUDA; built its model and checked get_loss's signature"}
        return
    _single_process_group(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index or 0])
    exclude = lambda n: "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731 - its rule
    named = list(ddp.named_parameters())
    optimizer = torch.optim.AdamW([{"params": [p for n, p in named if exclude(n)], "weight_decay": 0.0},
                                   {"params": [p for n, p in named if not exclude(n)], "weight_decay": 0.2}],
                                  lr=5e-4, betas=(0.9, 0.999), eps=1e-8)
    scaler = torch.amp.GradScaler("cuda")  # its main.py's GradScaler() for precision "amp"
    loss_img, loss_txt = torch.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    args = Namespace(accum_freq=1, mask_ratio=0, distillation=False, aggregate=True, gather_with_grad=False,
                     report_training_batch_acc=False, local_device_rank=device.index or 0)
    torch.backends.cudnn.benchmark = True  # as its main.py sets
    rows = []
    for batch in s.batches:
        images, texts = synthetic_batch(batch, 224, device)

        def step() -> None:
            optimizer.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):  # its torch.cuda.amp.autocast()
                total_loss, _ = get_loss(ddp, images, texts, loss_img, loss_txt, args)
                scaler.scale(total_loss).backward()
                scaler.step(optimizer)
            scaler.update()
            ddp.module.logit_scale.data = torch.clamp(ddp.module.logit_scale.data, 0, 4.6052)

        torch.cuda.reset_peak_memory_stats(device)
        seconds = _timed(step, device, s.warmup, s.timed)
        rows.append({"batch": batch, "samples_per_s": batch / seconds, "step_ms": 1000 * seconds,
                     "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30})
        logger.info("(c) cn_clip batch %d: %.1f samples/s", batch, rows[-1]["samples_per_s"])
    report.rows["c"] = rows
    import torch.distributed as dist

    del ddp, model, optimizer
    dist.destroy_process_group()
    torch.cuda.empty_cache()


# -- (d) end to end -----------------------------------------------------------------------------
def part_d(report: Report, lmdb: Path, work: Path) -> None:
    from cn_clip_ext.training import TrainConfig, train

    s = report.sizes
    cfg = TrainConfig.from_dict(dict(
        model=s.model, data=str(lmdb), output_dir=str(work / "d_e2e"), batch_size=s.e2e_batch,
        max_steps=s.e2e_steps, warmup_steps=5, lr=1e-4, num_workers=s.e2e_workers, valid_every=0,
        save_every=10**6, log_every=max(1, s.e2e_steps // 3), precision=s.precision, device=s.device,
        plot=False, tensorboard=False, progress=False, seed=5))
    train(cfg)
    with (work / "d_e2e" / "metrics.csv").open(newline="", encoding="utf-8") as fh:
        rates = [(int(r["step"]), float(r["value"])) for r in csv.DictReader(fh)
                 if r["split"] == "train" and r["metric"] == "samples_per_s"]
        fh.seek(0)
        waits = [float(r["value"]) for r in csv.DictReader(fh) if r["metric"] == "data_wait_pct"]
    steady = [v for step, v in rates[1:]] or [v for _, v in rates]  # the first window holds the start-up
    model_only = next((r["samples_per_s"] for r in report.rows.get("b", [])
                       if r["batch"] == s.e2e_batch and not r["compile"]), None)
    e2e = sum(steady) / len(steady)
    report.rows["d"] = {"batch": s.e2e_batch, "workers": s.e2e_workers, "samples_per_s": e2e,
                        "data_wait_pct": waits[1:] or waits, "model_only_samples_per_s": model_only,
                        "fraction_of_model_only": e2e / model_only if model_only else None}


# -- the report ---------------------------------------------------------------------------------
def markdown(report: Report, command: str, peak: float) -> str:
    r, s = report.rows, report.sizes
    dev = torch.cuda.get_device_name(0) if s.device == "cuda" else platform.processor() or "CPU"
    lines = [BEGIN, "## GPU check (`bench/gpu_check.sh`)", "",
             f"`{command}` on {dev}, torch {torch.__version__}, {s.model}; "
             f"{report.elapsed():.0f} s in all. bf16 matrix-product peak measured: {peak / 1e12:.0f} TFLOP/s.", ""]
    a = r.get("a")
    if a:
        lines += [f"(a) resume smoke: {a['steps']} steps {s.precision} (deterministic kernels), killed after step "
                  f"{a['killed_after_step']} (checkpoint at {a['checkpoint_step']}), resumed with `--resume auto`: "
                  f"losses {'identical' if a['identical'] else 'DIFFERENT'} at every step "
                  f"(largest difference {a['max_abs_difference']:.3g}; loss {a['first_loss']:.4f} -> "
                  f"{a['last_loss']:.4f}).", ""]
    b = r.get("b") or []
    c = {row["batch"]: row for row in r.get("c") or [] if isinstance(row, dict) and "batch" in row} \
        if isinstance(r.get("c"), list) else {}
    if b:
        lines += ["(b, c) training step with the batch on the GPU (samples/s; cn_clip: its `get_loss` step with its "
                  "fp16 `amp` recipe):", "",
                  f"| batch | ours, {s.precision} | ours, {s.precision} + compile | cn_clip step | ours / cn_clip | peak memory (ours) "
                  "| achieved TFLOP/s (share of peak) |", "|---|---|---|---|---|---|---|"]
        for batch in s.batches:
            plain = next((x for x in b if x["batch"] == batch and not x["compile"]), None)
            comp = next((x for x in b if x["batch"] == batch and x["compile"]), None)
            if plain is None:
                continue
            ref = c.get(batch)
            best = max((x for x in (plain, comp) if x), key=lambda x: x["samples_per_s"])
            cells = [str(batch), f"{plain['samples_per_s']:.0f}",
                     f"{comp['samples_per_s']:.0f} (first step {comp['first_step_s']:.0f} s)" if comp else "-",
                     f"{ref['samples_per_s']:.0f}" if ref else "-",
                     f"{best['samples_per_s'] / ref['samples_per_s']:.2f}x" if ref else "-",
                     f"{best['peak_mem_gib']:.1f} GiB" if best.get("peak_mem_gib") is not None else "-",
                     f"{best['achieved_tflops']:.1f} ({100 * best['peak_fraction']:.1f} %)"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    d = r.get("d")
    if d:
        frac = f"{100 * d['fraction_of_model_only']:.0f} %" if d["fraction_of_model_only"] else "-"
        lines += [f"(d) end to end from the LMDB, {d['workers']} DataLoader workers, batch {d['batch']}: "
                  f"{d['samples_per_s']:.0f} samples/s = {frac} of model-only (data wait "
                  f"{', '.join(f'{w:.1f}' for w in d['data_wait_pct'])} %).", ""]
    if r.get("notes"):
        lines += ["Notes: " + "; ".join(r["notes"]), ""]
    if report.failures:
        lines += ["Failures: " + "; ".join(report.failures), ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(results: Path, section: str) -> None:
    text = results.read_text(encoding="utf-8") if results.is_file() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="every part with tiny sizes on the CPU")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md", help="file whose GPU section to write")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--parts", default="abcdk", help="which parts to run, in order (default abcdk; k: (b) compiled)")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip the compiled runs after this many seconds")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    sizes = SMOKE if args.cpu_smoke else GPU
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --cpu-smoke on a machine without one)", file=sys.stderr)
        return 2
    report = Report(sizes, budget_s=args.budget_s)
    device = torch.device(sizes.device)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        peak = matmul_peak(device, sizes.matmul_n)
        lmdb = build_lmdb(work, sizes) if set(args.parts) & {"a", "d"} else None
        logger.info("data ready after %.0f s", report.elapsed())
        parts: dict[str, Callable[[], None]] = {
            "a": lambda: part_a(report, lmdb, work), "b": lambda: part_b(report, peak, False),
            "c": lambda: part_c(report), "d": lambda: part_d(report, lmdb, work),
            "k": lambda: part_b(report, peak, True)}
        for name in args.parts:
            t = time.perf_counter()
            try:
                parts[name]()
            except Exception as exc:  # noqa: BLE001 - one part failing must not hide the others' numbers
                logger.exception("part (%s) failed", name)
                report.failures.append(f"({name}) {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            logger.info("part (%s) took %.0f s", name, time.perf_counter() - t)
    command = "bash bench/gpu_check.sh" + (" --cpu-smoke" if args.cpu_smoke else "")
    section = markdown(report, command, peak)
    write_section(args.results, section)
    if args.json:
        args.json.write_text(json.dumps({"rows": report.rows, "failures": report.failures, "peak_flops": peak,
                                         "seconds": report.elapsed()}, indent=2, default=str), encoding="utf-8")
    sys.stdout.write(section)
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
