"""Optional dependencies: each command that needs an extra says which one in one line when it is missing.

Absence is simulated in-process: ``sys.modules[name] = None`` (for the package and every submodule already
imported) makes ``import name`` fail as it does when the package is not installed. The core-only install
in a fresh virtual environment (tests/test_install.py) checks a real absence.
"""
import ast
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import cn_clip_ext as vc
from cn_clip_ext import extras
from cn_clip_ext.errors import UserError
from cn_clip_ext.extras import MissingExtraError, optional, require
from cn_clip_ext.synth.generator import synfundus_example
from cn_clip_ext.training.checkpoint import atomic_save

ROOT = Path(__file__).resolve().parents[1]
EXTRA_ONLY = ("sklearn", "xlrd", "openpyxl", "onnx", "onnxruntime", "tokenizers", "imagehash", "faiss", "matplotlib",
              "tensorboard", "transformers", "open_clip", "torch.utils.tensorboard")
"""Import names whose packages only an extra installs (``torch.utils.tensorboard`` needs tensorboard)."""


def block(monkeypatch, *names: str) -> None:
    """Make ``import NAME`` (and its submodules) fail as for a package that is not installed."""
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.setitem(sys.modules, loaded, None)
        monkeypatch.setitem(sys.modules, name, None)


def one_line(capsys, extra: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.endswith(f"pip install 'visionclip-cn[{extra}]'"), err
    return err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("extras") / "latest.pt"
    model = vc.create_model(vc.VISIONCLIP_TINY, seed=0)
    atomic_save({"epoch": 0, "step": 1, "state_dict": model.state_dict(),
                 "config": {"model": vc.VISIONCLIP_TINY, "preprocess": "fov", "context_length": 52}}, path)
    return path


def test_pyproject_extras_are_the_helpers_extras():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = project["optional-dependencies"]

    def names(specs):
        return tuple(re.split(r"[<>=!~;\[ ]", s, maxsplit=1)[0] for s in specs)

    assert {k: names(v) for k, v in declared.items() if k not in ("all", "test")} == dict(extras.EXTRAS)
    assert declared["all"] == [f"visionclip-cn[{','.join(extras.EXTRAS)}]"]
    assert "visionclip-cn[all]" in declared["test"]
    core = names(project["dependencies"])
    assert not set(core) & {d for ds in extras.EXTRAS.values() for d in ds}  # no extra leaks into the core
    assert {"torch", "safetensors", "opencv-python-headless", "lmdb", "pyyaml", "pillow", "numpy"} <= set(core)


def _extra_imports() -> set[tuple[str, str]]:
    found = set()
    for path in [*(ROOT / "cn_clip_ext").rglob("*.py"), *(ROOT / d for d in ("data_prep", "eval", "export", "train"))]:
        for file in ([path] if path.is_file() else path.rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
                for mod in mods:
                    if any(mod == n or mod.startswith(n + ".") for n in EXTRA_ONLY):
                        found.add((file.relative_to(ROOT).as_posix(), mod))
    return found


def test_every_extra_only_import_goes_through_the_helper():
    # The only plain imports left are submodules of a package that require()/optional() imported just before.
    assert _extra_imports() == {("cn_clip_ext/audit/report.py", "matplotlib.pyplot"),
                                ("cn_clip_ext/training/recorder.py", "matplotlib.pyplot"),
                                ("cn_clip_ext/training/recorder.py", "torch.utils.tensorboard")}


def test_require_names_the_extra_and_is_a_user_error(monkeypatch):
    block(monkeypatch, "sklearn")
    with pytest.raises(MissingExtraError) as info:
        require("sklearn.linear_model", extra="eval", purpose="the linear probe")
    assert str(info.value) == ("the linear probe needs scikit-learn, which is not installed: "
                               "pip install 'visionclip-cn[eval]'")
    assert isinstance(info.value, UserError) and isinstance(info.value, ImportError)
    with pytest.raises(ValueError, match="not part of the 'audit' extra"):
        require("sklearn", extra="audit")
    with pytest.raises(ValueError, match="unknown extra"):
        require("sklearn", extra="evaluation")


def test_an_installed_but_broken_package_is_one_line_too(monkeypatch, tmp_path):
    (tmp_path / "open_clip").mkdir()
    (tmp_path / "open_clip" / "__init__.py").write_text("import a_dependency_that_is_gone\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    with pytest.raises(MissingExtraError) as info:
        require("open_clip", extra="open_clip", purpose="the open_clip baselines")
    message = str(info.value)
    assert "open-clip-torch, which is installed but does not import (No module named 'a_dependency_that_is_gone')" \
        in message and message.endswith("pip install 'visionclip-cn[open_clip]'") and "\n" not in message
    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    block(monkeypatch, "open_clip")
    with pytest.raises(MissingExtraError, match=r"needs open-clip-torch, which is not installed: .*\[open_clip\]'$"):
        require("open_clip", extra="open_clip", purpose="the open_clip baselines")


def test_vclip_eval_probe_without_eval_extra(monkeypatch, capsys, ckpt, tmp_path):
    from vclip_eval.evaluate import main

    block(monkeypatch, "sklearn")
    code = main(["--checkpoint", str(ckpt), "--data", f"fives={tmp_path}", "--probe", "linear",
                 "--out", str(tmp_path / "r")])
    assert code == 2
    assert "--probe needs scikit-learn, which is not installed" in one_line(capsys, "eval")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("suffix, module, dist", [(".xls", "xlrd", "xlrd"), (".xlsx", "openpyxl", "openpyxl")])
def test_label_sheets_without_eval_extra(monkeypatch, tmp_path, suffix, module, dist):
    from cn_clip_ext.evaluation.sheets import read_sheet

    path = tmp_path / f"Annotation_Base11{suffix}"
    path.write_bytes(b"not read")
    block(monkeypatch, module)
    with pytest.raises(MissingExtraError) as info:
        read_sheet(path)
    assert str(info.value) == (f"{path}: reading {suffix} files needs {dist}, which is not installed: "
                               "pip install 'visionclip-cn[eval]'")


@pytest.mark.parametrize("module, args", [("tokenizers", []), ("onnx", ["--onnx"]), ("onnxruntime", ["--onnx"])])
def test_vclip_export_without_export_extra(monkeypatch, capsys, ckpt, tmp_path, module, args):
    from vclip_export.export import main

    block(monkeypatch, module)
    assert main([str(ckpt), str(tmp_path / "bundle"), "--no-prompts", *args]) == 2
    err = one_line(capsys, "export")
    assert f"needs {module}, which is not installed" in err
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary folder


@pytest.mark.parametrize("module", ["imagehash", "matplotlib"])
def test_vclip_audit_without_audit_extra(monkeypatch, capsys, tmp_path, module):
    from vclip_eval.audit import main

    (tmp_path / "corpus").mkdir()
    synfundus_example(0, seed=1, size=96)[1].image.save(tmp_path / "corpus" / "a.png")
    block(monkeypatch, module)
    assert main(["--corpus", str(tmp_path / "corpus"), "--data", f"fives={tmp_path}", "--out",
                 str(tmp_path / "audit")]) == 2
    assert f"vclip-audit needs {module}, which is not installed" in one_line(capsys, "audit")
    assert not (tmp_path / "audit").exists()


def test_audit_hashing_and_plot_without_audit_extra(monkeypatch):
    from cn_clip_ext.audit.hashing import perceptual_hash
    from cn_clip_ext.audit.report import plot_distributions

    image = synfundus_example(0, seed=1, size=96)[1].image
    code = perceptual_hash(image)
    block(monkeypatch, "imagehash", "matplotlib")
    with pytest.raises(MissingExtraError, match=r"perceptual hashing needs imagehash.*\[audit\]'$"):
        perceptual_hash(image)
    with pytest.raises(MissingExtraError, match=r"distribution plot needs matplotlib.*\[audit\]'$"):
        plot_distributions(None, Path("unused.png"))
    monkeypatch.undo()
    assert np.array_equal(perceptual_hash(image), code)


def test_faiss_is_optional_with_a_hint(monkeypatch, caplog):
    block(monkeypatch, "faiss")
    with caplog.at_level(logging.WARNING, logger="cn_clip_ext.extras"):
        assert optional("faiss", extra="audit", skipped="nearest-neighbour search falls back to numpy") is None
    (record,) = caplog.records
    assert record.getMessage() == ("faiss-cpu is not installed: nearest-neighbour search falls back to numpy "
                                   "(pip install 'visionclip-cn[audit]')")


def test_training_records_without_train_extra(monkeypatch, caplog, tmp_path):
    from cn_clip_ext.training.recorder import Recorder

    block(monkeypatch, "tensorboard", "torch.utils.tensorboard", "matplotlib")
    with caplog.at_level(logging.WARNING, logger="cn_clip_ext.extras"):
        rec = Recorder(tmp_path / "run", enabled=True)
        rec.log(1, 0, "train", {"loss": 1.5})
        assert rec.plot() is None
        rec.close()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "tensorboard is not installed: no TensorBoard scalars (metrics.csv is written) "
        "(pip install 'visionclip-cn[train]')",
        "matplotlib is not installed: no curve PNG (metrics.csv has the numbers) (pip install 'visionclip-cn[train]')"]
    assert (tmp_path / "run" / "metrics.csv").read_text(encoding="utf-8").splitlines()[1].startswith("1,0,train,loss")
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_fast_tokenizer_without_its_extra(monkeypatch):
    from cn_clip_ext.model import tokenizer as tok

    tok._fast_tokenizer.cache_clear()
    monkeypatch.setattr(tok, "_fast_tokenizer", tok._fast_tokenizer.__wrapped__)
    block(monkeypatch, "transformers")
    with pytest.raises(MissingExtraError) as info:
        vc.get_tokenizer(vc.VISIONCLIP_TINY, backend="fast")(["疑似青光眼。"])
    assert str(info.value) == ('backend="fast" needs transformers, which is not installed: '
                               "pip install 'visionclip-cn[fast-tokenizer]'")
    assert vc.get_tokenizer(vc.VISIONCLIP_TINY)(["疑似青光眼。"]).shape == (1, 52)  # the default needs no extra
