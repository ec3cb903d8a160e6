"""RET-CLIP mode: the tripartite model and loss, training on patients (one process, two under
torchrun, one-eyed patients), and RET-CLIP-format weights through vclip-eval."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cn_clip_ext.synth.toys import make_toy_patients
from cn_clip_ext.synth.generator import write_eval_sets
from cn_clip_ext.errors import UserError
from cn_clip_ext.model.factory import add_model_config, list_models
from cn_clip_ext.model.checkpoints import load_checkpoint_full
from cn_clip_ext.training import TrainConfig, make_toy_pairs, train
from cn_clip_ext.training.checkpoint import LATEST
from cn_clip_ext.training.loss import TripartiteLoss
from cn_clip_ext.training.recorder import read_metrics, series
from cn_clip_ext.model.tripartite import (LOGIT_SCALES, TripartiteCLIP, TripartiteOutput, create_tripartite_model,
                                    retclip_state_to_ours)
from test_train_support import ROOT, TEST_MODEL, TORCHRUN, cpu_env, model_config_dir

PART_LOSSES = ("loss_global", "loss_left", "loss_right")
RETCLIP_KEYS = ("text_projection.0.weight", "text_projection.2.bias", "text_projection_left.0.weight",
                "text_projection_right.2.weight", "logit_scale", "logit_scale_left", "logit_scale_right",
                "global_feature_mapping.weight", "left_feature_mapping.weight", "right_feature_mapping.weight")
VIT_TEST = "ViT-test64@BERT-tiny-chinese"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vit_config_dir(tmp: Path) -> Path:
    """``ViT-test64``: a 2-layer ViT with RET-CLIP's ViT key structure, 64 px, patch 16."""
    folder = model_config_dir(tmp)
    (folder / "ViT-test64.json").write_text(json.dumps({
        "embed_dim": 64, "image_resolution": 64, "vision_layers": 2, "vision_width": 64, "vision_patch_size": 16}))
    return folder


def _config(tmp: Path, out: str, **kw) -> TrainConfig:
    base = dict(model=TEST_MODEL, model_config_dir=str(model_config_dir(tmp)), output_dir=str(tmp / out),
                batch_size=4, num_workers=0, max_steps=4, lr=2e-3, warmup_steps=2, valid_every=0,
                valid_batch_size=8, save_every=4, log_every=1, progress=False, plot=False, tensorboard=False,
                seed=5)
    base.update(kw)
    return TrainConfig.tiny(**base)


# -- architectures -------------------------------------------------------------------------------

def test_every_factory_architecture_builds_with_the_tripartite_heads():
    names = list_models()
    for vision in ("RN50", "ViT-B-16", "ViT-L-14"):
        for text in ("RoBERTa-wwm-ext-base-chinese", "RoBERTa-wwm-ext-large-chinese", "RBT3-chinese"):
            assert f"{vision}@{text}" in names
    for name in names:  # shapes only (meta device): nothing is allocated
        model = create_tripartite_model(name, device="meta")  # builds the factory CLIP, then the heads
        cfg = model.vclip_config
        d, h = cfg.embed_dim, int(cfg.text["text_hidden_size"])
        towers = sum(p.numel() for p in (*model.visual.parameters(), *model.bert.parameters()))
        heads = 3 * (h * h + h + h * d + d) + 4 * d * d + 3  # text MLPs, image mappings, three scales
        assert sum(p.numel() for p in model.parameters()) == towers + heads, name
        assert model.logit_scale.device.type == "meta" and cfg.name == name
    vit = create_tripartite_model("ViT-B-16@RoBERTa-wwm-ext-base-chinese", device="meta").state_dict()
    assert set(RETCLIP_KEYS) <= set(vit) and "text_projection" not in vit
    assert tuple(vit["global_feature_mapping.weight"].shape) == (512, 1024)


# -- the model and the loss ----------------------------------------------------------------------

def _hand_clip(img: torch.Tensor, txt: torch.Tensor, scale: float) -> float:
    """CLIP's symmetric loss written out row by row."""
    n, total = len(img), 0.0
    for i in range(n):
        row = [scale * float(img[i] @ txt[j]) for j in range(n)]
        col = [scale * float(img[j] @ txt[i]) for j in range(n)]
        total += -row[i] + torch.logsumexp(torch.tensor(row), 0).item()
        total += -col[i] + torch.logsumexp(torch.tensor(col), 0).item()
    return total / (2 * n)


