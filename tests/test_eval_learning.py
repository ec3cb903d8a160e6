"""End to end: a tiny model trained on generated SynFundus data beats the majority-class baseline's
balanced accuracy zero-shot on a generated FIVES-layout set (4 classes: AMD, DR, glaucoma, normal).

Budget: about a minute on 2 busy cores. The model is the 64-px test tower (RN-test64, width 8)
with BERT-tiny, trained for 120 steps of 32 pairs at lr 2e-3 in one thread with no DataLoader
workers: on a shared 2-core machine two intra-op threads made each step ~25x slower.
"""
from __future__ import annotations

import json

import pytest

from cn_clip_ext import eval_transform, get_tokenizer
from cn_clip_ext.synth.generator import write_fives, write_synfundus
from cn_clip_ext.evaluation import (encode_images, linear_probe, load_dataset_table, load_eval_set,
                                    load_prompt_set, probe_split, zero_shot_features)
from cn_clip_ext.model.checkpoints import load_checkpoint_model
from cn_clip_ext.training import TrainConfig, train
from vclip_eval.evaluate import DATASETS_TABLE, PROMPTS_DIR

MODEL = "RN-test64@BERT-tiny-chinese"
STEPS = 120


def test_trained_model_beats_the_majority_baseline_on_fives(tmp_path, one_thread):
    build = pytest.importorskip("vclip_data_prep.build_lmdb")
    configs = tmp_path / "model_configs"
    configs.mkdir()
    (configs / "RN-test64.json").write_text(json.dumps({
        "embed_dim": 64, "image_resolution": 64, "vision_layers": "[1,1,1,1]", "vision_width": 8,
        "vision_patch_size": None}))
    write_synfundus(tmp_path / "syn", 300, seed=0, size=96, workers=2, progress=False)
    write_fives(tmp_path / "eval", 48, seed=3, size=96, workers=2, progress=False)
    assert build.main([str(tmp_path / "syn"), "--out", str(tmp_path / "lmdb"), "--split", "1:0:0",
                       "--size", "96", "--workers", "1", "--no-progress"]) == 0
    result = train(TrainConfig.tiny(
        model=MODEL, model_config_dir=str(configs), data=str(tmp_path / "lmdb"), output_dir=str(tmp_path / "run"),
        batch_size=32, max_steps=STEPS, lr=2e-3, warmup_steps=10, num_workers=0, valid_every=0,
        save_every=STEPS, progress=False, plot=False, tensorboard=False, seed=0))
    assert result.step == STEPS and result.losses[-1][1] < result.losses[0][1]

    model, arch = load_checkpoint_model(result.last_checkpoint)
    fives = load_eval_set(load_dataset_table(DATASETS_TABLE)["fives"], tmp_path / "eval" / "fives")
    feats = encode_images(model, fives, eval_transform(model.vclip_config.image_size), 48, 0, "cpu", progress=False)
    zs = zero_shot_features(model, get_tokenizer(arch), fives, load_prompt_set(PROMPTS_DIR / "plain.yaml"), feats,
                            n_resamples=200)
    probe = linear_probe(feats.numpy(), fives, probe_split(fives), n_resamples=50)
    majority = zs.baselines["majority"]["balanced_accuracy"]
    assert majority == pytest.approx(0.25)
    print(f"FIVES zero-shot balanced accuracy {zs.metrics['balanced_accuracy']:.3f} "
          f"{zs.intervals['balanced_accuracy']}, linear probe {probe.metrics['balanced_accuracy']:.3f}")
    assert zs.metrics["balanced_accuracy"] > majority
