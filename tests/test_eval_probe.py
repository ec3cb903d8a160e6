"""Linear probe and k-shot, the MESSIDOR and REFUGE label-table readers, the vectorised bootstrap,
and the prompt set shared by vclip-eval and in-training validation."""
import csv
import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from cn_clip_ext.synth.generator import write_eval_sets
from cn_clip_ext.errors import UserError
from cn_clip_ext.evaluation import (k_shot, linear_probe, load_dataset_table, load_eval_set, load_prompt_set,
                                    probe_split, scores)
from cn_clip_ext.evaluation.datasets import EvalSet
from cn_clip_ext.evaluation.probe import C_GRID, choose_c
from cn_clip_ext.evaluation.sheets import read_sheet
from cn_clip_ext.training import validation as train_eval
from cn_clip_ext.synth.toys import make_toy_pairs
from cn_clip_ext.training.distributed import DistEnv
from vclip_eval.evaluate import DATASETS_TABLE, PROMPTS_DIR, main

openpyxl = pytest.importorskip("openpyxl")
xlwt = pytest.importorskip("xlwt")
N_EVAL = 24


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_sets")
    write_eval_sets(root, N_EVAL, seed=7, size=96, names=("messidor2", "fives", "refuge"), progress=False)
    return root


@pytest.fixture(scope="module")
def table():
    return load_dataset_table(DATASETS_TABLE)


def _write_xlsx(path, header, rows):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)


