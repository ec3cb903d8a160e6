"""Careless and hostile input to the output-side commands (vclip-eval, vclip-audit, vclip-export,
vclip-embed): structured-file bombs, special files where images should be, damaged or lying bundles,
outputs that would overwrite what a command did not write, and OS errors, each one line and no traceback."""
import json
import os
import subprocess
import sys
import re
import textwrap
from pathlib import Path

import pytest

from vclip_eval.evaluate import main as eval_main

ROOT = Path(__file__).resolve().parents[1]
TINY = "RN-tiny@BERT-tiny-chinese"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# -- YAML/JSON inputs ------------------------------------------------------------------------------------
def _bomb(levels: int = 9) -> str:
    """A "billion laughs" YAML prompt set: templates expand to 9**levels strings through aliases."""
    lines = ["name: bomb", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels - 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    lines.append("templates: [" + ", ".join([f"*l{levels - 2}"] * 9) + "]")
    lines.append("classes: {normal: [x]}")
    return "\n".join(lines) + "\n"


RUN_UNDER_MEMORY_LIMIT = textwrap.dedent("""
    import resource, sys
    from vclip_eval.evaluate import main
    vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
    limit = vm + (512 << 20)  # what the program has mapped once imported, plus 512 MiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    raise SystemExit(main(sys.argv[1:]))
""")


def test_yaml_alias_bomb_is_refused_in_one_line_under_a_memory_limit(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb(), encoding="utf-8")
    (tmp_path / "fives").mkdir()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", RUN_UNDER_MEMORY_LIMIT, "--untrained", TINY, "--prompts", str(bomb),
                           "--data", f"fives={tmp_path / 'fives'}", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err[-2000:]
    assert err.count("\n") == 0 and "Traceback" not in err and "MemoryError" not in err
    assert f"{bomb}: YAML aliases expand to more than" in err and "alias bomb" in err
    assert not (tmp_path / "out").exists()


def test_self_referring_alias_and_deep_nesting_are_one_line(tmp_path, capsys):
    table = tmp_path / "table.yaml"
    table.write_text("fives: &x {reader: fives, classes: {A: amd}, loop: [*x]}\n", encoding="utf-8")
    assert eval_main(["--untrained", TINY, "--datasets-table", str(table), "--data", f"fives={tmp_path}",
                      "--out", str(tmp_path / "o")]) == 2
    assert "refer to themselves" in one_line_error(capsys)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    assert eval_main(["--untrained", TINY, "--prompts", str(deep), "--data", f"fives={tmp_path}",
                      "--out", str(tmp_path / "o")]) == 2
    assert str(deep) in one_line_error(capsys)


def test_error_messages_show_only_an_excerpt_of_the_data(tmp_path, capsys):
    big = ["x" * 1000] * 2000  # a 2 MB template list without '{}'
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"templates": [big], "classes": {"normal": ["x"]}}), encoding="utf-8")
    assert eval_main(["--untrained", TINY, "--prompts", str(prompts), "--data", f"fives={tmp_path}",
                      "--out", str(tmp_path / "o")]) == 2
    line = one_line_error(capsys)
    assert "exactly one '{}'" in line and len(line) < len(str(prompts)) + 200
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"x" * 5000: {"reader": "fives"}}), encoding="utf-8")
    assert eval_main(["--untrained", TINY, "--datasets-table", str(table), "--data", f"fives={tmp_path}",
                      "--out", str(tmp_path / "o")]) == 2
    line = one_line_error(capsys)
    assert "needs 'reader'" in line and len(line) < len(str(table)) + 200


def test_structured_input_that_is_a_fifo_or_too_big_is_refused_at_once(tmp_path, capsys):
    fifo = tmp_path / "prompts.yaml"
    os.mkfifo(fifo)  # opening it would block forever
    assert eval_main(["--untrained", TINY, "--prompts", str(fifo), "--data", f"fives={tmp_path}",
                      "--out", str(tmp_path / "o")]) == 2
    assert f"{fifo}: file is a FIFO, not a regular file" in one_line_error(capsys)
    from cn_clip_ext.errors import UserError
    from cn_clip_ext.files import read_structured

    big = tmp_path / "big.json"
    big.write_text("[" + "0, " * 1000 + "0]", encoding="utf-8")
    with pytest.raises(UserError, match="above the limit of 100"):
        read_structured(big, max_bytes=100)
    ok = tmp_path / "ok.yaml"
    ok.write_text("a: &a [1, 2]\nb: [*a, *a]\nm: &m {x: 1}\nn: {<<: *m, y: 2}\n", encoding="utf-8")
    assert read_structured(ok) == {"a": [1, 2], "b": [[1, 2], [1, 2]], "m": {"x": 1}, "n": {"x": 1, "y": 2}}
    empty = tmp_path / "empty.yaml"
    empty.write_bytes(b"")
    assert read_structured(empty) is None