def test_tripartite_loss_equals_a_hand_computation_with_missing_eyes():
    g = torch.Generator().manual_seed(0)
    unit = lambda: F.normalize(torch.randn(5, 8, generator=g), dim=-1)  # noqa: E731
    has_left = torch.tensor([True, False, True, True, True])
    has_right = torch.tensor([True, True, True, False, False])
    out = TripartiteOutput(unit(), unit() * has_left[:, None], unit() * has_right[:, None], unit(), unit(), unit(),
                           torch.tensor(10.0), torch.tensor(4.0), torch.tensor(20.0), has_left, has_right)
    total, parts = TripartiteLoss()(out)
    expected = {"global": _hand_clip(out.image_global, out.text_global, 10.0),
                "left": _hand_clip(out.image_left[has_left], out.text_left[has_left], 4.0),
                "right": _hand_clip(out.image_right[has_right], out.text_right[has_right], 20.0)}
    for head, value in expected.items():
        assert float(parts[head]) == pytest.approx(value, rel=1e-4, abs=1e-6), head
    assert float(total) == pytest.approx(sum(expected.values()), rel=1e-4, abs=1e-6)
    none = out._replace(has_right=torch.zeros(5, dtype=torch.bool))  # no right eye in the batch at all
    assert float(TripartiteLoss()(none)[1]["right"]) == 0.0


# the global batch of the 2-rank check: rank 1 holds no right eye at all
HAS_LEFT = torch.tensor([True, False, True, True, True, False])
HAS_RIGHT = torch.tensor([True, True, False, False, False, False])


def _heads_loss(rows: slice, params: list[torch.Tensor]) -> torch.Tensor:
    """TripartiteLoss of linear 'towers' on rows of a fixed global batch (missing eyes zeroed)."""
    g = torch.Generator().manual_seed(4)
    x_img, x_txt = torch.randn(6, 5, generator=g)[rows], torch.randn(6, 4, generator=g)[rows]
    w_img, w_txt, log_scale = params
    has_l, has_r = HAS_LEFT[rows], HAS_RIGHT[rows]
    img = [F.normalize(x_img @ w_img[k], dim=-1) for k in range(3)]
    txt = [F.normalize(x_txt @ w_txt[k], dim=-1) for k in range(3)]
    scales = log_scale.exp()
    out = TripartiteOutput(img[0], img[1] * has_l[:, None], img[2] * has_r[:, None], *txt, *scales, has_l, has_r)
    return TripartiteLoss()(out)[0]


def _params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.randn(3, 5, 8, generator=g), torch.randn(3, 4, 8, generator=g), torch.tensor([2.0, 1.5, 2.5])]


