"""Unit checks of the training pieces: config, optimizer groups, schedule, sampler, metrics, CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch

from cn_clip_ext import VISIONCLIP_TINY, create_model
from cn_clip_ext.evaluation.scores import balanced_accuracy, recall_at_k
from cn_clip_ext.training import ResumableSampler, SeededDataset, TrainConfig, build_optimizer, build_scheduler
from cn_clip_ext.training.optim import no_decay
from cn_clip_ext.evaluation.classifier import class_embeddings, predict


def test_config_defaults_file_and_cli_overrides(tmp_path):
    paper = TrainConfig()
    assert paper.model == "RN50@RoBERTa-wwm-ext-base-chinese" and paper.precision == "auto"
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"batch_size": 32, "zeroshot_labels": ["dr_grade"]}))
    cfg = TrainConfig.from_file(path, base=TrainConfig.tiny())
    assert cfg.model == VISIONCLIP_TINY and cfg.batch_size == 32 and cfg.zeroshot_labels == ("dr_grade",)
    assert cfg.override(lr="0.01", max_steps="none", sync_bn="true").lr == 0.01

    from vclip_train.train import build_parser, config_from_args

    args = build_parser().parse_args(["--preset", "tiny", "--config", str(path), "--batch-size", "8",
                                      "--no-tensorboard", "--zeroshot-labels", "is_gc,is_amd"])
    cfg = config_from_args(args)
    assert (cfg.batch_size, cfg.tensorboard, cfg.zeroshot_labels) == (8, False, ("is_gc", "is_amd"))
    cfg.save(tmp_path / "saved.json")
    assert TrainConfig.from_file(tmp_path / "saved.json") == cfg


def test_no_weight_decay_on_norms_biases_embeddings_and_logit_scale():
    model = create_model(VISIONCLIP_TINY, seed=0)
    opt = build_optimizer(model, 1e-3, 0.2, (0.9, 0.98), 1e-6)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in opt.param_groups[0]["params"]}
    keep = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.2 and opt.param_groups[1]["weight_decay"] == 0.0
    assert "logit_scale" in keep and "bert.embeddings.word_embeddings.weight" in keep
    assert "visual.attnpool.positional_embedding" in keep and "visual.bn1.weight" in keep
    assert "bert.encoder.layer.0.attention.output.LayerNorm.weight" in keep
    assert "visual.conv1.weight" in decay and "text_projection" in decay
    assert not any(n.endswith("bias") for n in decay)
    assert len(decay) + len(keep) == len(names)
    assert all(no_decay(n, dict(model.named_parameters())[n]) for n in keep)


def test_warmup_then_cosine_schedule():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, 1.0, warmup_steps=4, total_steps=20)
    lrs = [sched(s) for s in range(20)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] < 0.01
    assert all(isinstance(g["lr"], float) for g in opt.param_groups)


def test_sampler_partitions_global_batches_and_resumes_at_offset():
    n, b, world = 50, 4, 2
    per_rank = [list(ResumableSampler(n, b, world, r, seed=3)) for r in range(world)]
    assert len(per_rank[0]) == len(per_rank[1]) == (n // (b * world)) * b
    assert not set(per_rank[0]) & set(per_rank[1])
    single = list(ResumableSampler(n, b * world, 1, 0, seed=3))
    # global micro-batch k == rank 0's k-th slice followed by rank 1's
    for k in range(n // (b * world)):
        assert single[k * 8:(k + 1) * 8] == per_rank[0][k * 4:(k + 1) * 4] + per_rank[1][k * 4:(k + 1) * 4]
    s = ResumableSampler(n, b, world, 1, seed=3)
    s.set_epoch(0, start_batch=2)
    assert list(s) == per_rank[1][2 * b:]
    s.set_epoch(1)
    assert list(s) != per_rank[1]


def test_seeded_dataset_makes_random_items_reproducible():
    class Rand(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(2)

    ds = SeededDataset(Rand(), seed=1)
    a = ds[2]
    torch.rand(5)  # global RNG moves on
    assert torch.equal(ds[2], a) and not torch.equal(ds[1], a)
    ds.epoch = 1
    assert not torch.equal(ds[2], a)


def test_recall_and_balanced_accuracy():
    q = torch.eye(4)
    g = torch.eye(4)[[0, 1, 3, 2]]
    rec = recall_at_k(q, g, (1, 4))
    assert rec[1] == 0.5 and rec[4] == 1.0
    groups = torch.tensor([0, 1, 2, 2])
    assert recall_at_k(q, g, (1,), groups, groups)[1] == 1.0
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == 0.5
    assert math.isnan(balanced_accuracy([], []))


def test_class_embeddings_average_normalised_prompts():
    table = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0, 1.0]), "c": torch.tensor([2.0, 0.0])}
    tok = lambda texts: torch.stack([table[t] for t in texts])  # noqa: E731 - identity "encoder"
    emb = class_embeddings(lambda x: x, tok, [["a", "b"], ["c"]])
    assert torch.allclose(emb[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))
    assert predict(torch.tensor([[1.0, 1.0], [2.0, 0.1]]), emb).tolist() == [0, 1]
