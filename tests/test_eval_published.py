"""Ten more published datasets in their published layouts: readers, their tolerance of known
variants, one-line errors, size checks, multi-label scores, image lists and the CLI."""
import csv
import json
import logging
import shutil

import numpy as np
import openpyxl
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cn_clip_ext.errors import UserError
from cn_clip_ext.evaluation import load_dataset_table, load_eval_set
from cn_clip_ext.evaluation.datasets import DatasetSpec
from cn_clip_ext.evaluation.image_lists import apply_image_list
from cn_clip_ext.evaluation.multilabel import (_weighted_curves, bootstrap_multilabel, label_matrix,
                                               multilabel_metrics, prevalence_baseline)
from cn_clip_ext.evaluation.resources import DATASETS_TABLE
from cn_clip_ext.synth.published import ODIR_KEYWORDS, RFMID_COLUMNS, write_published_sets
from vclip_eval.evaluate import main

N = 16
ENTRIES = {"aptos2019": "aptos2019", "idrid_dr": "idrid", "idrid_dme": "idrid", "eyepacs": "eyepacs",
           "deepdrid": "deepdrid", "rfmid": "rfmid", "odir5k": "odir5k", "papila": "papila", "acrima": "acrima",
           "airogs": "airogs", "jsiec": "jsiec"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    write_published_sets(root, N, seed=3, size=48)
    return root


@pytest.fixture(scope="module")
def table():
    return load_dataset_table(DATASETS_TABLE)


def _names(s):
    return [p.rsplit("/", 1)[1] for p in s.images]


def _copy(root, name, tmp_path):
    return shutil.copytree(root / name, tmp_path / name)


def test_every_new_entry_is_documented_and_reads_its_layout(root, table):
    text = DATASETS_TABLE.read_text(encoding="utf-8")
    for name, folder in ENTRIES.items():
        assert f"\n{name}:\n  reader: " in text and "#" in text.split(f"\n{name}:\n")[1].splitlines()[0]
        s = load_eval_set(table[name], root / folder)
        assert len(s) > 0 and len(set(s.images)) == len(s)


def test_aptos_labels_follow_train_csv(root, table):
    s = load_eval_set(table["aptos2019"], root / "aptos2019")
    rows = pd.read_csv(root / "aptos2019" / "train.csv")
    assert _names(s) == [f"{c}.png" for c in rows["id_code"]]
    assert [s.classes[y] for y in s.labels] == [f"dr_{g}" for g in rows["diagnosis"]]
    assert s.graded and set(s.splits) == {"train"}


def test_idrid_splits_keep_their_colliding_names_apart(root, table):
    dr = load_eval_set(table["idrid_dr"], root / "idrid")
    dme = load_eval_set(table["idrid_dme"], root / "idrid")
    base = root / "idrid" / "B. Disease Grading" / "2. Groundtruths"
    train = pd.read_csv(base / "a. IDRiD_Disease Grading_Training Labels.csv")
    test = pd.read_csv(base / "b. IDRiD_Disease Grading_Testing Labels.csv")
    assert "Risk of macular edema " in train.columns  # the published trailing space
    both = pd.concat([train, test])
    assert len(dr) == len(dme) == len(both) == N
    assert "IDRiD_001.jpg" in _names(dr)[:1] and _names(dr).count("IDRiD_001.jpg") == 2
    assert [dr.classes[y] for y in dr.labels] == [f"dr_{g}" for g in both["Retinopathy grade"]]
    assert [dme.classes[y] for y in dme.labels] == [f"dme_risk_{g}" for g in both["Risk of macular edema "]]
    assert dr.splits.count("test") == len(test) and all("Testing Set" in p for p, sp in zip(dr.images, dr.splits)
                                                         if sp == "test")


def test_eyepacs_reads_both_tables_and_finds_jpeg_by_stem(root, table):
    s = load_eval_set(table["eyepacs"], root / "eyepacs")
    train = pd.read_csv(root / "eyepacs" / "trainLabels.csv")
    test = pd.read_csv(root / "eyepacs" / "retinopathy_solution.csv")
    assert _names(s) == [f"{i}.jpeg" for i in list(train["image"]) + list(test["image"])]
    assert [s.classes[y] for y in s.labels] == [f"dr_{g}" for g in list(train["level"]) + list(test["level"])]


def test_deepdrid_windows_paths_per_eye_grades_and_xlsx_test_labels(root, table):
    s = load_eval_set(table["deepdrid"], root / "deepdrid")
    base = root / "deepdrid" / "regular_fundus_images"
    train = pd.read_csv(base / "regular-fundus-training" / "regular-fundus-training.csv")
    assert train["image_path"].str.contains("\\\\").all()  # Windows separators, as published
    grades = train["left_eye_DR_Level"].fillna(train["right_eye_DR_Level"]).astype(int)
    n_train = len(train)
    assert [s.classes[y] for y in s.labels[:n_train]] == [f"dr_{g}" for g in grades]
    test = pd.read_excel(base / "Online-Challenge1&2-Evaluation" / "Challenge1_labels.xlsx")
    assert [s.classes[y] for y, sp in zip(s.labels, s.splits) if sp == "test"] == [f"dr_{g}" for g in test["DR_Levels"]]
    assert {"train", "valid", "test"} == set(s.splits)


def test_rfmid_is_multi_label_over_its_46_columns(root, table):
    s = load_eval_set(table["rfmid"], root / "rfmid")
    assert s.multi_label and len(s.classes) == 46 == 1 + len(RFMID_COLUMNS)
    frames = [pd.read_csv(p) for p in sorted((root / "rfmid" / "2. Groundtruths").glob("*.csv"))]
    labels = pd.concat(frames)  # a. Training, b. Validation, c. Testing: the parts' order
    expected = labels[["Disease_Risk", *RFMID_COLUMNS]].to_numpy().astype(bool)
    assert (label_matrix(s) == expected).all()
    assert _names(s) == [f"{i}.png" for i in labels["ID"]]


def test_odir_keywords_per_eye(root, table):
    s = load_eval_set(table["odir5k"], root / "odir5k")
    sheet = pd.read_excel(root / "odir5k" / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx")
    keywords = pd.concat([sheet["Left-Diagnostic Keywords"], sheet["Right-Diagnostic Keywords"]])
    assert keywords.str.contains("，").any() and keywords.str.contains("lens dust").any()  # as published
    by_name = dict(zip(_names(s), label_matrix(s)))
    raw = list(table["odir5k"].classes)
    for _, row in sheet.iterrows():
        for side in ("Left", "Right"):
            words = [w for w in row[f"{side}-Diagnostic Keywords"].split("，") if w != "lens dust"]
            expected = {lab for lab, vocabulary in ODIR_KEYWORDS.items() if any(w in vocabulary for w in words)}
            got = {raw[k] for k, on in enumerate(by_name[row[f"{side}-Fundus"]]) if on}
            assert got == expected, (row[f"{side}-Fundus"], words)
    assert len(s) == 2 * len(sheet)


def test_papila_multi_row_header_sheets(root, table):
    s = load_eval_set(table["papila"], root / "papila")
    od = openpyxl.load_workbook(root / "papila" / "ClinicalData" / "patient_data_od.xlsx").active
    rows = [r for r in od.iter_rows(values_only=True)][3:]
    assert _names(s)[:len(rows)] == [f"RET{r[0][1:]}OD.jpg" for r in rows]
    assert [s.classes[y] for y in s.labels[:len(rows)]] == [
        ("no_glaucoma", "glaucoma", "glaucoma_suspect")[r[3]] for r in rows]


def test_acrima_from_name_or_flair_folders(root, table, tmp_path):
    s = load_eval_set(table["acrima"], root / "acrima")
    assert all((s.classes[y] == "glaucoma") == ("_g_" in n) for n, y in zip(_names(s), s.labels))
    flair = tmp_path / "36_ACRIMA"
    for path, y in zip(s.images, s.labels):  # FLAIR's copy: G/ and noG/ with names without _g_
        target = flair / ("G" if s.classes[y] == "glaucoma" else "noG") / path.rsplit("/", 1)[1].replace("_g_", "_")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    f = load_eval_set(table["acrima"], flair)
    assert sorted(f.labels) == sorted(s.labels)
    assert all((f.classes[y] == "glaucoma") == ("/G/" in p) for p, y in zip(f.images, f.labels))


def test_airogs_images_in_numbered_folders(root, table):
    s = load_eval_set(table["airogs"], root / "airogs")
    rows = pd.read_csv(root / "airogs" / "train_labels.csv")
    assert _names(s) == [f"{c}.jpg" for c in rows["challenge_id"]]
    assert [s.classes[y] for y in s.labels] == ["glaucoma" if c == "RG" else "no_glaucoma" for c in rows["class"]]
    assert {p.rsplit("/", 2)[1] for p in s.images} == {"0", "1", "2"}


def test_jsiec_class_folders(root, table):
    s = load_eval_set(table["jsiec"], root / "jsiec")
    assert len(s) == N and len(s.classes) == 39
    meaning = {"0.0.Normal": "normal", "1.1.DR3": "dr_3", "10.0.Possible glaucoma": "glaucoma"}
    for path, y in zip(s.images, s.labels):
        folder = path.rsplit("/", 2)[1]
        if folder in meaning:
            assert s.classes[y] == meaning[folder]


def test_known_variants_case_format_extension_and_nesting(root, table, tmp_path):
    a = _copy(root, "aptos2019", tmp_path)
    pd.read_csv(a / "train.csv").rename(columns={"diagnosis": " Diagnosis "}).to_excel(a / "TRAIN.xlsx", index=False)
    (a / "train.csv").unlink()
    (a / "train_images").rename(a / "Train_Images")
    first = sorted((a / "Train_Images").iterdir())[0]
    first.rename(first.with_suffix(".PNG"))
    s = load_eval_set(table["aptos2019"], a)
    ref = load_eval_set(table["aptos2019"], root / "aptos2019")
    assert s.labels == ref.labels and len(s) == N
    nested = tmp_path / "download" / "aptos2019-blindness-detection"
    nested.parent.mkdir()
    shutil.copytree(root / "aptos2019", nested)
    assert load_eval_set(table["aptos2019"], tmp_path / "download").labels == ref.labels


def test_bad_rows_are_one_line_errors_naming_file_and_row(root, table, tmp_path):
    a = _copy(root, "aptos2019", tmp_path)
    rows = pd.read_csv(a / "train.csv")
    (a / "train_images" / f"{rows['id_code'][1]}.png").unlink()
    with pytest.raises(UserError, match=r"train\.csv, row 3: image '[0-9a-f]+' not found"):
        load_eval_set(table["aptos2019"], a)
    rows.loc[1, "id_code"] = rows["id_code"][0]
    rows.loc[2, "diagnosis"] = 7
    rows.to_csv(a / "train.csv", index=False)
    with pytest.raises(UserError, match=r"train\.csv, row 4: label '7' in column 'diagnosis' is not one of"):
        load_eval_set(table["aptos2019"], a)
    rows.drop(columns="diagnosis").to_csv(a / "train.csv", index=False)
    with pytest.raises(UserError, match=r"train\.csv: missing column 'diagnosis'"):
        load_eval_set(table["aptos2019"], a)
    r = _copy(root, "rfmid", tmp_path)
    labels = r / "2. Groundtruths" / "a. RFMiD_Training_Labels.csv"
    df = pd.read_csv(labels)
    df.loc[0, "ARMD"] = 2
    df.to_csv(labels, index=False)
    with pytest.raises(UserError, match=r"RFMiD_Training_Labels\.csv, row 2: column 'ARMD' holds '2'"):
        load_eval_set(table["rfmid"], r)
    p = _copy(root, "papila", tmp_path)
    book = openpyxl.load_workbook(p / "ClinicalData" / "patient_data_os.xlsx")
    book.active.cell(row=5, column=4, value=9)
    book.save(p / "ClinicalData" / "patient_data_os.xlsx")
    with pytest.raises(UserError, match=r"patient_data_os\.xlsx, row 5: diagnosis '9'"):
        load_eval_set(table["papila"], p)
    with pytest.raises(UserError, match=r"no aptos2019 label table found \(expected train\.csv\)"):
        load_eval_set(table["aptos2019"], tmp_path / "papila")


def test_size_check_warns_only_when_the_count_differs(root, caplog):
    spec = DatasetSpec("airogs_like", "table", {"NRG": "no_glaucoma", "RG": "glaucoma"},
                       options={"parts": [{"split": "train", "table": "train_labels.csv", "images": ".",
                                           "expected": N}], "image_col": "challenge_id", "label_col": "class"})
    with caplog.at_level(logging.WARNING):
        load_eval_set(spec, root / "airogs")
    assert not [r for r in caplog.records if "published set has" in r.getMessage()]
    caplog.clear()
    table = load_dataset_table(DATASETS_TABLE)
    with caplog.at_level(logging.WARNING):
        load_eval_set(table["airogs"], root / "airogs")
    assert any(f"{N} images in its train part, the published set has 101442" in r.getMessage()
               for r in caplog.records)


def test_multi_label_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    t = rng.random((60, 4)) < (0.5, 0.2, 0.05, 0.0)
    s = np.round(rng.normal(size=(60, 4)) + 1.5 * t, 1)  # rounded: ties
    metrics, per_class = multilabel_metrics(t, s, ("a", "b", "c", "d"))
    for k, name in enumerate("abc"):
        assert per_class[name]["auc"] == pytest.approx(roc_auc_score(t[:, k], s[:, k]))
        assert per_class[name]["ap"] == pytest.approx(average_precision_score(t[:, k], s[:, k]))
        auc, ap = _weighted_curves(t[:, k], s[:, k], np.ones((1, 60)))
        assert auc[0] == pytest.approx(per_class[name]["auc"]) and ap[0] == pytest.approx(per_class[name]["ap"])
    assert np.isnan(per_class["d"]["auc"]) and metrics["classes_scored"] == 3
    assert metrics["map"] == pytest.approx(np.mean([per_class[c]["ap"] for c in "abc"]))
    counts = np.bincount(rng.integers(0, 60, 60), minlength=60)[None]  # one resample as multiplicities
    idx = np.repeat(np.arange(60), counts[0])
    auc, ap = _weighted_curves(t[:, 0], s[:, 0], counts)
    assert auc[0] == pytest.approx(roc_auc_score(t[idx, 0], s[idx, 0]))
    assert ap[0] == pytest.approx(average_precision_score(t[idx, 0], s[idx, 0]))
    lo, hi = bootstrap_multilabel(t, s, 300)["map"]
    assert lo <= metrics["map"] <= hi
    assert prevalence_baseline(t)["map"] == pytest.approx(np.mean(t[:, :3].mean(0)))


def test_flair_partition_csvs_are_image_lists(root, table, tmp_path):
    s = load_eval_set(table["deepdrid"], root / "deepdrid")
    test = [(p, y) for p, y, sp in zip(s.images, s.labels, s.splits) if sp == "test"]
    flair = tmp_path / "37_DeepDRiD_test.csv"
    with open(flair, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["", "image", "atributes", "categories"])
        for k, (p, y) in enumerate(test):
            rel = "37_DeepDRiD/" + p.split("/deepdrid/", 1)[1]
            w.writerow([k, rel, "[]", "['no diabetic retinopathy']"])
    sub = apply_image_list(s, flair)
    assert list(sub.images) == [p for p, _ in test] and list(sub.labels) == [y for _, y in test]
    with open(flair, "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow([99, "37_DeepDRiD/regular_fundus_images/x/999_l1.jpg", "[]", "[]"])
    with pytest.raises(UserError, match=rf"37_DeepDRiD_test\.csv, row {len(test) + 2}: image .*999_l1\.jpg.* is not one"):
        apply_image_list(s, flair)
    idrid = load_eval_set(table["idrid_dr"], root / "idrid")
    (tmp_path / "bare.txt").write_text("IDRiD_001.jpg\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bare\.txt, row 1: image 'IDRiD_001\.jpg' matches 2 images"):
        apply_image_list(idrid, tmp_path / "bare.txt")


def test_cli_evaluates_every_new_dataset(root, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--untrained", "RN-tiny@BERT-tiny-chinese", "--out", str(out), "--quiet", "--bootstrap", "50"]
    for name, folder in ENTRIES.items():
        argv += ["--data", f"{name}={root / folder}"]
    acrima = load_eval_set(load_dataset_table(DATASETS_TABLE)["acrima"], root / "acrima")
    listed = tmp_path / "36_ACRIMA.csv"
    pd.DataFrame({"image": ["36_ACRIMA/Images/" + p.rsplit("/", 1)[1] for p in acrima.images[:5]],
                  "categories": "['glaucoma']"}).to_csv(listed)
    argv += ["--image-list", f"acrima={listed}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "multi-label zero-shot" in printed and "prevalence baseline" in printed
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    model = "RN-tiny@BERT-tiny-chinese (untrained)"
    single = report["results"][model]
    assert set(single) == set(ENTRIES) - {"rfmid", "odir5k"}
    assert single["acrima"]["n_images"] == 5 and single["aptos2019"]["n_images"] == N
    for name in ("rfmid", "odir5k"):
        r = report["multilabel"][model][name]
        assert 0 <= r["metrics"]["macro_auc"] <= 1 and 0 <= r["metrics"]["map"] <= 1
        assert r["ci95"]["macro_auc"][0] <= r["metrics"]["macro_auc"] <= r["ci95"]["macro_auc"][1]
        positives = sum(c["n_positive"] for c in r["per_class"].values())
        assert positives > 0 and r["baselines"]["prevalence"]["macro_auc"] == 0.5
        scores = list(csv.reader(open(out / f"scores__RN-tiny_BERT-tiny-chinese_untrained__{name}.csv",
                                      encoding="utf-8")))
        assert len(scores) == r["n_images"] + 1 and len(scores[0]) == 2 + len(r["classes"])
    assert report["meta"]["image_lists"] == {"acrima": str(listed)}


def test_vclip_synth_writes_the_published_lookalikes_that_vclip_eval_reads(root, tmp_path):
    from vclip_data_prep.synth import main as synth_main

    out = tmp_path / "synth"
    assert synth_main([str(out), "--no-corpus", "--no-eval", "--published", "aptos2019", "jsiec", "--n-eval",
                       str(N), "--seed", "3", "--size", "48", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["aptos2019", "jsiec"]
    for name in ("aptos2019", "jsiec"):  # the program writes what the library writes, byte for byte
        ours = sorted(p.relative_to(out / name) for p in (out / name).rglob("*") if p.is_file())
        assert ours == sorted(p.relative_to(root / name) for p in (root / name).rglob("*") if p.is_file())
        assert all((out / name / p).read_bytes() == (root / name / p).read_bytes() for p in ours)
    with pytest.raises(SystemExit) as err:  # an unknown name is refused by the parser, before any writing
        synth_main([str(tmp_path / "other"), "--no-corpus", "--no-eval", "--published", "nonesuch"])
    assert err.value.code == 2 and not (tmp_path / "other").exists()
