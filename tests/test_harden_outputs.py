"""Careless and hostile input to the output-side commands (vclip-eval, vclip-audit, vclip-export,
vclip-embed): structured-file bombs, special files where images should be, damaged or lying bundles,
outputs that would overwrite what a command did not write, and OS errors, each one line and no traceback."""
import json
import os
import subprocess
import sys
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
