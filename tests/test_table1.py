"""vclip-eval --models: three families (ours, BiomedCLIP-style open_clip, FLAIR) in one Table-1 run on
generated sets, FLAIR's partition lists as dataset lists, and the harness against FLAIR's reference."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cn_clip_ext as vc
from cn_clip_ext.errors import UserError
from cn_clip_ext.evaluation import load_dataset_table, load_eval_set, load_prompt_set
from cn_clip_ext.evaluation.resources import DATASETS_TABLE, PROMPTS_DIR, prompt_set_path
from cn_clip_ext.evaluation.table1 import read_models
from cn_clip_ext.model.transforms import read_rgb
from cn_clip_ext.synth.generator import write_eval_sets

from family_support import reference_flair_preprocess, write_biomedclip_style, write_flair


def _flair_list(root: Path, name: str, rows: list[tuple[str, str]]) -> Path:
    """A partition list in FLAIR's format: unnamed index, image, atributes, categories (Python lists)."""
    with open(root / name, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["", "image", "atributes", "categories"])
        for i, (image, category) in enumerate(rows):
            w.writerow([i, image, "[]", repr([category, "no diabetic macular edema"])])
    return root / name


def test_english_prompt_sets_have_the_chinese_class_keys():
    for name in ("plain", "expert"):
        zh = load_prompt_set(PROMPTS_DIR / f"{name}.yaml")
        en = load_prompt_set(prompt_set_path(name, "en"))
        assert set(en.classes) == set(zh.classes) and en.name == name
        assert all(p.isascii() for k in en.classes for p in en.prompts(k))
    assert prompt_set_path("auto", "en") == prompt_set_path("plain", "en") != prompt_set_path("auto", "zh")
    with pytest.raises(UserError, match="unknown prompt set 'fancy'"):
        prompt_set_path("fancy", "en")


def test_flair_partition_list_is_a_dataset_image_list(tmp_path):
    root = tmp_path / "flair_data"
    sets = write_eval_sets(root, 8, seed=2, size=64, names=("fives",), progress=False)
    images = sorted(p.relative_to(root).as_posix() for p in sets["fives"].rglob("*.png"))
    names = {"A": "age related macular degeneration", "D": "diabetic retinopathy", "G": "glaucoma", "N": "normal"}
    rows = [(rel, names[Path(rel).stem[-1]]) for rel in images[:6]]
    _flair_list(root, "13_FIVES.csv", rows)
    s = load_eval_set(load_dataset_table(DATASETS_TABLE)["fives_flair"], root)
    assert len(s) == 6 and s.images == tuple(str(root / rel) for rel, _ in rows)
    assert [s.classes[y] for y in s.labels] == [{"A": "amd", "D": "dr", "G": "glaucoma", "N": "normal"}[
        Path(rel).stem[-1]] for rel, _ in rows]
    _flair_list(root, "13_FIVES.csv", rows[:2] + [("13_FIVES/missing.png", "glaucoma")])
    with pytest.raises(UserError, match=r"13_FIVES.csv, row 4: image .*missing.png' not found"):
        load_eval_set(load_dataset_table(DATASETS_TABLE)["fives_flair"], root)
    (root / "13_FIVES.csv").write_text(",image,atributes,categories\n0,x.png,[],__import__('os')\n")
    with pytest.raises(UserError, match="row 2: categories .* is not a non-empty list"):
        load_eval_set(load_dataset_table(DATASETS_TABLE)["fives_flair"], root)


