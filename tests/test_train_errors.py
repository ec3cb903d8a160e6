"""User-facing failures: corrupted checkpoints, wrong warm-start paths, NaN losses, bad configs."""
from __future__ import annotations

import subprocess

import pytest
import torch

from cn_clip_ext import create_model
from cn_clip_ext.errors import UserError
from cn_clip_ext.training import TrainConfig, TrainingDiverged, hf_bert_to_cn_clip, make_toy_pairs, train, warm_start
from cn_clip_ext.training.checkpoint import LATEST, atomic_save, load_checkpoint
from test_train_support import PYTHON, ROOT, TEST_MODEL, cpu_env, model_config_dir


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PYTHON), "-m", "vclip_train.train", *args], capture_output=True, text=True,
                          env=cpu_env(), cwd=ROOT, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("vclip-train: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in errors[0]


def test_corrupted_checkpoint_is_one_line_error(tmp_path):
    path = tmp_path / "c.pt"
    atomic_save({"step": 1, "state_dict": {"w": torch.zeros(3)}}, path)
    assert load_checkpoint(path)["step"] == 1
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.raises(UserError, match="corrupted or unreadable checkpoint"):
        load_checkpoint(path)
    # through the program: --resume auto finds the corrupted latest.pt
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / LATEST).write_bytes(b"not a checkpoint")
    proc = _cli("--preset", "tiny", "--data", "toy:16", "--output-dir", str(out), "--resume", "auto",
                "--model", TEST_MODEL, "--model-config-dir", str(model_config_dir(tmp_path)), "--no-progress")
    _one_line_error(proc, "latest.pt", "corrupted")


def test_wrong_warm_start_path_is_one_line_error(tmp_path):
    proc = _cli("--preset", "tiny", "--data", "toy:16", "--output-dir", str(tmp_path / "run"),
                "--warm-start", str(tmp_path / "missing.pt"), "--model", TEST_MODEL,
                "--model-config-dir", str(model_config_dir(tmp_path)), "--no-progress")
    _one_line_error(proc, "missing.pt", "not found")


def test_warm_start_with_nothing_matching_is_an_error(tmp_path):
    model_config_dir(tmp_path)
    from cn_clip_ext import add_model_config

    add_model_config(tmp_path / "model_configs")
    model = create_model(TEST_MODEL, seed=0)
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="no warm-start weights match"):
        warm_start(model, tmp_path / "other.pt")


def test_warm_start_from_hf_roberta_folder_loads_the_text_tower(tmp_path):
    from cn_clip_ext import add_model_config

    add_model_config(model_config_dir(tmp_path))
    donor = create_model(TEST_MODEL, seed=1)
    # a Hugging Face BertForMaskedLM-style dict: bert.* keys, old gamma/beta names, heads
    hf = {}
    for k, v in donor.state_dict().items():
        if k.startswith("bert."):
            hf[k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")] = v
    hf["cls.predictions.bias"] = torch.zeros(3)
    hf["bert.pooler.dense.weight"] = torch.zeros(2, 2)
    folder = tmp_path / "chinese-roberta-wwm-ext"
    folder.mkdir()
    torch.save(hf, folder / "pytorch_model.bin")
    assert all(k.startswith("bert.") for k in hf_bert_to_cn_clip(hf))

    model = create_model(TEST_MODEL, seed=2)
    report = warm_start(model, folder)
    assert report["loaded"] and all(k.startswith("bert.") for k in report["loaded"])
    assert any(k.startswith("visual.") for k in report["missing"])  # image tower stays random, logged
    for k, v in model.state_dict().items():
        if k.startswith("bert."):
            assert torch.equal(v, donor.state_dict()[k]), k


class _PoisonAfter(torch.utils.data.Dataset):
    """Returns NaN images once ``after`` items have been read (single-process loading)."""

    def __init__(self, base, after: int):
        self.base, self.after, self.reads = base, after, 0
        self.labels = base.labels

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.reads += 1
        image, tokens = self.base[i]
        return (image * float("nan") if self.reads > self.after else image), tokens


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    cfg = TrainConfig.tiny(model=TEST_MODEL, model_config_dir=str(model_config_dir(tmp_path)),
                           output_dir=str(tmp_path / "nan"), batch_size=4, num_workers=0, max_steps=6,
                           save_every=2, valid_every=0, progress=False, plot=False, tensorboard=False)
    data = _PoisonAfter(make_toy_pairs(32, 64), after=4 * 3)  # steps 1-3 fine, step 4 reads NaN
    with pytest.raises(TrainingDiverged) as info:
        train(cfg, data, make_toy_pairs(8, 64))
    message = str(info.value)
    assert "nan" in message and "step 4" in message and "step_00000002.pt" in message
    assert "\n" not in message
    state = load_checkpoint(tmp_path / "nan" / "checkpoints" / LATEST)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_bad_config_values_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(UserError, match="unknown training config keys"):
        TrainConfig.from_dict({"batchsize": 3})
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match=r"c\.json: not valid JSON"):
        TrainConfig.from_file(bad)
    proc = _cli("--preset", "tiny", "--output-dir", str(tmp_path / "x"))
    _one_line_error(proc, "no training data")