# -- bundles whose config, weights or file list lie -----------------------------------------------------
import shutil  # noqa: E402

import torch  # noqa: E402

import cn_clip_ext as vc  # noqa: E402
from cn_clip_ext.model.bundle import file_sha256  # noqa: E402
from cn_clip_ext.training.checkpoint import atomic_save  # noqa: E402
from vclip_export.embed import main as embed_main  # noqa: E402
from vclip_export.export import main as export_main  # noqa: E402


def make_checkpoint(path: Path, seed: int = 0, step: int = 3) -> Path:
    model = vc.create_model(vc.VISIONCLIP_TINY, seed=seed)
    atomic_save({"epoch": 1, "step": step, "state_dict": model.state_dict(),
                 "config": {"model": vc.VISIONCLIP_TINY, "preprocess": "squash", "context_length": 52}}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "latest.pt")


@pytest.fixture(scope="module")
def bundle(ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "b"
    assert export_main([str(ckpt), str(out), "--no-prompts"]) == 0
    return out


@pytest.fixture()
def captions(tmp_path) -> Path:
    path = tmp_path / "captions.txt"
    path.write_text("疑似青光眼。\n未见明显异常。\n", encoding="utf-8")
    return path


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section][field] = value
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")


def _embed_error(folder: Path, captions: Path, tmp_path: Path, capsys) -> str:
    rc = embed_main(["--model", str(folder), "--captions", str(captions), "--out", str(tmp_path / "emb"), "--quiet"])
    assert rc == 2
    assert not (tmp_path / "emb" / "embeddings.npy").exists()
    return one_line_error(capsys)


def test_a_sound_bundle_loads(bundle, captions, tmp_path):
    assert embed_main(["--model", str(bundle), "--captions", str(captions), "--out", str(tmp_path / "e"),
                       "--quiet"]) == 0
    assert (tmp_path / "e" / "embeddings.npy").is_file()


@pytest.mark.parametrize("changes, message", [
    ({"architecture": "ViT-B-16@BERT-tiny-chinese"}, "the weights were exported for 'RN-tiny@BERT-tiny-chinese'"),
    ({"vision__vision_width": 32}, "has shape"),
    ({"text__text_hidden_size": 64}, "config and weights disagree"),
    ({"image_size": -5}, "image_size must be a positive integer, got -5"),
    ({"image_size": 224}, "image_size 224 disagrees with the vision tower's image_resolution 128"),
    ({"context_length": 500}, "context_length 500 exceeds the text tower's 64 positions"),
    ({"embed_dim": "wide"}, "embed_dim must be a positive integer"),
    ({"towers": ["lens"] * 100_000}, "towers must be a non-empty subset"),
])
def test_config_that_disagrees_with_the_weights_is_refused(bundle, captions, tmp_path, capsys, changes, message):
    folder = _copy(bundle, tmp_path)
    _edit_config(folder, **changes)
    line = _embed_error(folder, captions, tmp_path, capsys)
    assert message in line and len(line) < 400


def _rewrite_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"architecture": vc.VISIONCLIP_TINY})
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg["files"]["model.safetensors"] = file_sha256(folder / "model.safetensors")  # a consistent forgery
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_with_nan_or_inf_are_refused(bundle, captions, tmp_path, capsys, value):
    folder = _copy(bundle, tmp_path)
    _rewrite_weights(folder, lambda s: s["visual.conv1.weight"].view(-1).__setitem__(3, value))
    line = _embed_error(folder, captions, tmp_path, capsys)
    assert "tensor 'visual.conv1.weight' holds NaN or infinite values" in line


def test_weights_of_another_shape_are_refused(bundle, captions, tmp_path, capsys):
    folder = _copy(bundle, tmp_path)
    _rewrite_weights(folder, lambda s: s.__setitem__("text_projection", torch.zeros(64, 128)))
    assert "tensor 'text_projection' has shape [64, 128]" in _embed_error(folder, captions, tmp_path, capsys)