def _gloo_rank(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        params = [p.requires_grad_() for p in _params()]
        loss = _heads_loss(slice(3 * rank, 3 * rank + 3), params)
        loss.backward()
        grads = [p.grad.clone() for p in params]
        for grad in grads:  # DDP's averaging
            dist.all_reduce(grad)
            grad /= 2
        torch.save({"loss": loss.detach(), "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_masked_losses_and_gradients_equal_one_process(tmp_path):
    mp.start_processes(_gloo_rank, args=(tempfile.mktemp(dir=tmp_path), str(tmp_path)), nprocs=2,
                       start_method="spawn")
    params = [p.requires_grad_() for p in _params()]
    loss = _heads_loss(slice(0, 6), params)
    loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(got["loss"], loss.detach(), atol=1e-6)
        assert all(torch.allclose(g, p.grad, atol=1e-6) for g, p in zip(got["grads"], params))


def test_missing_eyes_never_reach_the_encoder(tmp_path):
    add_model_config(model_config_dir(tmp_path))
    model = create_tripartite_model(TEST_MODEL, seed=0).eval()
    seen = []
    model.visual.register_forward_hook(lambda mod, args, res: seen.append(args[0].shape[0]))
    left, right = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64)
    has_left, has_right = torch.tensor([True, False, True]), torch.tensor([True, True, False])
    left[1], right[2] = float("nan"), float("nan")  # placeholders: would poison every feature if encoded
    tokens = make_toy_pairs(4, 64).tokens[:3]
    with torch.no_grad():
        out = model(left, right, has_left, has_right, tokens)
        alone = F.normalize(model.encode_image(right[1:2]), dim=-1)  # one eye as a one-eyed patient
    assert seen[0] == 4 and all(torch.isfinite(t).all() for t in out)
    assert torch.allclose(out.image_global[1], alone[0], atol=1e-6)
    assert float(out.image_left[1].abs().sum()) == 0 and float(out.image_right[2].abs().sum()) == 0
    with pytest.raises(UserError, match="neither"):
        model(left, right, torch.tensor([True, False, False]), has_right & False, tokens)


# -- training ------------------------------------------------------------------------------------

def test_patients_train_through_the_same_trainer(tmp_path):
    data = make_toy_patients(32, 64, seed=3, missing_rate=0.5)  # about half the patients have one eye
    assert 8 <= int((~(data.has_left & data.has_right)).sum()) <= 24
    result = train(_config(tmp_path, "patients"), data, make_toy_patients(8, 64, seed=9))
    assert result.step == 4
    rows = read_metrics(tmp_path / "patients" / "metrics.csv")
    for name in PART_LOSSES + ("loss",) + LOGIT_SCALES:
        assert len(series(rows, "train", name)) == 4, name
    total = dict(series(rows, "train", "loss"))
    parts = [dict(series(rows, "train", name)) for name in PART_LOSSES]
    assert all(total[s] == pytest.approx(sum(p[s] for p in parts), rel=1e-5) for s in total)
    valid = {r["metric"] for r in rows if r["split"] == "valid"}
    assert {"loss", "loss_global", "loss_left", "loss_right", "i2t_r1", "left_t2i_r5", "right_i2t_r1"} <= valid
    loaded = load_checkpoint_full(tmp_path / "patients" / "checkpoints" / LATEST)
    assert isinstance(loaded.model, TripartiteCLIP) and loaded.format == "visionclip"


def test_two_process_gloo_run_on_toy_patients_under_torchrun(tmp_path):
    out, steps = tmp_path / "ddp", 40
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
           str(_free_port()), "-m", "vclip_train.train", "--preset", "tiny", "--data", "toy-patients:64",
           "--model", TEST_MODEL, "--model-config-dir", str(model_config_dir(tmp_path)),
           "--output-dir", str(out), "--batch-size", "4", "--num-workers", "0", "--max-steps", str(steps),
           "--lr", "2e-3", "--warmup-steps", "3", "--valid-every", "0", "--valid-batch-size", "16",
           "--save-every", str(steps), "--log-every", "1", "--no-progress", "--no-plot", "--no-tensorboard",
           "--seed", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cpu_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tripartite objective" in proc.stderr and "2 process(es)" in proc.stderr
    rows = read_metrics(out / "metrics.csv")
    for name in PART_LOSSES:
        values = [v for _, v in series(rows, "train", name)]
        assert len(values) == steps
        first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
        assert last < first - 0.3, (name, values)
    valid = {r["metric"] for r in rows if r["split"] == "valid"}
    assert {"left_i2t_r1", "right_t2i_r1", "zs_dr_grade_bacc"} <= valid


# -- RET-CLIP weights through vclip-eval --------------------------------------------------------

def _fuse_flash_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The layout RET-CLIP writes with flash attention: fused QKV in BERT and the ViT."""
    out = dict(state)
    for key in [k for k in state if k.endswith("attention.self.query.weight")]:
        stem = key[:-len("query.weight")]
        for kind in ("weight", "bias"):
            out[f"{stem}Wqkv.{kind}"] = torch.cat([out.pop(f"{stem}{p}.{kind}") for p in ("query", "key", "value")])
            dense = stem.replace("self.", "output.dense.")
            out[f"{stem}out_proj.{kind}"] = out.pop(f"{dense}{kind}")
    for key in [k for k in state if k.endswith("attn.in_proj_weight")]:
        out[key.replace("in_proj_weight", "Wqkv.weight")] = out.pop(key)
        out[key.replace("in_proj_weight", "Wqkv.bias")] = out.pop(key.replace("weight", "bias"))
    return out


def test_retclip_weights_load_by_name_and_evaluate(tmp_path, caplog, capsys):
    from vclip_eval.evaluate import main

    add_model_config(_vit_config_dir(tmp_path))
    source = create_tripartite_model(VIT_TEST, seed=11)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # as saved from DDP
    state["module.bert.pooler.dense.weight"] = torch.zeros(128, 128)
    state["module.MAE_decoder.proj.weight"] = torch.zeros(4, 4)  # a head our model does not have
    torch.save(state, tmp_path / "retclip.pt")  # a bare state dict, like the released weights
    unfused = retclip_state_to_ours(_fuse_flash_layout(source.state_dict()))
    assert unfused.keys() == source.state_dict().keys()
    assert all(torch.equal(unfused[k], v) for k, v in source.state_dict().items())

    with caplog.at_level(logging.INFO):
        loaded = load_checkpoint_full(tmp_path / "retclip.pt", VIT_TEST)
    assert loaded.format == "retclip" and isinstance(loaded.model, TripartiteCLIP)
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in source.state_dict().items())
    assert "1 keys unexpected (ignored), e.g. MAE_decoder.proj.weight" in caplog.text

    torch.save({"global_feature_mapping.weight": torch.zeros(3, 3), "foo": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="no weights match"):
        load_checkpoint_full(tmp_path / "bad.pt", VIT_TEST)

    eval_root = tmp_path / "sets"
    write_eval_sets(eval_root, 16, seed=5, size=96, names=("fives",), progress=False)
    report = tmp_path / "report"
    rc = main(["--checkpoint", f"{tmp_path / 'retclip.pt'}=RET-CLIP", "--model", VIT_TEST,
               "--data", f"fives={eval_root / 'fives'}", "--out", str(report), "--bootstrap", "20",
               "--workers", "0", "--batch-size", "8", "--quiet", "--probe", "linear"])
    assert rc == 0
    table = (report / "table.md").read_text(encoding="utf-8")
    assert "| RET-CLIP |" in table and "| RET-CLIP · linear probe |" in table
    assert set(json.loads((report / "report.json").read_text(encoding="utf-8"))["results"]) == {"RET-CLIP"}
    capsys.readouterr()
