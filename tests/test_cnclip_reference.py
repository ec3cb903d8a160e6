"""Stock cn_clip as the reference trainer: its launch script, and checkpoints crossing both ways."""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

import cn_clip_ext as vc
from cn_clip_ext.synth.generator import write_eval_sets
from cn_clip_ext.synth.toys import make_toy_pairs
from cn_clip_ext.training import TrainConfig, train
from cn_clip_ext.training.checkpoint import LATEST
from test_train_support import ROOT

SCRIPT = ROOT / "run_scripts" / "train_cnclip_reference.sh"


def _cn_clip_main() -> Path:
    spec = importlib.util.find_spec("cn_clip")
    return Path(spec.submodule_search_locations[0]) / "training" / "main.py"


def _lmdb_like(root: Path) -> Path:
    for split in ("train", "valid"):
        for part in ("imgs", "pairs"):
            (root / split / part).mkdir(parents=True)
    return root


def _dry_run(tmp_path: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "VCLIP_VENV": str(Path(os.sys.executable).parent.parent), **env}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *extra], capture_output=True, text=True, env=full,
                          cwd=tmp_path, timeout=120)


def test_dry_run_prints_stock_cn_clip_main_with_the_rn50_recipe(tmp_path):
    data = _lmdb_like(tmp_path / "lmdb")
    proc = _dry_run(tmp_path, "--max-steps", "100", DATA=str(data), OUTPUT_DIR="runs/ref", GPUS_PER_NODE="4")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    main_py = _cn_clip_main()
    assert main_py.is_file() and argv.index(str(main_py)) > 2  # the installed package's own file
    assert argv[argv.index("--nproc_per_node") + 1] == "4"

    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert value("--vision-model") == "RN50" and value("--text-model") == "RoBERTa-wwm-ext-base-chinese"
    assert value("--train-data") == str(data / "train") and value("--val-data") == str(data / "valid")
    assert value("--name") == str(tmp_path / "runs" / "ref")  # absolute: cn_clip's run folder
    # cn_clip's RN50 recipe (its get_default_params) and defaults
    from cn_clip.training.params import get_default_params

    recipe = get_default_params("RN50")
    for flag, key in (("--lr", "lr"), ("--beta1", "beta1"), ("--beta2", "beta2"), ("--eps", "eps")):
        assert float(value(flag)) == recipe[key]
    assert float(value("--wd")) == 0.2 and value("--warmup") == "500" and value("--context-length") == "52"
    assert argv[-2:] == ["--max-steps", "100"]  # extra arguments reach cn_clip
    for absent in ("--logs", "--use-augment", "--clip-weight-path", "--bert-weight-path", "--resume"):
        assert absent not in argv  # from scratch, no AutoAugment, no ambiguous --logs
    # every flag is one cn_clip's parser knows (a typo would only show on a GPU node)
    parser_src = (main_py.parent / "params.py").read_text(encoding="utf-8")
    for flag in (a for a in argv[argv.index(str(main_py)) + 1:] if a.startswith("--")):
        assert f'"{flag}"' in parser_src, flag


def test_dry_run_refuses_what_cn_clip_cannot_read(tmp_path):
    proc = _dry_run(tmp_path, DATA=str(tmp_path / "missing"), OUTPUT_DIR=str(tmp_path / "o"))
    assert proc.returncode == 2 and "no train/imgs" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "sharded" / "shard-000-of-002" / "train").mkdir(parents=True)
    proc = _dry_run(tmp_path, DATA=str(tmp_path / "sharded"), OUTPUT_DIR=str(tmp_path / "o"))
    assert proc.returncode == 2 and "sharded build" in proc.stderr


def test_vclip_train_checkpoint_of_cn_clip_towers_loads_in_cn_clip(tmp_path):
    # RN50@RBT3-chinese is cn_clip's own pairing of its own tower configs (its released RN50 model)
    cfg = TrainConfig.from_dict(dict(model="RN50@RBT3-chinese", output_dir=str(tmp_path / "run"), batch_size=2,
                                     max_steps=1, num_workers=0, valid_every=0, save_every=1, progress=False,
                                     plot=False, tensorboard=False, warmup_steps=0, seed=1))
    result = train(cfg, make_toy_pairs(2, 224, seed=0), None)
    path = result.output_dir / "checkpoints" / LATEST
    ours = torch.load(path, weights_only=True)["state_dict"]

    from cn_clip.clip.utils import load_from_name

    model, preprocess = load_from_name(str(path), device="cpu", vision_model_name="RN50",
                                       text_model_name="RBT3-chinese", input_resolution=224)
    theirs = model.state_dict()
    assert set(theirs) == set(ours)
    # cn_clip builds its model in fp16 (convert_weights) and casts it back to fp32 on the CPU: every
    # tensor arrives exactly, or exactly as its fp16 rounding
    for name, tensor in ours.items():
        got = theirs[name]
        assert torch.equal(got, tensor) or torch.equal(got, tensor.half().to(got.dtype)), name
    assert preprocess is not None


@pytest.fixture(scope="module")
def cn_clip_checkpoint(tmp_path_factory):
    """A checkpoint in the layout cn_clip's main.py saves: DDP ``module.`` names, epoch/step/name,
    its AdamW state; the tiny towers stand in for RN50/RoBERTa to keep it quick."""
    folder = tmp_path_factory.mktemp("cn_clip_run")
    model = vc.create_model(vc.VISIONCLIP_TINY, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.2)
    images, tokens = make_toy_pairs(4, 128, seed=2).images, make_toy_pairs(4, 128, seed=2).tokens
    img, txt, scale = model(images, tokens)
    (scale * img @ txt.t()).diagonal().sum().neg().backward()
    optimizer.step()
    path = folder / "checkpoints" / "epoch_latest.pt"
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 1, "step": 1, "name": str(folder),
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict()}, path)
    return path, model


def test_cn_clip_checkpoint_is_evaluable(cn_clip_checkpoint, tmp_path):
    from vclip_eval.evaluate import main as eval_main

    path, _ = cn_clip_checkpoint
    write_eval_sets(tmp_path / "eval", 12, seed=5, size=96, names=("fives",), progress=False)
    out = tmp_path / "report"
    rc = eval_main(["--checkpoint", f"{path}=cn_clip", "--model", vc.VISIONCLIP_TINY, "--data",
                    f"fives={tmp_path / 'eval' / 'fives'}", "--out", str(out), "--bootstrap", "20", "--workers", "0",
                    "--quiet"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    fives = report["results"]["cn_clip"]["fives"]
    assert fives["n_images"] == 12 and 0 <= fives["metrics"]["balanced_accuracy"] <= 1


def test_cn_clip_checkpoint_is_exportable(cn_clip_checkpoint, tmp_path):
    from vclip_export.export import main as export_main

    path, model = cn_clip_checkpoint
    out = tmp_path / "bundle"
    assert export_main([str(path), str(out), "--model", vc.VISIONCLIP_TINY, "--no-prompts"]) == 0
    loaded, _, _ = vc.load_pretrained(out)
    tokens = make_toy_pairs(2, 128, seed=2).tokens
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.eval().encode_text(tokens), dim=-1)
        got = loaded.encode_text(tokens)
    assert torch.allclose(got, want, atol=1e-5)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert vc.VISIONCLIP_TINY in json.dumps(config) and config["source"]["step"] == 1