def _clustered(n_per_class, k, dim=16, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    y = np.repeat(np.arange(k), n_per_class)
    x = centres[y] + spread * rng.normal(size=(y.size, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = EvalSet("toy", tuple(f"c{i}" for i in range(k)), tuple(f"img{i}" for i in range(y.size)), tuple(y.tolist()))
    return x, s


# -- splits and probes ------------------------------------------------------------------------------

def test_fives_probe_uses_its_published_folders(eval_root, table):
    s = load_eval_set(table["fives"], eval_root / "fives")
    assert s.splits is not None and set(s.splits) == {"train", "test"}
    split = probe_split(s, seed=3)
    assert split.source == "published"
    assert all("/train/" in s.images[i] for i in split.train) and all("/test/" in s.images[i] for i in split.test)
    assert len(split.train) + len(split.test) == len(s)


def test_stratified_split_is_seeded_and_keeps_every_class_on_both_sides():
    _, s = _clustered(9, 3)
    a, b, c = probe_split(s, 0.5, seed=1), probe_split(s, 0.5, seed=1), probe_split(s, 0.5, seed=2)
    assert a == b and a.train != c.train and a.source == "stratified 0.5 seed 1"
    assert sorted(a.train + a.test) == list(range(len(s))) and not set(a.train) & set(a.test)
    for part in (a.train, a.test):
        assert {s.labels[i] for i in part} == {0, 1, 2}
    assert len(probe_split(s, 0.25, seed=1).train) == 3 * 2  # round(9 * 0.25) per class
    with pytest.raises(ValueError):
        probe_split(s, 1.0)


def test_linear_probe_and_k_shot_on_separable_features():
    x, s = _clustered(20, 4, seed=2)
    split = probe_split(s, 0.5, seed=0)
    r = linear_probe(x, s, split, n_resamples=50)
    assert r.metrics["balanced_accuracy"] == 1.0 and r.labels.size == len(split.test)
    assert r.extra["C"] in C_GRID and r.extra["n_train"] == len(split.train)
    assert r.images == tuple(s.images[i] for i in split.test)
    assert r.baselines["majority"]["balanced_accuracy"] == pytest.approx(0.25)
    ks = k_shot(x, s, split, shots=2, seeds=(0, 1, 2))
    assert ks.n_train == (8, 8, 8) and len(ks.runs) == 3 and ks.n_test == len(split.test)
    assert ks.mean["balanced_accuracy"] > 0.9
    values = [run["balanced_accuracy"] for run in ks.runs]
    assert ks.sd["balanced_accuracy"] == pytest.approx(np.std(values, ddof=1))
    big = k_shot(x, s, split, shots=100, seeds=(0,))  # more shots than a class has: all of them
    assert big.n_train == (len(split.train),)
    json.dumps(ks.to_dict())


def test_probe_copes_with_one_class_and_noise():
    x, s = _clustered(6, 2, seed=4, spread=5.0)
    assert choose_c(x[:2], np.array([0, 1]), 2) == 1.0  # too few images per class to cross-validate
    split = probe_split(s, 0.5, seed=0)
    one_class = type(split)(tuple(i for i in split.train if s.labels[i] == 0), split.test, "test")
    r = linear_probe(x, s, one_class, n_resamples=20)
    assert set(r.predictions.tolist()) == {0}


# -- the vectorised bootstrap ---------------------------------------------------------------------

def test_vectorised_bootstrap_equals_scoring_each_resample():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 150)
    p = np.where(rng.random(150) < 0.5, y, rng.integers(0, 4, 150))
    probs = np.round(rng.dirichlet(np.ones(4), 150), 1)  # ties
    idx = scores.resample_indices(150, 60, seed=5)
    got = scores.resampled_scores(y, p, idx, probs, graded=True)
    for r in range(60):
        for name, value in scores.score(y[idx[r]], p[idx[r]], probs[idx[r]], graded=True).items():
            assert got[name][r] == pytest.approx(value, nan_ok=True), name
    ci = scores.bootstrap(y, p, probs, graded=True, n_resamples=60, seed=5)
    assert ci["top1"] == pytest.approx(tuple(np.percentile(got["top1"], [2.5, 97.5])))


# -- MESSIDOR (original) ----------------------------------------------------------------------------

MESSIDOR_HEADER = ["Image name", "Ophthalmologic department", "Retinopathy grade", "Risk of macular edema "]


def _messidor_layout(src, root):
    """Base11 (.xlsx) and Base12 (.csv) folders of TIFFs, grades 0-3 from the ICDR grades."""
    with open(src / "messidor_data.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["adjudicated_gradable"] == "1"][:12]
    expected = {}
    for i, r in enumerate(rows):
        base = "Base11" if i < 6 else "Base12"
        name = f"2005101{i % 10}_{38000 + i}_0100_PP.tif"
        (root / base).mkdir(parents=True, exist_ok=True)
        with Image.open(src / "IMAGES" / r["image_id"]) as img:
            img.convert("RGB").save(root / base / name)
        expected[name] = min(int(r["adjudicated_dr_grade"]), 3)
    lines = {b: [[n, "Service Ophtalmologie Lariboisière", g, 0] for n, g in expected.items()
                 if (root / b / n).exists()] for b in ("Base11", "Base12")}
    _write_xlsx(root / "Base11" / "Annotation_Base11.xlsx", MESSIDOR_HEADER, lines["Base11"])
    with open(root / "Base12" / "Annotation_Base12.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([MESSIDOR_HEADER, *lines["Base12"]])
    return expected


def test_messidor_reads_per_base_tables(eval_root, table, tmp_path, caplog):
    root = tmp_path / "messidor"
    expected = _messidor_layout(eval_root / "messidor2", root)
    s = load_eval_set(table["messidor"], root)
    assert s.graded and s.classes == ("messidor_0", "messidor_1", "messidor_2", "messidor_3")
    got = {p.rsplit("/", 1)[1]: s.classes[y] for p, y in zip(s.images, s.labels)}
    assert got == {n: f"messidor_{g}" for n, g in expected.items()}
    assert s.load(0).mode == "RGB"
    # an image listed twice (MESSIDOR's errata) is kept once, with a warning
    first = next(iter(expected))
    with open(root / "Base12" / "Annotation_Base12.csv", "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow([first, "x", expected[first], 0])
    with caplog.at_level(logging.WARNING):
        assert len(load_eval_set(table["messidor"], root)) == len(expected)
    assert "more than one row" in caplog.text
    # bad input is one line naming the file and row
    (root / "Base11" / first).unlink()
    with pytest.raises(UserError, match=r"Annotation_Base11\.xlsx, row 2: image"):
        load_eval_set(table["messidor"], root)
    _write_xlsx(root / "Base11" / "Annotation_Base11.xlsx", ["Image name", "grade"], [["a.tif", 1]])
    with pytest.raises(UserError, match="missing column 'Retinopathy grade'"):
        load_eval_set(table["messidor"], root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no MESSIDOR annotation files"):
        load_eval_set(table["messidor"], tmp_path / "empty")


def _write_xls(path, header, rows):
    """A legacy Excel 97 workbook, the format MESSIDOR's annotation files are published in."""
    book = xlwt.Workbook()
    sheet = book.add_sheet("Feuil1")
    for i, row in enumerate([header, *rows]):
        for j, value in enumerate(row):
            sheet.write(i, j, value)
    book.save(str(path))


def test_messidor_reads_published_xls_tables(eval_root, table, tmp_path):
    """The original release: one ``Annotation_Base*.xls`` per base, numeric grades stored as floats."""
    root = tmp_path / "messidor"
    expected = _messidor_layout(eval_root / "messidor2", root)
    for base in ("Base11", "Base12"):
        for converted in (root / base).glob("Annotation_*"):
            converted.unlink()  # only the .xls tables remain
        names = sorted(n for n in expected if (root / base / n).exists())
        _write_xls(root / base / f"Annotation_{base}.xls", MESSIDOR_HEADER,
                   [[n, "Service Ophtalmologie Lariboisière", float(expected[n]), 0.0] for n in names])
    _, rows = read_sheet(root / "Base11" / "Annotation_Base11.xls")
    assert rows and all(r["Retinopathy grade"] in {"0", "1", "2", "3"} for r in rows)
    s = load_eval_set(table["messidor"], root)
    got = {p.rsplit("/", 1)[1]: s.classes[y] for p, y in zip(s.images, s.labels)}
    assert got == {n: f"messidor_{g}" for n, g in expected.items()}
    # a damaged .xls is one line naming the file
    (root / "Base12" / "Annotation_Base12.xls").write_bytes(b"\xd0\xcf\x11\xe0 not a workbook")
    with pytest.raises(UserError, match=r"Annotation_Base12\.xls: not a readable \.xls file"):
        load_eval_set(table["messidor"], root)


# -- REFUGE challenge label tables ---------------------------------------------------------------

def test_refuge_includes_validation_and_test_images_from_label_tables(eval_root, table, tmp_path):
    root = tmp_path / "refuge"
    shutil.copytree(eval_root / "refuge", root)
    sources = sorted((root / "Training400").rglob("*.jpg"))[:8]
    val, test = [], []
    for i, src in enumerate(sources):
        glaucoma = int(src.name.startswith("g"))
        if i < 4:
            name = f"V{i + 1:04d}.jpg"
            (root / "REFUGE-Validation400").mkdir(exist_ok=True)
            shutil.copy(src, root / "REFUGE-Validation400" / name)
            val.append([name, 1000.0, 1000.0, glaucoma])
        else:
            name = f"T{i - 3:04d}.jpg"
            (root / "Test400").mkdir(exist_ok=True)
            shutil.copy(src, root / "Test400" / name)
            test.append([i - 3, name, glaucoma, 1000.0, 1000.0])
    _write_xlsx(root / "REFUGE-Validation400-GT" / "Fovea_locations.xlsx",
                ["ImgName", "Fovea_X", "Fovea_Y", "Glaucoma Label"], val)
    _write_xlsx(root / "REFUGE-Test-GT" / "Glaucoma_label_and_Fovea_location.xlsx",
                ["ID", "ImgName", "Label(Glaucoma=1)", "Fovea_X", "Fovea_Y"], test)
    s = load_eval_set(table["refuge"], root)
    assert len(s) == N_EVAL + 8
    by_name = {p.rsplit("/", 1)[1]: (s.classes[y], sp) for p, y, sp in zip(s.images, s.labels, s.splits)}
    for name, *_, g in val:
        assert by_name[name] == ("glaucoma" if g else "no_glaucoma", "valid")
    for _, name, g, *_ in test:
        assert by_name[name] == ("glaucoma" if g else "no_glaucoma", "test")
    split = probe_split(s)
    assert split.source == "published" and len(split.test) == 4 and len(split.train) == N_EVAL
    # a table row naming a missing image is one line with the row
    (root / "Test400" / "T0002.jpg").unlink()
    with pytest.raises(UserError, match=r"Glaucoma_label_and_Fovea_location\.xlsx, row 3: image 'T0002\.jpg'"):
        load_eval_set(table["refuge"], root)


# -- the CLI ------------------------------------------------------------------------------------------

def test_cli_probe_and_kshot_reports(eval_root, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["--untrained", "RN-tiny@BERT-tiny-chinese", "--data", f"fives={eval_root / 'fives'}",
               "--data", f"refuge={eval_root / 'refuge'}", "--out", str(out), "--bootstrap", "30",
               "--workers", "0", "--batch-size", "16", "--quiet", "--probe", "linear,kshot", "--shots", "1,2",
               "--probe-seeds", "2", "--probe-seed", "4"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    label = "RN-tiny@BERT-tiny-chinese (untrained)"
    assert set(report["results"][label]) == {"fives", "refuge"}
    lin = report["linear_probe"][label]
    assert lin["fives"]["split"] == "published" and lin["refuge"]["split"] == "stratified 0.5 seed 4"
    assert lin["fives"]["n_images"] == 6  # the FIVES test folder (25% of 24)
    ks = report["kshot"][label]["refuge"]
    assert set(ks) == {"1", "2"} and ks["2"]["seeds"] == [4, 5] and "balanced_accuracy" in ks["2"]["sd"]
    assert report["meta"]["probe"]["splits"]["fives"] == "published"
    rows = list(csv.DictReader(open(out / "predictions__RN-tiny_BERT-tiny-chinese_untrained__linear__fives.csv",
                                    encoding="utf-8")))
    assert len(rows) == 6 and all("/test/" in r["image"] for r in rows)
    md = (out / "table.md").read_text(encoding="utf-8")
    assert f"| {label} · linear probe |" in md and f"| {label} · 2-shot |" in md and " ± " in md
    assert md in capsys.readouterr().out


@pytest.mark.parametrize("flag, value", [("--probe", "ridge"), ("--shots", "0,4"), ("--shots", "x")])
def test_cli_rejects_bad_probe_flags(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--untrained", "RN-tiny@BERT-tiny-chinese", flag, value, "--out", "/tmp/never"])
    assert exc.value.code == 2 and value in capsys.readouterr().err


# -- one prompt implementation for training validation and vclip-eval ---------------------------

def test_training_validation_uses_the_eval_prompt_set(monkeypatch):
    from cn_clip_ext import create_model, get_tokenizer

    prompts, label_classes = train_eval.load_zeroshot_setup(PROMPTS_DIR / "plain.yaml", DATASETS_TABLE)
    assert dict(label_classes["is_gc"]) == {"0": "no_glaucoma", "1": "glaucoma"}
    assert list(label_classes["dr_grade"].values()) == ["dr_0", "dr_1", "dr_2", "dr_3", "dr_4"]
    seen = []
    real = train_eval.class_embeddings

    def spy(encode, tokenizer, class_prompts, device):
        seen.append([list(p) for p in class_prompts])
        return real(encode, tokenizer, class_prompts, device)

    monkeypatch.setattr(train_eval, "class_embeddings", spy)
    model = create_model("RN-tiny@BERT-tiny-chinese", seed=0)
    data = make_toy_pairs(12, 128, 0, 52)
    options = train_eval.ValidationOptions(batch_size=12, loss_batch_size=12,
                                           label_names=("dr_grade", "is_gc", "is_pm"))
    out = train_eval.evaluate(model, data, DistEnv(), get_tokenizer("RN-tiny@BERT-tiny-chinese"),
                              dataclasses.replace(options, prompts=prompts, label_classes=label_classes))
    assert {"zs_dr_grade_bacc", "zs_is_gc_bacc"} <= set(out) and "zs_is_pm_bacc" not in out
    assert seen == [[list(p) for p in prompts.for_classes(["dr_0", "dr_1", "dr_2", "dr_3", "dr_4"])],
                    [list(p) for p in prompts.for_classes(["no_glaucoma", "glaucoma"])]]
    bare = train_eval.evaluate(model, data, DistEnv(), get_tokenizer("RN-tiny@BERT-tiny-chinese"), options)
    assert not any(k.startswith("zs_") for k in bare) and "i2t_r1" in bare
    assert not hasattr(train_eval, "ZEROSHOT_CLASSES")


def test_one_validation_options_value_serves_pairs_and_patients():
    from cn_clip_ext import create_model, get_tokenizer
    from cn_clip_ext.model.tripartite import to_tripartite
    from cn_clip_ext.synth.toys import make_toy_patients

    options = train_eval.ValidationOptions(batch_size=4, loss_batch_size=4, max_samples=8, label_names=["dr_grade"])
    assert options.label_names == ("dr_grade",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 2  # type: ignore[misc]
    tokenizer = get_tokenizer("RN-tiny@BERT-tiny-chinese")
    pairs_model = create_model("RN-tiny@BERT-tiny-chinese", seed=0).train()
    pairs = train_eval.evaluate(pairs_model, make_toy_pairs(12, 128, 0, 52), DistEnv(), tokenizer, options)
    assert {"loss", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"} <= set(pairs) and pairs_model.training
    patients_model = to_tripartite(create_model("RN-tiny@BERT-tiny-chinese", seed=0), 0).train()
    patient_set = make_toy_patients(12, 128, seed=3, missing_rate=0.25)
    patients = train_eval.evaluate_patients(patients_model, patient_set, DistEnv(), tokenizer, options)
    assert {"loss", "loss_global", "i2t_r1", "t2i_r5"} <= set(patients) and patients_model.training
    heads = [patients[k] for k in ("loss_global", "loss_left", "loss_right") if k in patients]
    assert patients["loss"] == pytest.approx(sum(heads))
    nothing = dataclasses.replace(options, max_samples=0)
    assert train_eval.evaluate(pairs_model, make_toy_pairs(4, 128, 0, 52), DistEnv(), tokenizer, nothing) == {}
    assert train_eval.evaluate_patients(patients_model, patient_set, DistEnv(), tokenizer, nothing) == {}


def test_vclip_train_defaults_to_the_eval_package_prompt_files(tmp_path):
    from vclip_train.train import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["--preset", "tiny"]))
    assert cfg.zeroshot_prompts.endswith("plain.yaml") and cfg.zeroshot_table.endswith("datasets.yaml")
    assert load_prompt_set(cfg.zeroshot_prompts).name == "plain"
    mine = tmp_path / "p.yaml"
    shutil.copy(PROMPTS_DIR / "expert.yaml", mine)
    cfg = config_from_args(build_parser().parse_args(["--zeroshot-prompts", str(mine)]))
    assert cfg.zeroshot_prompts == str(mine) and cfg.zeroshot_table.endswith("datasets.yaml")
