"""Zero-shot evaluation: dataset readers, prompt ensembles, scores, reports and the CLI."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from cn_clip_ext.synth.generator import write_eval_sets
from cn_clip_ext.errors import UserError
from cn_clip_ext.evaluation import ClassEmbedder, load_dataset_table, load_eval_set, load_prompt_set, scores
from cn_clip_ext.evaluation.classifier import class_embeddings
from vclip_eval.evaluate import DATASETS_TABLE, PROMPTS_DIR, main

N_EVAL = 24


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_sets")
    write_eval_sets(root, N_EVAL, seed=5, size=96, progress=False)
    return root


@pytest.fixture(scope="module")
def table():
    return load_dataset_table(DATASETS_TABLE)


def test_messidor2_reads_gradable_rows_only(eval_root, table):
    s = load_eval_set(table["messidor2"], eval_root / "messidor2")
    with open(eval_root / "messidor2" / "messidor_data.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    gradable = [r for r in rows if r["adjudicated_gradable"] == "1"]
    assert len(s) == len(gradable) > 0
    assert [s.classes[y] for y in s.labels] == [f"dr_{int(float(r['adjudicated_dr_grade']))}" for r in gradable]
    assert s.graded and s.classes == ("dr_0", "dr_1", "dr_2", "dr_3", "dr_4")
    assert s.load(0).mode == "RGB"


def test_fives_class_comes_from_the_suffix(eval_root, table):
    s = load_eval_set(table["fives"], eval_root / "fives")
    meaning = {"A": "amd", "D": "dr", "G": "glaucoma", "N": "normal"}
    assert len(s) == N_EVAL
    for path, y in zip(s.images, s.labels):
        assert "Original" in path
        assert s.classes[y] == meaning[path.rsplit("_", 1)[1][0]]
    assert set(s.labels) == {0, 1, 2, 3}


def test_refuge_g_is_glaucoma(eval_root, table):
    s = load_eval_set(table["refuge"], eval_root / "refuge")
    assert len(s) == N_EVAL
    for path, y in zip(s.images, s.labels):
        name = path.rsplit("/", 1)[1]
        assert s.classes[y] == ("glaucoma" if name.startswith("g") else "no_glaucoma")
    assert 0 < sum(s.labels) < len(s)


def test_malformed_layouts_are_one_line_errors(eval_root, table, tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_eval_set(table["fives"], tmp_path / "nowhere")
    bad = tmp_path / "fives"
    shutil.copytree(eval_root / "fives", bad)
    (bad / "test" / "Original" / "99_X.png").write_bytes((bad / "test" / "Original" / "1_A.png").read_bytes())
    with pytest.raises(UserError, match=r"99_X\.png.*unknown label 'X'"):
        load_eval_set(table["fives"], bad)
    m = tmp_path / "messidor2"
    shutil.copytree(eval_root / "messidor2", m)
    first = sorted((m / "IMAGES").iterdir())[0]
    first.unlink()
    with pytest.raises(UserError, match=r"messidor_data\.csv, row \d+: image"):
        load_eval_set(table["messidor2"], m)
    (m / "messidor_data.csv").write_text("image_id,grade\nx.png,1\n", encoding="utf-8")
    with pytest.raises(UserError, match="missing column 'adjudicated_dr_grade'"):
        load_eval_set(table["messidor2"], m)
    r = tmp_path / "refuge"
    shutil.copytree(eval_root / "refuge", r)
    next((r / "Training400" / "Glaucoma").iterdir()).rename(r / "Training400" / "Glaucoma" / "x0001.jpg")
    with pytest.raises(UserError, match="x0001.jpg"):
        load_eval_set(table["refuge"], r)


def test_generic_csv_and_imagefolder(eval_root, tmp_path):
    folder = tmp_path / "folder"
    for cls in ("normal", "glaucoma"):
        (folder / cls).mkdir(parents=True)
    pngs = sorted((eval_root / "fives" / "train" / "Original").glob("*.png"))[:4]
    for i, p in enumerate(pngs):
        shutil.copy(p, folder / ("normal" if i % 2 else "glaucoma") / p.name)
    (tmp_path / "table.yaml").write_text(
        "mine:\n  reader: imagefolder\n  classes: {normal: normal, glaucoma: glaucoma}\n"
        "sheet:\n  reader: csv\n  path: labels.csv\n  image_col: file\n  label_col: dx\n"
        "  classes: {'0': normal, '1': glaucoma}\n", encoding="utf-8")
    table = load_dataset_table(tmp_path / "table.yaml")
    s = load_eval_set(table["mine"], folder)
    assert len(s) == 4 and sorted(s.labels) == [0, 0, 1, 1]
    (folder / "labels.csv").write_text("file,dx\nnormal/" + pngs[1].name + ",0\nglaucoma/" + pngs[0].name + ",1\n",
                                       encoding="utf-8-sig")
    s = load_eval_set(table["sheet"], folder)
    assert s.labels == (0, 1)
    (folder / "labels.csv").write_text("file,dx\nnormal/missing.png,0\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"labels\.csv, row 2: image"):
        load_eval_set(table["sheet"], folder)


def test_scores_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 5, 300))
    probs = rng.dirichlet(np.ones(5), 300)
    probs[np.arange(300), y] += rng.random(300)
    probs /= probs.sum(1, keepdims=True)
    s = scores.score(y, p, probs, graded=True)
    assert s["top1"] == pytest.approx(skm.accuracy_score(y, p))
    assert s["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert s["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert s["quadratic_kappa"] == pytest.approx(skm.cohen_kappa_score(y, p, weights="quadratic"))
    assert s["macro_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    # ties and a class never predicted
    p2 = np.where(p == 4, 0, p)
    ties = np.round(probs, 1)
    for c in range(5):
        assert scores.binary_auc(y == c, ties[:, c]) == pytest.approx(skm.roc_auc_score(y == c, ties[:, c]))
    assert scores.macro_f1(y, p2) == pytest.approx(skm.f1_score(y, p2, average="macro"))


def test_bootstrap_brackets_the_estimate_and_baselines():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.8, y, 1 - y)
    point = scores.score(y, p)["balanced_accuracy"]
    lo, hi = scores.bootstrap(y, p, n_resamples=300)["balanced_accuracy"]
    assert lo < point < hi and hi - lo < 0.2
    base = scores.baselines(np.array([0] * 90 + [1] * 10), 2)
    assert base["majority"]["top1"] == pytest.approx(0.9)
    assert base["majority"]["balanced_accuracy"] == pytest.approx(0.5)
    assert base["uniform"]["balanced_accuracy"] == pytest.approx(0.5)


def test_prompt_ensemble_is_the_mean_of_normalised_prompt_embeddings():
    prompts = load_prompt_set(PROMPTS_DIR / "expert.yaml")
    per_class = prompts.for_classes(["glaucoma", "no_glaucoma"])
    assert len(per_class[0]) == len(prompts.templates) * len(prompts.classes["glaucoma"])
    table = torch.randn(1000, 8)

    def encode(ids):  # a deterministic stand-in text encoder: sum of token vectors
        return table[ids % 1000].sum(1)

    def tokenize(texts):
        return torch.tensor([[ord(ch) for ch in t[:10].ljust(10)] for t in texts])

    got = class_embeddings(encode, tokenize, per_class)
    for k, group in enumerate(per_class):
        e = F.normalize(torch.stack([encode(tokenize([t]))[0] for t in group]), dim=-1)
        expected = F.normalize(e.mean(0), dim=0)
        torch.testing.assert_close(got[k], expected)
    torch.testing.assert_close(class_embeddings(encode, tokenize, per_class, batch_size=3), got)  # the batch size does not matter

    # one model's embedder encodes each class once across data sets, with the same result
    encoded: list[str] = []

    class Model(torch.nn.Module):
        def encode_text(self, ids):
            encoded.extend("".join(chr(c) for c in row).rstrip() for row in ids.tolist())
            return encode(ids)

    embedder = ClassEmbedder(Model(), tokenize, prompts)
    torch.testing.assert_close(embedder(["glaucoma", "no_glaucoma"]), got)
    first = len(encoded)
    torch.testing.assert_close(embedder(["no_glaucoma", "normal", "glaucoma"])[[0, 2]], got[[1, 0]])
    assert len(encoded) - first == len(prompts.prompts("normal"))  # only the new class was encoded


def test_prompt_files_are_complete_and_immutable(table):
    for path in [*PROMPTS_DIR.glob("*.yaml"), *(PROMPTS_DIR / "en").glob("*.yaml")]:
        prompts = load_prompt_set(path)
        for spec in table.values():
            for key in spec.classes.values():
                assert prompts.prompts(key)  # every class the table uses has prompts
        with pytest.raises(TypeError):
            prompts.classes["glaucoma"] = ("x",)  # type: ignore[index]


def test_cli_writes_reports_for_an_untrained_model(eval_root, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["--untrained", "RN-tiny@BERT-tiny-chinese", "--data-root", str(eval_root), "--out", str(out),
               "--bootstrap", "50", "--workers", "0", "--batch-size", "16", "--quiet", "--prompts", "expert"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    results = report["results"]["RN-tiny@BERT-tiny-chinese (untrained)"]
    assert set(results) == {"messidor2", "fives", "refuge"}
    for name, r in results.items():
        m = r["metrics"]
        assert 0 <= m["balanced_accuracy"] <= 1 and 0 <= m["top1"] <= 1
        lo, hi = r["ci95"]["balanced_accuracy"]
        assert lo <= m["balanced_accuracy"] <= hi
        assert sum(map(sum, r["confusion"])) == r["n_images"]
        rows = list(csv.DictReader(open(out / f"predictions__RN-tiny_BERT-tiny-chinese_untrained__{name}.csv",
                                        encoding="utf-8")))
        assert len(rows) == r["n_images"]
        assert (out / f"confusion__RN-tiny_BERT-tiny-chinese_untrained__{name}.png").stat().st_size > 1000
    assert "quadratic_kappa" in results["messidor2"]["metrics"]
    table_md = (out / "table.md").read_text(encoding="utf-8")
    assert "| model | messidor2 | fives | refuge |" in table_md and "majority-class baseline" in table_md
    assert table_md in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--untrained", "RN-tiny@BERT-tiny-chinese", "--data", "nope=/x"], "'nope' is not in"),
    (["--untrained", "RN-tiny@BERT-tiny-chinese", "--data", "fives=/no/such/dir"], "/no/such/dir"),
    (["--checkpoint", "/no/such.pt"], "/no/such.pt: checkpoint not found"),
    (["--untrained", "RN-tiny@BERT-tiny-chinese", "--prompts", "klingon"], "klingon"),
    (["--untrained", "RN-tiny@BERT-tiny-chinese"], "no dataset given"),
    (["--untrained", "RN-huge@BERT"], "unknown model"),
])
def test_cli_bad_input_is_one_line(argv, message, tmp_path, capsys, eval_root):
    if "--data" not in argv and "no dataset" not in message:
        argv = argv + ["--data", f"fives={eval_root / 'fives'}"]
    rc = main(argv + ["--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len([line for line in err if "error" in line]) == 1 and message in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_chosen_roots_data_root_then_data_options(tmp_path):
    from pathlib import Path

    from cn_clip_ext.evaluation.datasets import chosen_roots

    table = {"fives": object(), "refuge": object(), "messidor2": object()}
    (tmp_path / "fives").mkdir()
    (tmp_path / "refuge").mkdir()
    (tmp_path / "other").mkdir()
    got = chosen_roots(table, tmp_path, ["refuge=/elsewhere/refuge", "messidor2=m2"], "t.yaml")
    assert got == {"fives": tmp_path / "fives", "refuge": Path("/elsewhere/refuge"), "messidor2": Path("m2")}
    for data_root, data, words in ((tmp_path / "missing", [], "--data-root folder not found"),
                                   (None, ["fives"], "expected NAME=ROOT"),
                                   (None, ["other=x"], "'other' is not in t.yaml"),
                                   (None, [], "no evaluation set given")):
        with pytest.raises(UserError, match=words):
            chosen_roots(table, data_root, data, "t.yaml", "evaluation set")
