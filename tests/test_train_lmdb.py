"""Training from a real LMDB root (synthetic SynFundus -> vclip-build-lmdb), with augmentation and
DataLoader workers: validation reads the side table, and resume is still exact."""
from __future__ import annotations

import pytest

from cn_clip_ext.training import TrainConfig, train
from cn_clip_ext.training.recorder import read_metrics, series
from test_train_support import TEST_MODEL, model_config_dir, train_losses
from vclip_eval.evaluate import DATASETS_TABLE, PROMPTS_DIR


@pytest.fixture(scope="module")
def lmdb_root(tmp_path_factory):
    synth = pytest.importorskip("cn_clip_ext.synth.generator")
    build = pytest.importorskip("vclip_data_prep.build_lmdb")
    tmp = tmp_path_factory.mktemp("lmdb")
    synth.write_synfundus(tmp / "syn", n=40, seed=0, size=96, workers=1, progress=False)
    assert build.main([str(tmp / "syn"), "--out", str(tmp / "lmdb"), "--split", "6:2:0", "--size", "96",
                       "--workers", "1", "--no-progress"]) == 0
    return tmp / "lmdb"


def _config(tmp_path, out, root, **kw):
    base = dict(model=TEST_MODEL, model_config_dir=str(model_config_dir(tmp_path)), data=str(root),
                output_dir=str(tmp_path / out), batch_size=4, num_workers=2, max_steps=4, save_every=2,
                valid_every=2, valid_batch_size=8, log_every=1, progress=False, plot=False, tensorboard=False,
                zeroshot_prompts=str(PROMPTS_DIR / "plain.yaml"), zeroshot_table=str(DATASETS_TABLE))
    base.update(kw)
    return TrainConfig.tiny(**base)


def test_lmdb_training_validates_and_resumes_exactly(tmp_path, lmdb_root):
    full = train(_config(tmp_path, "full", lmdb_root))
    assert full.step == 4
    for key in ("loss", "i2t_r1", "t2i_r5", "zs_dr_grade_bacc", "zs_is_gc_bacc", "zs_is_amd_bacc"):
        assert key in full.valid
    train(_config(tmp_path, "split", lmdb_root, stop_after=3))
    train(_config(tmp_path, "split", lmdb_root, resume="auto"))
    assert train_losses(tmp_path / "split" / "metrics.csv") == train_losses(tmp_path / "full" / "metrics.csv")
    rows = read_metrics(tmp_path / "split" / "metrics.csv")
    assert [s for s, _ in series(rows, "valid", "loss")] == [2, 4]
