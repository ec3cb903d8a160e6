"""Host memory stays flat across epochs when training from an LMDB with DataLoader workers."""
from __future__ import annotations

import pytest

from cn_clip_ext.training import TrainConfig, train
from cn_clip_ext.training.recorder import anon_rss_mb, read_metrics, series
from test_train_support import TEST_MODEL, model_config_dir


def test_anon_rss_counts_this_process():
    assert anon_rss_mb(include_children=False) > 10  # torch alone is far more than 10 MiB


def test_memory_is_flat_across_epochs(tmp_path):
    synth = pytest.importorskip("cn_clip_ext.synth.generator")
    build = pytest.importorskip("vclip_data_prep.build_lmdb")
    synth.write_synfundus(tmp_path / "syn", n=48, seed=1, size=96, workers=1, progress=False)
    assert build.main([str(tmp_path / "syn"), "--out", str(tmp_path / "lmdb"), "--split", "1:0:0", "--size", "96",
                       "--workers", "1", "--no-progress"]) == 0
    cfg = TrainConfig.tiny(model=TEST_MODEL, model_config_dir=str(model_config_dir(tmp_path)),
                           data=str(tmp_path / "lmdb"), output_dir=str(tmp_path / "run"), batch_size=6,
                           num_workers=2, epochs=5, valid_every=0, save_every=1000, log_every=1,
                           progress=False, plot=False, tensorboard=False)
    result = train(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    memory = dict(series(rows, "train", "anon_rss_mb"))
    per_epoch = result.step // 5
    # measured: anonymous memory rises once when the second epoch starts its workers, then stays flat
    first, last = memory[2 * per_epoch], memory[result.step]
    assert first > 0
    assert last <= 1.10 * first, f"anonymous memory grew from {first:.0f} to {last:.0f} MiB over 3 epochs"
    main_rss = dict(series(rows, "train", "host_rss_mb"))
    assert main_rss[result.step] <= 1.10 * main_rss[per_epoch]
