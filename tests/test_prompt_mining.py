"""vclip-prompts: prompts mined from a corpus whose AMD captions use other words than the built-in
prompts (疑似黄斑区域病变, not 年龄相关性黄斑变性) name that wording, the check flags the built-in
set for AMD, and a tiny model trained on the corpus tells its AMD images from the others better
zero-shot with the mined prompts than with the built-in ones (vclip-eval --prompts mined:LMDB): the
images are the corpus's own, so what differs is only how well the prompts speak its captions.

Budget: about a minute on 2 busy cores (the 64-px test tower, 120 steps, one thread).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json

import numpy as np
import pytest
import yaml

from cn_clip_ext.evaluation import load_dataset_table, load_prompt_set
from cn_clip_ext.evaluation.mining import bigrams, check, corpus_tasks, mine, phrases, read_corpus
from cn_clip_ext.evaluation.resources import DATASETS_TABLE, PROMPTS_DIR
from cn_clip_ext.layouts import SYNFUNDUS_COLUMNS, SYNFUNDUS_CSV, SYNFUNDUS_IMAGE_DIR
from cn_clip_ext.synth.captions import DR_PHRASES, FINDING_PHRASES, NORMAL_PHRASES
from cn_clip_ext.synth.generator import _blank_labels
from cn_clip_ext.synth.renderer import render_fundus
from cn_clip_ext.training import TrainConfig, train
from vclip_eval.evaluate import main as eval_main
from vclip_eval.prompts_cli import main

MODEL = "RN-test64@BERT-tiny-chinese"
STEPS = 120
AMD_WORDING = ("疑似黄斑区域病变。", "黄斑区域病变，建议眼科随诊。")
KINDS = {  # kind -> (labels, caption phrases)
    "amd": ({"is_amd": 1}, AMD_WORDING),
    "normal": ({}, NORMAL_PHRASES),
    "glaucoma": ({"is_gc": 1}, FINDING_PHRASES["is_gc"]),
    "dr": ({"dr_grade": 2, "is_dm": 1}, DR_PHRASES[2]),
}


def _render(kind: str, index: int, seed: int, size: int = 96):
    findings, captions = KINDS[kind]
    lab = _blank_labels(index % 2, **findings)
    rng = np.random.default_rng([seed, index])
    image = render_fundus(lab, rng, size).image
    return lab, captions[(index // len(KINDS)) % len(captions)], image


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def write_corpus(root, n_per_kind: int = 80):
    """A SynFundus-layout corpus: AMD, normal, glaucoma and DR eyes, AMD captioned in other words."""
    (root / SYNFUNDUS_IMAGE_DIR).mkdir(parents=True)
    rows = []
    for k in range(n_per_kind * len(KINDS)):
        kind = list(KINDS)[k % len(KINDS)]
        lab, caption, image = _render(kind, k, seed=11)
        data = _png(image)
        name = f"{1000 + k}.png"
        (root / SYNFUNDUS_IMAGE_DIR / name).write_bytes(data)
        row = {**lab, "file_md5": hashlib.md5(data).hexdigest(), "file_name": name, "diagnosticAdvice": caption}
        rows.append([row[c] for c in SYNFUNDUS_COLUMNS])
    with open(root / SYNFUNDUS_CSV, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(SYNFUNDUS_COLUMNS)
        w.writerows(rows)


@pytest.fixture(scope="module")
def lmdb(tmp_path_factory):
    build = pytest.importorskip("vclip_data_prep.build_lmdb")
    root = tmp_path_factory.mktemp("mining")
    write_corpus(root / "syn")
    assert build.main([str(root / "syn"), "--out", str(root / "lmdb"), "--split", "1:0:0", "--size", "96",
                       "--workers", "1", "--no-progress"]) == 0
    return root / "lmdb"


def test_phrases_and_bigrams():
    assert phrases("视杯扩大，杯盘比增大，疑似青光眼。图像模糊。") == {
        "视杯扩大，杯盘比增大，疑似青光眼", "视杯扩大", "杯盘比增大", "疑似青光眼", "图像模糊"}
    assert bigrams("黄斑区。") == {"黄斑", "斑区"} and bigrams("眼") == {"眼"}


def test_mine_names_the_corpus_wording_with_its_evidence(lmdb, tmp_path, capsys):
    out = tmp_path / "mined.yaml"
    assert main(["mine", "--lmdb", str(lmdb), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert data["name"] == "mined" and data["templates"] == ["{}。"]
    assert set(data["classes"]["amd"]) <= {w.rstrip("。") for w in AMD_WORDING} | {"黄斑区域病变", "建议眼科随诊"}
    assert "疑似黄斑区域病变" in data["classes"]["amd"]
    assert not any("年龄相关性" in n for n in data["classes"]["amd"])
    assert any("青光眼" in n for n in data["classes"]["glaucoma"])
    plain = load_prompt_set(PROMPTS_DIR / "plain.yaml")
    assert data["classes"]["messidor_0"] == list(plain.classes["messidor_0"])  # no corpus label: the base set's
    mined = load_prompt_set(out)  # a valid prompt set
    assert set(plain.classes) <= set(mined.classes)
    evidence = json.loads((tmp_path / "mined.yaml.evidence.json").read_text(encoding="utf-8"))
    amd = {e["phrase"]: e for e in evidence["classes"]["amd"]}["疑似黄斑区域病变"]
    assert amd["n_class"] == amd["n_total"] >= 5 and amd["purity"] == pytest.approx(1.0)
    assert amd["class_size"] == evidence["captions_per_class"]["synfundus_amd"]["amd"] == 80
    assert "# amd [synfundus_amd, 80 captions]: 疑似黄斑区域病变" in printed
    assert main(["mine", "--lmdb", str(lmdb), "--out", str(out)]) == 2  # refuses to replace it
    assert "exists (use --force" in capsys.readouterr().err


def test_check_flags_the_builtin_set_and_not_the_mined_one(lmdb, tmp_path, capsys):
    assert main(["check", "--lmdb", str(lmdb), "--prompts", "plain", "--json", str(tmp_path / "c.json"),
                 "--strict"]) == 1
    printed = capsys.readouterr().out
    assert "WARNING: synfundus_amd/amd: its prompts never occur verbatim" in printed
    checks = {(c["task"], c["class"]): c for c in json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))}
    assert checks[("synfundus_amd", "amd")]["verbatim"] == 0.0
    assert checks[("synfundus_glaucoma", "glaucoma")]["warning"] is None  # the built-in glaucoma wording is used
    corpus = read_corpus(lmdb)
    tasks = corpus_tasks(load_dataset_table(DATASETS_TABLE))
    mined = mine(corpus, tasks, load_prompt_set(PROMPTS_DIR / "plain.yaml"))
    after = {(c.task, c.key): c for c in check(corpus, tasks, mined.prompts)}
    assert after[("synfundus_amd", "amd")].warning is None and after[("synfundus_amd", "amd")].verbatim == 1.0
    assert after[("synfundus_amd", "amd")].wording["amd"] > after[("synfundus_amd", "amd")].wording["no_amd"]


def test_mined_prompts_beat_the_builtin_ones_on_amd(lmdb, tmp_path, one_thread, capsys):
    configs = tmp_path / "model_configs"
    configs.mkdir()
    (configs / "RN-test64.json").write_text(json.dumps({
        "embed_dim": 64, "image_resolution": 64, "vision_layers": "[1,1,1,1]", "vision_width": 8,
        "vision_patch_size": None}))
    result = train(TrainConfig.tiny(
        model=MODEL, model_config_dir=str(configs), data=str(lmdb), output_dir=str(tmp_path / "run"),
        batch_size=32, max_steps=STEPS, lr=2e-3, warmup_steps=10, num_workers=0, valid_every=0,
        save_every=STEPS, progress=False, plot=False, tensorboard=False, seed=0))
    table = yaml.safe_load(DATASETS_TABLE.read_text(encoding="utf-8"))
    table["amd_corpus"] = {"reader": "synfundus", "split": "train", "label": "is_amd",  # the corpus's own images
                           "classes": {0: "no_amd", 1: "amd"}}
    (tmp_path / "table.yaml").write_text(yaml.safe_dump(table, allow_unicode=True), encoding="utf-8")
    bacc = {}
    for prompts in ("plain", f"mined:{lmdb}"):
        out = tmp_path / ("report_" + prompts.split(":")[0])
        assert eval_main(["--checkpoint", str(result.last_checkpoint), "--datasets-table", str(tmp_path / "table.yaml"),
                          "--data", f"amd_corpus={lmdb}", "--prompts", prompts,
                          "--corpus-lmdb", str(lmdb), "--out", str(out), "--quiet", "--bootstrap", "100",
                          "--workers", "0"]) == 0
        printed = capsys.readouterr().out
        assert ("WARNING: synfundus_amd/amd" in printed) == (prompts == "plain")
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        bacc[prompts.split(":")[0]] = next(iter(report["results"].values()))["amd_corpus"]["metrics"]["balanced_accuracy"]
    print(f"AMD zero-shot balanced accuracy: built-in {bacc['plain']:.3f}, mined {bacc['mined']:.3f}")
    assert bacc["mined"] > bacc["plain"]
    assert bacc["mined"] > 0.5
