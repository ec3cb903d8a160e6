"""The trainer: cn_clip's model and contrastive recipe, from one CPU process to M x N GPUs.

``train(config)`` builds everything from the config; tests and benchmarks may pass their own
map-style datasets of ``(image_tensor, token_ids)``, or of patients
``(left, right, has_left, has_right, token_ids)`` with ``kind = "patients"``. The data's kind
selects the objective (:mod:`.objectives`: CLIP pairs, or RET-CLIP's tripartite loss), which
moves a micro-batch to the device and computes its loss. A run is reproducible from its seed, and a
run resumed from a checkpoint continues at the exact next micro-batch with the same RNG states,
so its loss trajectory equals the uninterrupted run's (fp32, deterministic kernels).
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..errors import UserError, first_line
from ..model.factory import add_model_config, create_model_and_transforms, get_tokenizer
from ..model.protocols import BatchStep, logit_scale_names
from ..model.transforms import NO_AUGMENT
from . import checkpoint as ckpt
from .config import TrainConfig
from ..synth.toys import toy_splits
from .data import LabelledDataset, ResumableSampler, SeededDataset, batch_seed, item_seed, steps_per_epoch
from .distributed import DistEnv, all_gather_object, barrier, cleanup, init_distributed
from .validation import ValidationOptions, load_zeroshot_setup
from .loss import clamp_logit_scale
from .objectives import objective_for
from .optim import build_optimizer, build_scheduler
from .accumulation import train_step
from .shards import has_split, open_split as open_sharded_split
from .progress import StepMeter, progress_bar, step_line, train_log
from .speed import channels_last_images, compiled, configure_backends, image_tower_channels_last, uses_channels_last
from .recorder import Recorder, anon_rss_mb, host_rss_mb
from .loader import next_batch, shutdown, training_loader
from .preemption import PREEMPTED_EXIT_STATUS, Preempted, StopSignals
from .rundir import RunFolder, write_error
from .warmstart import warm_start

logger = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


@dataclass
class TrainResult:
    """What a finished (or deliberately stopped) run reports."""

    step: int
    total_steps: int
    epoch: int
    output_dir: Path
    last_checkpoint: Path | None
    losses: list[tuple[int, float]] = field(default_factory=list)  # the last 10,000 steps of this process
    valid: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 needs a GPU; use fp32 (or bf16) on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _toy_patient_splits(config: TrainConfig, image_size: int) -> tuple[Dataset, Dataset]:
    from ..synth.toys import toy_patient_splits

    return toy_patient_splits(config.data, image_size, config.seed, config.context_length)  # type: ignore[arg-type]


def _toy_pair_splits(config: TrainConfig, image_size: int) -> tuple[Dataset, Dataset]:
    return toy_splits(config.data, image_size, config.seed, config.context_length)  # type: ignore[arg-type]


TOY_DATA = {"toy-patients": _toy_patient_splits, "toy": _toy_pair_splits}
"""Generated in-memory data by spec prefix (``toy-patients:N``: patients, ``toy:N``: image-text pairs)."""


def build_datasets(config: TrainConfig, train_tf: Any, eval_tf: Any, image_size: int) -> tuple[Dataset, Dataset | None]:
    """Train and valid datasets from ``config.data``: ``toy:N``, ``toy-patients:N`` or an LMDB root with
    train/ and valid/ (single images or patients, as its manifest says), or a sharded build's root
    (its ``shard-i-of-N/`` splits concatenated, :mod:`.shards`)."""
    if config.data is None:
        raise UserError("no training data: set --data to an LMDB root (with train/ and valid/), toy:N or "
                        "toy-patients:N")
    prefix = config.data.partition(":")[0]
    if prefix in TOY_DATA:
        return TOY_DATA[prefix](config, image_size)
    root = Path(config.data)
    if not has_split(root, "train"):
        raise UserError(f"{root}: no train/ LMDB split here (expected {root}/train/imgs and {root}/train/pairs)")
    from ..lmdb.reader import open_lmdb_dataset  # not imported for toy data
    tokenizer = get_tokenizer(config.model, context_length=config.context_length)

    def open_split(split: str, transform: Any) -> Dataset | None:
        def open_one(folder: Path) -> Dataset:
            return open_lmdb_dataset(folder, transform=transform, tokenizer=tokenizer)

        try:
            return open_sharded_split(root, split, open_one)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(str(exc).splitlines()[0]) from None

    train = open_split("train", train_tf)
    valid = None
    if has_split(root, "valid"):
        valid = LabelledDataset(open_split("valid", eval_tf), config.valid_max_samples)  # side-table columns
    else:
        logger.warning("%s: no valid/ split; validation is skipped", root)
    return train, valid


class Trainer:
    """One training run on this process (see :func:`train`)."""

    def __init__(self, config: TrainConfig, env: DistEnv, train_dataset: Dataset | None = None,
                 valid_dataset: Dataset | None = None):
        self.config, self.env = config, env
        c = config
        if c.model_config_dir:
            add_model_config(c.model_config_dir)
        self.out = Path(c.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.folder: RunFolder | None = None
        seed_everything(c.seed + env.rank)
        model, train_tf, eval_tf = create_model_and_transforms(
            c.model, seed=c.seed, context_length=c.context_length, preprocess=c.preprocess,
            augment=None if c.augment else NO_AUGMENT)
        self.tokenizer = get_tokenizer(c.model, context_length=c.context_length)
        self.zs_prompts, self.zs_classes = (load_zeroshot_setup(c.zeroshot_prompts, c.zeroshot_table, c.data)
                                            if c.zeroshot_prompts and c.zeroshot_table else (None, None))
        if train_dataset is None:
            train_dataset, built_valid = build_datasets(c, train_tf, eval_tf, model.vclip_config.image_size)
            valid_dataset = valid_dataset if valid_dataset is not None else built_valid
        self.train_set, self.valid_set = train_dataset, valid_dataset
        self.objective = objective_for(train_dataset)
        # uint8 image batches (raw pixels from the train transform) get its device-side colour + normalisation
        self.batch_transform = train_tf.batch_transform if isinstance(train_tf, BatchStep) else None
        n = len(train_dataset)  # type: ignore[arg-type]
        self.steps_per_epoch = steps_per_epoch(n, c.batch_size, env.world_size, c.accum_steps)
        if self.steps_per_epoch < 1:
            raise UserError(f"the training split has {n} items, fewer than one optimizer step needs "
                            f"({c.batch_size} x {env.world_size} processes x {c.accum_steps} accumulation)")
        self.total_steps = c.max_steps if c.max_steps is not None else self.steps_per_epoch * c.epochs
        self.folder = RunFolder.claim(self.out, env)  # after the data is known good: no empty folder
        try:
            self._setup(model, train_tf, n)
        except BaseException:
            self.folder.release(failed=True)
            raise

    def _setup(self, model: torch.nn.Module, train_tf: Any, n: int) -> None:
        c, env = self.config, self.env
        resume_path = ckpt.find_resume(c.resume, self.ckpt_dir)
        state = ckpt.load_checkpoint(resume_path) if resume_path else None
        self.folder.check(c, resume_path, state, n)  # type: ignore[union-attr]
        if state is None and c.warm_start:
            warm_start(model, c.warm_start)
        model = self.objective.prepare_model(model, c.seed)
        if c.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model.to(env.device)
        configure_backends(env.device, c.deterministic)
        self.channels_last = uses_channels_last(c.channels_last, env.device)
        if self.channels_last:
            image_tower_channels_last(model)
        self.dtype = resolve_precision(c.precision, env.device)
        if c.sync_bn and env.distributed:
            if env.device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                logger.warning("sync_bn ignored: SyncBatchNorm needs CUDA")
        self.raw_model = model
        self.model: torch.nn.Module = compiled(model, c.compile)
        if env.distributed:
            self.model = DistributedDataParallel(
                self.model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                gradient_as_bucket_view=True)
        self.optimizer = build_optimizer(model, c.lr, c.weight_decay, (c.beta1, c.beta2), c.eps)
        self.schedule = build_scheduler(self.optimizer, c.lr, c.warmup_steps, self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.step, self.epoch, self.batch = 0, 0, 0
        self.last_checkpoint: Path | None = None
        if state is not None:
            self._restore(state, resume_path)  # type: ignore[arg-type]
        if env.is_main:
            try:
                self.folder.save_config(c, {  # type: ignore[union-attr]
                    "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                    "epochs": round(self.total_steps / self.steps_per_epoch, 4)})
            except OSError as exc:
                raise write_error(exc, "run configuration (config.json)") from None
        self.recorder = Recorder(self.out, env.is_main, resume_step=self.step if state is not None else None,
                                 tensorboard=c.tensorboard)

    # -- state ---------------------------------------------------------------------------------
    def _restore(self, state: dict[str, Any], path: Path) -> None:
        try:
            self.raw_model.load_state_dict(ckpt.strip_module(state["state_dict"]))
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"{path}: checkpoint does not fit this model/optimizer ({first_line(exc)})") from None
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        pos = state.get("position") or {"epoch": int(state.get("epoch", 0)), "batch": 0}
        self.epoch, self.batch = int(pos["epoch"]), int(pos["batch"])
        rngs = state.get("rng") or []
        if len(rngs) == self.env.world_size:
            ckpt.restore_rng(rngs[self.env.rank])
        else:
            logger.warning("checkpoint has RNG states for %d processes, this run has %d: RNGs reseeded, "
                           "so the trajectory will not match an uninterrupted run exactly",
                           len(rngs), self.env.world_size)
            seed_everything(self.config.seed + self.env.rank + 7 * self.step)
        self.last_checkpoint = path
        logger.info("resumed from %s at step %d (epoch %d, micro-batch %d)", path, self.step, self.epoch, self.batch)

    def _state(self) -> dict[str, Any]:
        rngs = all_gather_object(ckpt.capture_rng())
        return {
            "epoch": self.epoch, "step": self.step, "name": self.config.model,
            "state_dict": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "config": self.config.to_dict(), "rng": rngs,
            "position": self._position(),
            "world_size": self.env.world_size, "format_version": ckpt.FORMAT_VERSION,
        }

    def _position(self) -> dict[str, int]:
        """The next micro-batch to read (the next epoch's first after an epoch's last step)."""
        if self.batch >= self.steps_per_epoch * self.config.accum_steps:
            return {"epoch": self.epoch + 1, "batch": 0}
        return {"epoch": self.epoch, "batch": self.batch}

    def save(self) -> None:
        state = self._state()  # collective: every rank contributes its RNG state
        if self.env.is_main:
            self.last_checkpoint = self.folder.save(  # type: ignore[union-attr]
                state, self.step, self.config.keep_last, self.last_checkpoint)
        barrier()

    # -- pieces --------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.dtype)

    def _loader(self, sampler: ResumableSampler, seeded: SeededDataset) -> DataLoader:
        c = self.config
        return training_loader(seeded, sampler, c.batch_size, c.num_workers, self.env.device.type == "cuda",
                               item_seed(c.seed, self.epoch, self.batch))

    def _device_batch(self, batch: Any) -> list[torch.Tensor]:
        """The micro-batch on the device; ``uint8`` images then go through :attr:`batch_transform`,
        its random draws seeded from (seed, epoch, micro-batch, rank) so that a resume redraws them."""
        batch = self.objective.to_device(batch, self.env.device)
        if self.batch_transform is not None:
            gen = torch.Generator().manual_seed(batch_seed(self.config.seed, self.epoch, self.batch, self.env.rank))
            batch = self.objective.map_images(
                batch, lambda images: self.batch_transform(images, gen) if images.dtype == torch.uint8 else images)
        return self.objective.map_images(batch, channels_last_images) if self.channels_last else batch

    def validate(self) -> dict[str, float]:
        if self.valid_set is None:
            return {}
        c = self.config
        t0 = time.perf_counter()
        options = ValidationOptions(
            batch_size=c.valid_batch_size, loss_batch_size=c.batch_size * self.env.world_size,
            num_workers=min(c.num_workers, 2), max_samples=c.valid_max_samples, label_names=c.zeroshot_labels,
            autocast=self.autocast, prompts=self.zs_prompts, label_classes=self.zs_classes)
        metrics = self.objective.evaluate(self.model, self.valid_set, self.env, self.tokenizer, options)
        self.recorder.log(self.step, self.epoch, "valid", metrics)
        if self.env.is_main:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            logger.info("valid @ step %d (%.1fs): %s", self.step, time.perf_counter() - t0, shown)
        return metrics

    def _check_finite(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise self._diverged(loss)

    def _stop(self, signals: StopSignals) -> None:
        """A stop signal arrived: checkpoint this step (unless just saved) and raise :class:`Preempted`."""
        if self.last_checkpoint is None or self.last_checkpoint.name != ckpt.step_name(self.step):
            self.save()
        if self.env.is_main:
            logger.warning("%s received: checkpoint %s written at step %d; exiting with status %d (resume with "
                           "--resume auto)", signals.name, self.last_checkpoint, self.step, PREEMPTED_EXIT_STATUS)
        raise Preempted(signals.name, self.step, self.last_checkpoint)

    def _diverged(self, loss: float) -> TrainingDiverged:
        where = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                 else "no checkpoint had been written yet")
        return TrainingDiverged(f"loss became {loss} at step {self.step + 1} (epoch {self.epoch}, micro-batch "
                                f"{self.batch}); training stopped, {where}")

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to the end of the schedule (or ``stop_after``); rank 0 also logs to ``train.log``."""
        with train_log(self.out, self.env.is_main):
            return self._run()

    def _run(self) -> TrainResult:
        c, env = self.config, self.env
        sampler = ResumableSampler(len(self.train_set), c.batch_size, env.world_size, env.rank,  # type: ignore
                                   seed=c.seed)
        seeded = SeededDataset(self.train_set, c.seed)
        usable = self.steps_per_epoch * c.accum_steps  # micro-batches per epoch that make whole steps
        stop = self.total_steps if c.stop_after is None else min(self.total_steps, c.stop_after)
        global_batch = c.batch_size * env.world_size * c.accum_steps
        losses: deque[tuple[int, float]] = deque(maxlen=10_000)
        valid: dict[str, float] = {}
        self.model.train()
        objective = self.objective
        scale_names = logit_scale_names(self.raw_model)
        if env.is_main:
            logger.info("training %s (%s objective): %d steps (%d per epoch), global batch %d on %d process(es), "
                        "%s, output %s", c.model, objective.name, self.total_steps, self.steps_per_epoch,
                        global_batch, env.world_size, self.dtype or "fp32", self.out)
        bar = progress_bar(env.is_main and c.progress, self.total_steps, self.step)
        meter = StepMeter(global_batch, env.device)
        loader = self._loader(sampler, seeded)
        signals = StopSignals().__enter__()
        try:
            while self.step < stop:
                if self.batch >= usable:
                    self.epoch, self.batch = self.epoch + 1, 0
                sampler.set_epoch(self.epoch, self.batch)
                seeded.epoch = self.epoch
                batches = iter(loader)
                while self.batch < usable and self.step < stop:
                    lr = float(self.schedule(self.step))
                    micro_batches = []
                    for _ in range(c.accum_steps):
                        with meter.waiting():
                            raw = next_batch(batches)
                        micro_batches.append(self._device_batch(raw))
                        self.batch += 1
                    result = train_step(self.model, objective, micro_batches, self.autocast, self.scaler,
                                        self._check_finite)
                    step_loss, step_parts = result.loss, result.parts
                    del micro_batches
                    if c.grad_clip is not None:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), c.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    clamp_logit_scale(self.raw_model)
                    self.step += 1
                    losses.append((self.step, step_loss))
                    meter.step_done()
                    if self.step % c.log_every == 0 or self.step == stop:
                        stats = meter.window()
                        self.recorder.log(self.step, self.epoch, "train", {
                            "loss": step_loss, **{f"loss_{k}": v for k, v in step_parts.items()}, "lr": lr,
                            **{k: float(getattr(self.raw_model, k).detach().exp()) for k in scale_names},
                            **stats, "host_rss_mb": host_rss_mb(), "anon_rss_mb": anon_rss_mb()})
                        if env.is_main:
                            logger.info(step_line(self.step, self.total_steps, step_loss, lr, stats))
                        if bar is not None:
                            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}",
                                            sps=f"{stats['samples_per_s']:.1f}", refresh=False)
                    if bar is not None:
                        bar.update(1)
                    finished = self.step == self.total_steps
                    if (c.valid_every and self.step % c.valid_every == 0) or (finished and self.step > 0):
                        valid = self.validate()
                    if self.step % c.save_every == 0 or finished:
                        self.save()
                    if not finished and signals.requested(env):
                        self._stop(signals)
                del batches
        finally:
            signals.__exit__()
            shutdown(loader)
            if bar is not None:
                bar.close()
            self.recorder.close()
        if env.is_main and c.plot and self.step == self.total_steps:
            png = self.recorder.plot()
            if png:
                logger.info("curves written to %s", png)
        return TrainResult(self.step, self.total_steps, self.epoch, self.out, self.last_checkpoint,
                           list(losses), valid)


def train(config: TrainConfig, train_dataset: Dataset | None = None,
          valid_dataset: Dataset | None = None) -> TrainResult:
    """Run (or resume) training as configured; joins torchrun's process group when there is one."""
    env = init_distributed(config.device)
    trainer = None
    try:
        trainer = Trainer(config, env, train_dataset, valid_dataset)
        return trainer.run()
    except OSError as exc:  # the disk filled up, the folder became read-only ...: one line, what to do
        raise write_error(exc, "training output", trainer.last_checkpoint if trainer else None) from None
    finally:
        if trainer is not None and trainer.folder is not None:
            trainer.folder.release()
        cleanup(env)


__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "build_datasets", "resolve_precision", "seed_everything",
           "train"]
