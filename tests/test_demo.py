"""The main job end to end at a reduced size: generated data -> LMDB -> training -> evaluation -> bundle."""
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("synth", "lmdb", "train", "eval", "export")
IN_DOMAIN = ("synfundus_dr", "synfundus_glaucoma", "synfundus_amd", "synfundus_condition")


def _run_demo(out: Path) -> subprocess.CompletedProcess:
    cmd = ["bash", str(ROOT / "run_scripts" / "demo.sh"), "--out", str(out), "--images", "400",
           "--eval-images", "40", "--steps", "60", "--batch", "16", "--bootstrap", "100", "--workers", "2"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = _run_demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_demo_learns(demo):
    out, _ = demo
    results = json.loads((out / "eval" / "report.json").read_text(encoding="utf-8"))["results"]
    trained = next(v for k, v in results.items() if "trained" in k and "untrained" not in k)
    untrained = next(v for k, v in results.items() if "untrained" in k)
    assert set(trained) == {"messidor2", "fives", "refuge", *IN_DOMAIN}

    def bacc(per, name):
        return per[name]["metrics"]["balanced_accuracy"]

    # a randomly initialised model predicts one class: no better than always answering the majority class
    for name in trained:
        assert bacc(untrained, name) <= untrained[name]["baselines"]["majority"]["balanced_accuracy"] + 1e-9
    # after 60 steps the trained model is clearly better in-domain and on average
    assert bacc(trained, "synfundus_amd") > bacc(untrained, "synfundus_amd") + 0.2
    mean = {m: sum(bacc(per, n) for n in IN_DOMAIN) / len(IN_DOMAIN) for m, per in (("t", trained), ("u", untrained))}
    assert mean["t"] > mean["u"]
    assert bacc(trained, "fives") > trained["fives"]["baselines"]["majority"]["balanced_accuracy"]


def test_demo_writes_everything_under_one_folder(demo):
    out, proc = demo
    assert (out / "data" / "SynFundus-1M_annotation.csv").is_file()
    for split in ("train", "valid", "test"):
        assert (out / "lmdb" / split / "imgs" / "data.mdb").is_file()
        assert (out / "lmdb" / split / "labels.csv").is_file()
    assert (out / "train" / "checkpoints" / "latest.pt").exists()
    assert (out / "train" / "metrics.csv").is_file() and (out / "train" / "curves.png").is_file()
    pngs = list((out / "eval").glob("confusion__*.png"))
    assert len(pngs) == 2 * 7
    table = (out / "eval" / "table.md").read_text(encoding="utf-8")
    assert table.strip() in proc.stdout  # the comparison is printed
    for name in ("model.safetensors", "config.json", "vocab.txt", "README.md", "image_encoder.onnx",
                 "text_encoder.onnx"):
        assert (out / "bundle" / name).is_file(), name
    assert "balanced" in (out / "bundle" / "README.md").read_text(encoding="utf-8").lower()


def test_demo_rerun_reuses_finished_stages(demo):
    out, _ = demo
    proc = _run_demo(out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stage in STAGES:
        assert f"[demo] {stage}: up to date, reused" in proc.stderr


def test_demo_rejects_unknown_options(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "run_scripts" / "demo.sh"), "--frobnicate"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "demo.sh: error: unknown option --frobnicate (see --help)"


def test_demo_all_datasets_adds_the_published_layouts_and_mined_prompts(demo):
    out, _ = demo
    proc = subprocess.run(["bash", str(ROOT / "run_scripts" / "demo.sh"), "--out", str(out), "--images", "400",
                           "--eval-images", "40", "--steps", "60", "--batch", "16", "--bootstrap", "100",
                           "--workers", "2", "--all-datasets"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in STAGES:  # the main job is reused, not redone
        assert f"[demo] {stage}: up to date, reused" in proc.stderr
    single = {"aptos2019", "idrid_dr", "idrid_dme", "eyepacs", "deepdrid", "papila", "acrima", "airogs", "jsiec",
              "messidor2", "fives", "refuge", *IN_DOMAIN}
    for folder in ("eval_all", "eval_mined"):
        report = json.loads((out / folder / "report.json").read_text(encoding="utf-8"))
        for per in report["results"].values():
            assert set(per) == single
        for per in report["multilabel"].values():
            assert set(per) == {"rfmid", "odir5k"}
        assert (out / folder / "table.md").read_text(encoding="utf-8").strip() in proc.stdout
    assert len(json.loads((out / "eval_all" / "report.json").read_text(encoding="utf-8"))["results"]) == 2
    mined = json.loads((out / "eval_mined" / "report.json").read_text(encoding="utf-8"))
    assert "mined" in mined["meta"]["prompts"]