def test_three_families_give_one_table_with_three_rows_and_counts(tmp_path, capsys):
    from vclip_eval.evaluate import main

    data = tmp_path / "data"
    sets = write_eval_sets(data, 4, seed=5, size=96, names=("fives", "refuge"), progress=False)
    fives_imgs = sorted(p.relative_to(data).as_posix() for p in sets["fives"].rglob("*.png"))[:3]
    names = {"A": "age related macular degeneration", "D": "diabetic retinopathy", "G": "glaucoma", "N": "normal"}
    _flair_list(data, "13_FIVES.csv", [(rel, names[Path(rel).stem[-1]]) for rel in fives_imgs])

    weights = tmp_path / "weights"
    ours = vc.create_model(vc.VISIONCLIP_TINY, seed=1)
    weights.mkdir()
    torch.save({"state_dict": ours.state_dict(), "config": {"model": vc.VISIONCLIP_TINY}, "step": 5},
               weights / "ours.pt")
    write_biomedclip_style(weights / "BiomedCLIP", seed=2)
    flair_pth, flair_text, ref = write_flair(weights, seed=3)
    (tmp_path / "models.yaml").write_text(
        "models:\n"
        "  - {label: VisionCLIP tiny, family: visionclip, path: weights/ours.pt}\n"
        "  - {label: BiomedCLIP-style, family: open_clip, path: weights/BiomedCLIP}\n"
        "  - label: FLAIR\n    family: flair\n    path: weights/flair_resnet.pth\n"
        "    options: {text_config: weights/Bio_ClinicalBERT}\n", encoding="utf-8")
    out = tmp_path / "report"
    rc = main(["--models", str(tmp_path / "models.yaml"), "--data", f"fives={sets['fives']}",
               "--data", f"refuge={sets['refuge']}", "--data", f"fives_flair={data}", "--out", str(out),
               "--bootstrap", "20", "--workers", "1", "--batch-size", "4", "--quiet"])
    assert rc == 0
    table = (out / "table.md").read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["VisionCLIP tiny", "BiomedCLIP-style", "FLAIR",
                                                     "majority-class baseline", "uniform-class baseline"]
    counts = {"fives": len(load_eval_set(load_dataset_table(DATASETS_TABLE)["fives"], sets["fives"])),
              "refuge": len(load_eval_set(load_dataset_table(DATASETS_TABLE)["refuge"], sets["refuge"])),
              "fives_flair": 3}
    for row in rows:
        cells = row.strip("| ").split(" | ")[-3:]
        assert [c.rsplit("n=", 1)[1] for c in cells] == [str(counts[d]) for d in ("fives", "refuge", "fives_flair")]
        assert "AUC" not in cells[0] and "AUC" not in cells[2]  # AUC on the binary set only
    assert all("AUC" in row.strip("| ").split(" | ")[-2] for row in rows[:3])
    assert "| visionclip | zh · plain |" in rows[0] and "| open_clip | en · plain |" in rows[1]
    assert "| flair | en · plain | `FlairPreprocess(size=512" in rows[2] and "balanced accuracy" in table

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [m["family"] for m in report["models"].values()] == ["visionclip", "open_clip", "flair"]
    assert [m["language"] for m in report["models"].values()] == ["zh", "en", "en"]
    assert report["models"]["FLAIR"]["sha256"] and report["models"]["BiomedCLIP-style"]["sha256"] is None
    for label, per in report["results"].items():
        assert {d: r["n_images"] for d, r in per.items()} == counts, label
        assert all("ci95" in r and "balanced_accuracy" in r["metrics"] for r in per.values())

    # the harness's FLAIR probabilities equal FLAIR's reference, prompts encoded one class at a time
    prompts = load_prompt_set(prompt_set_path("plain", "en"))
    s = load_eval_set(load_dataset_table(DATASETS_TABLE)["refuge"], sets["refuge"])
    with torch.no_grad():
        x = torch.stack([reference_flair_preprocess(read_rgb(p)) for p in s.images])
        img = ref.encode_image(x)
        cls = torch.stack([F.normalize(ref.encode_text(list(prompts.prompts(c))).mean(0), dim=-1) for c in s.classes])
        want = (float(ref.logit_scale.exp()) * img @ cls.t()).softmax(-1).numpy()
    with open(out / "predictions__FLAIR__refuge.csv", encoding="utf-8") as f:
        got = np.array([[float(v) for k, v in row.items() if k.startswith("p_")] for row in csv.DictReader(f)])
    assert np.allclose(got, want, atol=1e-4)
    capsys.readouterr()


def test_models_file_errors_are_one_line(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - {label: a, path: x.pt, family: nope}\n", encoding="utf-8")
    with pytest.raises(UserError, match="unknown model family 'nope'"):
        read_models(path)
    path.write_text("models:\n  - {label: a, path: x.pt}\n  - {label: a, path: y.pt}\n", encoding="utf-8")
    with pytest.raises(UserError, match="models.yaml: model 2: label 'a' is used twice"):
        read_models(path)
    path.write_text("models:\n  - {label: a, path: x.pt, weights: 3}\n", encoding="utf-8")
    with pytest.raises(UserError, match="model 1: unknown key 'weights'"):
        read_models(path)
    path.write_text("- {label: F, family: flair, path: w/f.pth, options: {text_config: bert}, prompts: expert}\n",
                    encoding="utf-8")
    (entry,) = read_models(path)
    assert entry.path == tmp_path / "w/f.pth" and entry.options["text_config"] == str(tmp_path / "bert")
    assert entry.prompts == "expert"