def test_files_entries_that_escape_the_bundle_are_refused(bundle, captions, tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret", encoding="utf-8")
    for entry, message in (("../outside.txt", "escapes the bundle folder through '..'"),
                           (str(outside), "is an absolute path")):
        folder = _copy(bundle, tmp_path)
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        cfg["files"][entry] = file_sha256(outside)
        (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        assert message in _embed_error(folder, captions, tmp_path, capsys)
        shutil.rmtree(folder)
    folder = _copy(bundle, tmp_path)  # a listed file that is a symbolic link (to an identical copy outside)
    shutil.copyfile(folder / "vocab.txt", tmp_path / "vocab.txt")
    (folder / "vocab.txt").unlink()
    (folder / "vocab.txt").symlink_to(tmp_path / "vocab.txt")
    line = _embed_error(folder, captions, tmp_path, capsys)
    assert f"{folder / 'vocab.txt'}: a symbolic link inside the bundle" in line


# -- vclip-audit: honest thresholds, cache outside the corpus, special files, empty corpora ----------------
from cn_clip_ext.synth.generator import synfundus_example, write_eval_sets  # noqa: E402
from vclip_eval.audit import main as audit_main  # noqa: E402


@pytest.fixture(scope="module")
def audit_data(tmp_path_factory):
    """A 12-image corpus folder (plus a FIFO, an empty file and a device link named like images) and a FIVES set."""
    root = tmp_path_factory.mktemp("audit")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(12):
        synfundus_example(i, seed=11, size=128)[1].image.save(corpus / f"c{i:02d}.png")
    os.mkfifo(corpus / "fifo.png")
    (corpus / "empty.png").write_bytes(b"")
    (corpus / "device.png").symlink_to("/dev/zero")
    write_eval_sets(root / "eval", 8, seed=12, size=128, progress=False)
    return root, corpus


def _audit(root, corpus, out, *extra):
    return audit_main(["--corpus", str(corpus), "--data", f"fives={root / 'eval' / 'fives'}", "--out", str(out),
                       "--quiet", "--workers", "0", "--baseline-samples", "12", *extra])


def _tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_audit_skips_special_files_with_reasons_and_keeps_its_cache_out_of_the_corpus(audit_data, tmp_path):
    root, corpus = audit_data
    before = _tree(corpus)
    out = tmp_path / "audit"
    assert _audit(root, corpus, out) == 0
    assert _tree(corpus) == before  # nothing written inside the user's corpus
    assert list((out / "audit_cache").glob("v*/hashes.npy"))
    report = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    reasons = dict(report["skipped"]["corpus"])
    assert "is a FIFO, not a regular file" in reasons["fifo.png"]
    assert "empty file" in reasons["empty.png"] and "UnidentifiedImageError" not in reasons["empty.png"]
    assert "is a device, not a regular file" in reasons["device.png"]
    assert report["warnings"] == []  # the default thresholds separate this corpus's images
    assert not (out / "exclude.txt").read_text(encoding="utf-8").startswith("# UNRELIABLE")


def test_audit_says_when_its_thresholds_cannot_separate_copies(audit_data, tmp_path):
    root, corpus = audit_data
    out = tmp_path / "audit"
    assert _audit(root, corpus, out, "--max-hash-distance", "512", "--min-cosine", "-1") == 0
    report = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    assert len(report["warnings"]) == 2
    assert "hash threshold" in report["warnings"][0] and "embedding threshold" in report["warnings"][1]
    assert all("cannot separate copies" in w for w in report["warnings"])
    md = (out / "audit.md").read_text(encoding="utf-8").splitlines()
    assert md[0] == "# Leakage and memorisation audit" and md[2].startswith("> **Warning: unreliable thresholds.**")
    exclude = (out / "exclude.txt").read_text(encoding="utf-8").splitlines()
    assert exclude[0].startswith("# UNRELIABLE: 100% of") and exclude[1].startswith("# UNRELIABLE: ")


def test_audit_refuses_a_cache_inside_the_corpus_and_an_empty_lmdb(audit_data, tmp_path, capsys):
    root, corpus = audit_data
    assert _audit(root, corpus, tmp_path / "a", "--cache-dir", str(corpus / "cache")) == 2
    assert "the audit cache would be inside the corpus" in one_line_error(capsys)
    assert not (corpus / "cache").exists()
    import lmdb

    split = tmp_path / "lmdb" / "train"
    (split / "imgs").mkdir(parents=True)
    env = lmdb.open(str(split / "imgs"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"num_images", b"0")
    env.close()
    assert _audit(root, tmp_path / "lmdb", tmp_path / "b") == 2
    assert "the corpus holds 0 images" in one_line_error(capsys)
    assert not (tmp_path / "b").exists()
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"not a png")
    assert _audit(root, unreadable, tmp_path / "c", "--no-cache") == 2
    assert "none of the corpus's 1 images is readable" in one_line_error(capsys)


def test_audit_replaces_only_its_own_earlier_report(audit_data, tmp_path, capsys):
    root, corpus = audit_data
    out = tmp_path / "audit"
    assert _audit(root, corpus, out, "--no-embedding") == 0
    first = json.loads((out / ".vclip-owner.json").read_text(encoding="utf-8"))
    assert first["kind"] == "audit-report" and "audit.json" in first["files"]
    assert _audit(root, corpus, out, "--no-embedding") == 0  # its own earlier run: replaced
    assert json.loads((out / "audit.json").read_text(encoding="utf-8"))["encoder"] is None
    foreign = tmp_path / "someone"
    foreign.mkdir()
    (foreign / "audit.json").write_text('{"mine": true}', encoding="utf-8")
    assert _audit(root, corpus, foreign, "--no-embedding") == 2
    assert "output of another run that no manifest" in one_line_error(capsys)
    assert (foreign / "audit.json").read_text(encoding="utf-8") == '{"mine": true}'
    a_file = tmp_path / "file"
    a_file.write_text("x", encoding="utf-8")
    assert _audit(root, corpus, a_file, "--no-embedding") == 2
    assert "exists and is not a folder" in one_line_error(capsys)


# -- vclip-embed: special files, empty inputs, masks, its own outputs only -------------------------------
@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i in range(3):
        synfundus_example(i, seed=4, size=120)[1].image.save(folder / f"p{i}.png")
    os.mkfifo(folder / "fifo.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "device.png").symlink_to("/dev/zero")
    return folder


def _embed(bundle: Path, source: Path, out: Path, *extra) -> int:
    return embed_main(["--model", str(bundle), "--images", str(source), "--out", str(out), "--workers", "0",
                       "--quiet", *extra])


def _csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_embed_reports_special_and_empty_files_without_opening_them(bundle, photo_dir, tmp_path):
    out = tmp_path / "emb"
    assert _embed(bundle, photo_dir, out) == 0
    assert [r["path"] for r in _csv_rows(out / "index.csv")] == ["p0.png", "p1.png", "p2.png"]
    reasons = {Path(r["path"]).name: r["reason"] for r in _csv_rows(out / "skipped.csv")}
    assert "is a FIFO, not a regular file" in reasons["fifo.png"]
    assert "is a device, not a regular file" in reasons["device.png"]
    assert reasons["empty.png"].endswith("empty.png: empty file")


def test_embed_size_limit_is_applied_before_reading(bundle, photo_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(photo_dir.glob("p*.png")):
        shutil.copyfile(p, photos / p.name)  # 16-18 KB each
    assert _embed(bundle, photos, tmp_path / "e", "--max-image-mb", "0.001") == 2
    line = one_line_error(capsys)
    assert "none of the 3 images is readable" in line and "bytes, above the limit of 1048" in line
    assert not (tmp_path / "e" / "embeddings.npy").exists()
    assert _embed(bundle, photos, tmp_path / "f", "--max-image-mb", "0.1") == 0
    assert len(_csv_rows(tmp_path / "f" / "index.csv")) == 3


def test_embed_on_a_fives_root_leaves_out_the_vessel_masks(bundle, tmp_path):
    write_eval_sets(tmp_path / "sets", 4, seed=3, size=96, progress=False)
    fives = tmp_path / "sets" / "fives"
    photos = sorted(p.relative_to(fives).as_posix() for p in fives.rglob("*.png") if "Ground truth" not in p.parts)
    masks = [p for p in fives.rglob("*.png") if "Ground truth" in p.parts]
    assert masks and photos  # the generated layout has both
    out = tmp_path / "emb"
    assert _embed(bundle, fives, out) == 0
    assert [r["path"] for r in _csv_rows(out / "index.csv")] == photos


def test_embed_empty_inputs_are_one_line(bundle, tmp_path, capsys):
    header_only = tmp_path / "h.csv"
    header_only.write_text("path,label\n", encoding="utf-8")
    assert _embed(bundle, header_only, tmp_path / "a") == 2
    assert "no rows under the header" in one_line_error(capsys)
    quote = tmp_path / "q.csv"
    quote.write_text('path,label\n"a.png,1\nb.png,2\n', encoding="utf-8")
    assert _embed(bundle, quote, tmp_path / "b") == 2
    assert f"{quote}: not a readable CSV file (unexpected end of data)" in one_line_error(capsys)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    (junk / "b.jpg").write_bytes(b"")
    assert _embed(bundle, junk, tmp_path / "c") == 2
    assert "none of the 2 images is readable" in one_line_error(capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c" / "embeddings.npy").exists()


def test_embed_replaces_only_its_own_earlier_outputs(bundle, photo_dir, captions, tmp_path, capsys):
    out = tmp_path / "emb"
    assert _embed(bundle, photo_dir, out) == 0
    assert (out / "skipped.csv").is_file()
    assert embed_main(["--model", str(bundle), "--captions", str(captions), "--out", str(out), "--quiet"]) == 0
    assert not (out / "skipped.csv").exists()  # the image run's file, listed in its manifest, is gone
    assert [r["text"] for r in _csv_rows(out / "index.csv")] == ["疑似青光眼。", "未见明显异常。"]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "embeddings.npy").write_bytes(b"a colleague's embeddings")
    assert embed_main(["--model", str(bundle), "--captions", str(captions), "--out", str(theirs), "--quiet"]) == 2
    assert "output of another run that no manifest" in one_line_error(capsys)
    assert (theirs / "embeddings.npy").read_bytes() == b"a colleague's embeddings"


# -- vclip-eval: honest reports, special files in the data, its own outputs only -------------------------
@pytest.fixture(scope="module")
def eval_sets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_sets")
    write_eval_sets(root, 8, seed=5, size=96, progress=False)
    return root


def _eval(out: Path, *argv) -> int:
    return eval_main([*argv, "--out", str(out), "--bootstrap", "20", "--workers", "0", "--batch-size", "8",
                      "--quiet"])


def test_eval_uses_the_recorded_preprocessing_and_records_the_checkpoint(ckpt, bundle, eval_sets, tmp_path):
    import csv

    out = tmp_path / "r"
    assert _eval(out, "--checkpoint", f"{ckpt}=ckpt", "--checkpoint", f"{bundle}=bundle", "--untrained", TINY,
                 "--data", f"fives={eval_sets / 'fives'}") == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    models = report["models"]
    assert models["ckpt"]["preprocess"] == "squash" and models["ckpt"]["preprocess_source"] == "recorded"
    assert models["ckpt"]["sha256"] == file_sha256(ckpt) and models["ckpt"]["step"] == 3
    assert models["ckpt"]["path"] == str(ckpt.resolve()) and models["ckpt"]["kind"] == "checkpoint"
    assert models["bundle"]["kind"] == "bundle" and models["bundle"]["sha256"] == file_sha256(ckpt)
    assert models["bundle"]["preprocess"] == "squash"
    assert models[f"{TINY} (untrained)"]["seed"] == 0 and models[f"{TINY} (untrained)"]["preprocess"] == "fov"
    assert report["results"]["ckpt"]["fives"]["model"] == models["ckpt"]  # every row says where it came from
    table = (out / "table.md").read_text(encoding="utf-8")
    n = report["results"]["ckpt"]["fives"]["n_images"]
    assert table.count(f", n={n})") == 3
    with open(out / "predictions__ckpt__fives.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n and all(r["file_name"] == Path(r["image"]).name for r in rows)
    probs = [[float(v) for k, v in r.items() if k.startswith("p_")] for r in rows]
    assert all(abs(sum(p) - 1) < 1e-6 for p in probs)
    assert any(len(v.split(".")[-1]) > 5 for r in rows for k, v in r.items() if k.startswith("p_"))
    forced = tmp_path / "forced"
    assert _eval(forced, "--checkpoint", f"{ckpt}=ckpt", "--preprocess", "fov", "--data",
                 f"fives={eval_sets / 'fives'}") == 0
    forced_models = json.loads((forced / "report.json").read_text(encoding="utf-8"))["models"]
    assert forced_models["ckpt"]["preprocess"] == "fov" and forced_models["ckpt"]["preprocess_source"] == "--preprocess"


def test_a_second_evaluation_replaces_only_the_first_ones_files(eval_sets, tmp_path, capsys):
    out = tmp_path / "r"
    assert _eval(out, "--untrained", TINY, "--data", f"fives={eval_sets / 'fives'}", "--data",
                 f"refuge={eval_sets / 'refuge'}") == 0
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert (out / f"predictions__{TINY.replace('@', '_')}_untrained__refuge.csv").is_file()
    assert _eval(out, "--untrained", TINY, "--data", f"fives={eval_sets / 'fives'}") == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == sorted(["report.json", "table.md", "notes.txt",
                            f"predictions__{TINY.replace('@', '_')}_untrained__fives.csv",
                            f"confusion__{TINY.replace('@', '_')}_untrained__fives.png"])
    assert set(json.loads((out / "report.json").read_text(encoding="utf-8"))["results"][f"{TINY} (untrained)"]) == \
        {"fives"}
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "report.json").write_text('{"results": {}}', encoding="utf-8")
    assert _eval(theirs, "--untrained", TINY, "--data", f"fives={eval_sets / 'fives'}") == 2
    assert "output of another run that no manifest" in one_line_error(capsys)
    assert (theirs / "report.json").read_text(encoding="utf-8") == '{"results": {}}'


@pytest.mark.parametrize("kind, message", [("fifo", "image is a FIFO, not a regular file"),
                                           ("empty", "empty file"), ("device", "image is a device")])
def test_a_special_or_empty_file_in_an_evaluation_set_is_one_line(eval_sets, tmp_path, capsys, kind, message):
    fives = tmp_path / "fives"
    shutil.copytree(eval_sets / "fives", fives)
    bad = fives / "train" / "Original" / "999_A.png"
    {"fifo": lambda: os.mkfifo(bad), "empty": lambda: bad.write_bytes(b""),
     "device": lambda: bad.symlink_to("/dev/zero")}[kind]()
    assert _eval(tmp_path / "r", "--untrained", TINY, "--data", f"fives={fives}") == 2
    line = one_line_error(capsys)
    assert f"{bad}: {message}" in line and "UnidentifiedImageError" not in line
    assert not (tmp_path / "r" / "report.json").exists()


# -- vclip-export: --force removes only a bundle, --report must come from this checkpoint ----------------
def test_export_force_replaces_only_a_bundle(ckpt, tmp_path, capsys):
    out = tmp_path / "b"
    assert export_main([str(ckpt), str(out), "--no-prompts"]) == 0
    assert export_main([str(ckpt), str(out), "--no-prompts", "--force"]) == 0  # its own bundle: replaced
    (out / "my_notes.txt").write_text("mine", encoding="utf-8")
    assert export_main([str(ckpt), str(out), "--no-prompts", "--force"]) == 2
    assert f"{out / 'my_notes.txt'}: not part of the bundle" in one_line_error(capsys)
    assert (out / "my_notes.txt").read_text(encoding="utf-8") == "mine" and (out / "config.json").is_file()
    home = tmp_path / "home"
    (home / "thesis").mkdir(parents=True)
    (home / "thesis" / "chapter1.tex").write_text("years of work", encoding="utf-8")
    (home / "config.json").write_text("{}", encoding="utf-8")
    assert export_main([str(ckpt), str(home), "--no-prompts", "--force"]) == 2
    assert "not a bundle written by vclip-export" in one_line_error(capsys)
    assert (home / "thesis" / "chapter1.tex").read_text(encoding="utf-8") == "years of work"
    a_file = tmp_path / "file"
    a_file.write_text("x", encoding="utf-8")
    assert export_main([str(ckpt), str(a_file), "--no-prompts", "--force"]) == 2
    assert "exists and is not a folder" in one_line_error(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_main([str(ckpt), str(empty), "--no-prompts", "--force"]) == 0
    assert (empty / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_export_refuses_a_report_made_from_another_checkpoint(ckpt, eval_sets, tmp_path, capsys, caplog):
    other = make_checkpoint(tmp_path / "other.pt", seed=5)
    report = tmp_path / "r"
    assert _eval(report, "--checkpoint", str(other), "--data", f"fives={eval_sets / 'fives'}") == 0
    assert export_main([str(ckpt), str(tmp_path / "b1"), "--no-prompts", "--report",
                        str(report / "report.json")]) == 2
    line = one_line_error(capsys)
    assert "report.json: made from another checkpoint" in line and "--force-report" in line
    assert not (tmp_path / "b1").exists()
    with caplog.at_level("WARNING"):
        assert export_main([str(ckpt), str(tmp_path / "b2"), "--no-prompts", "--report", str(report / "report.json"),
                            "--force-report"]) == 0
    assert "included because of --force-report" in caplog.text
    assert export_main([str(other), str(tmp_path / "b3"), "--no-prompts", "--report",
                        str(report / "report.json")]) == 0
    assert (tmp_path / "b3" / "eval_report.json").is_file()


# -- empty results, help texts ------------------------------------------------------------------------------
def test_eval_csv_dataset_header_only_or_unterminated_quote_is_one_line(eval_sets, tmp_path, capsys):
    table = tmp_path / "table.yaml"
    table.write_text("mine:\n  reader: csv\n  path: labels.csv\n  classes: {0: normal, 1: glaucoma}\n",
                     encoding="utf-8")
    root = tmp_path / "mine"
    root.mkdir()
    (root / "labels.csv").write_text("image,label\n", encoding="utf-8")
    argv = ["--untrained", TINY, "--datasets-table", str(table), "--data", f"mine={root}"]
    assert _eval(tmp_path / "r", *argv) == 2
    assert f"{root}: no images found for dataset 'mine'" in one_line_error(capsys)
    (root / "labels.csv").write_text('image,label\n"a.png,0\nb.png,1\n', encoding="utf-8")
    assert _eval(tmp_path / "r", *argv) == 2
    assert f"{root / 'labels.csv'}: not a readable CSV table (unexpected end of data" in one_line_error(capsys)
    (root / "labels.csv").unlink()
    os.mkfifo(root / "labels.csv")
    assert _eval(tmp_path / "r", *argv) == 2
    assert "table is a FIFO, not a regular file" in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("module", ["vclip_eval.evaluate", "vclip_eval.audit", "vclip_export.export",
                                    "vclip_export.embed"])
def test_help_shows_no_doubled_percent_and_no_doubled_default(module, capsys):
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text and "%%" not in text and "%(" not in text
    flat = " ".join(text.split())
    for option in re.findall(r"\s(--[a-z][a-z-]+)", text):
        entry = flat.split(f" {option} ", 1)[-1].split(" --", 1)[0]
        assert entry.count("(default") <= 1, (option, entry)


# -- OS errors a user can cause: one line with the path and what to do ------------------------------------
def _disk_full(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_and_a_file_in_the_way_are_one_line(bundle, ckpt, captions, eval_sets, tmp_path, capsys,
                                                     monkeypatch):
    import numpy as np

    import cn_clip_ext.evaluation.report as report

    a_file = tmp_path / "file"
    a_file.write_text("x", encoding="utf-8")
    assert _eval(a_file, "--untrained", TINY, "--data", f"fives={eval_sets / 'fives'}") == 2
    assert f"{a_file}: exists and is not a folder" in one_line_error(capsys)
    assert embed_main(["--model", str(bundle), "--captions", str(captions), "--out", str(a_file / "sub"),
                       "--quiet"]) == 2
    assert str(a_file) in one_line_error(capsys)
    with monkeypatch.context() as m:
        m.setattr(np, "save", _disk_full)
        assert embed_main(["--model", str(bundle), "--captions", str(captions), "--out", str(tmp_path / "e"),
                           "--quiet"]) == 2
    line = one_line_error(capsys)
    assert "disk full (no space left on device) while writing the embedding folder; free some space" in line
    assert not [p for p in (tmp_path / "e").iterdir() if p.name.startswith(".staging")]
    with monkeypatch.context() as m:
        m.setattr(report, "_atomic_write_text", _disk_full)
        assert _eval(tmp_path / "r", "--untrained", TINY, "--data", f"fives={eval_sets / 'fives'}") == 2
    assert "disk full" in one_line_error(capsys) and not (tmp_path / "r" / "report.json").exists()
    import safetensors.torch

    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", _disk_full)
        assert export_main([str(ckpt), str(tmp_path / "b"), "--no-prompts"]) == 2
    assert f"{tmp_path / 'b'}: disk full" in one_line_error(capsys) and not (tmp_path / "b").exists()
