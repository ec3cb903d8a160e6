"""The core install on its own: a wheel of this project in a fresh virtual environment, without any extra.

The environment gets exactly the core's dependency closure (torch reused from this environment, as a GPU
node's own torch is) and cn_clip, which set-up installs on its own with --no-deps; pip then installs the
locally built wheel with --no-index, so nothing is downloaded. In it: a bundle loads, an image embeds,
``vclip-embed`` runs, the extra-only packages are absent and the commands that need them say which extra
to install in one line. The wheel's metadata states the real floors.
"""
import email
import os
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import cn_clip_ext as vc
from cn_clip_ext.extras import EXTRAS
from cn_clip_ext.synth.generator import synfundus_example
from bundle_support import write_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ("vclip-synth", "vclip-build-lmdb", "vclip-train", "vclip-eval", "vclip-audit", "vclip-export",
            "vclip-embed")


def _pip_usable() -> str | None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    return None if proc.returncode == 0 else f"pip is not usable here: {proc.stderr.strip()[:200]}"


pytestmark = pytest.mark.skipif(_pip_usable() is not None, reason=str(_pip_usable()))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("visionclip_cn-*.whl")
    return path


def wheel_metadata(path: Path) -> email.message.Message:
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(zf.read(name))


def test_wheel_metadata_states_the_real_floors(wheel):
    meta = wheel_metadata(wheel)
    assert meta["Name"] == "visionclip-cn" and meta["Version"] == vc.__version__
    assert meta["Requires-Python"] == ">=3.10"
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    core = {canonicalize_name(r.name): str(r.specifier) for r in reqs if r.marker is None}
    assert core["torch"] == ">=2.3" and core["lmdb"] == ">=1.4" and "cn-clip" not in core
    assert set(meta.get_all("Provides-Extra")) == {canonicalize_name(e) for e in (*EXTRAS, "all", "test")}
    for extra, dists in EXTRAS.items():
        got = {canonicalize_name(r.name) for r in reqs if r.marker and r.marker.evaluate({"extra": extra})}
        assert got == {canonicalize_name(d) for d in dists}, extra
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3.10" in classifiers
    assert "Programming Language :: Python :: 3.9" not in classifiers
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for program in PROGRAMS:
        assert f"{program} = " in entry_points
    for data in ("cn_clip_ext/model/model_configs/RN-tiny.json", "cn_clip_ext/evaluation/resources/datasets.yaml",
                 "cn_clip_ext/evaluation/resources/prompts/plain.yaml", "vclip_export/embed.py",
                 "vclip_eval/evaluate.py", "vclip_data_prep/build_lmdb.py", "vclip_train/train.py"):
        assert data in names, data


def _closure(names: list[str]) -> set[str]:
    """The installed distributions ``names`` need here, following their requirements and markers."""
    seen: set[str] = set()
    todo = [(n, frozenset()) for n in names]
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        for text in metadata.distribution(name).requires or []:
            req = Requirement(text)
            env = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(e) for e in env):
                todo.append((req.name, frozenset(req.extras)))
    return {k for k, _ in seen}


def _expose(dists: set[str], folder: Path) -> None:
    """Link the files of ``dists`` (from this environment's site-packages) into ``folder``."""
    folder.mkdir()
    for name in sorted(dists):
        dist = metadata.distribution(name)
        base = Path(dist.locate_file(""))
        for top in sorted({f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}):
            if not (folder / top).exists() and (base / top).exists():
                (folder / top).symlink_to(base / top)


@pytest.fixture(scope="module")
def core_env(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("core_env")
    env = root / "venv"
    venv.create(env, with_pip=False, symlinks=True)
    site = next((env / "lib").glob("python3*/site-packages"))
    meta = wheel_metadata(wheel)
    core = [Requirement(r).name for r in meta.get_all("Requires-Dist") if Requirement(r).marker is None]
    _expose(_closure(core) | {"cn-clip"}, root / "from_env")  # cn_clip alone: set-up installs it with --no-deps
    (site / "from-this-environment.pth").write_text(str(root / "from_env") + "\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "-q",
                           "--no-index", "--no-build-isolation", "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR" not in proc.stderr, proc.stderr[-3000:]
    return env


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("core_bundle")
    write_tiny_bundle(root, seed=4, step=2)
    (root / "photos").mkdir()
    for i in range(3):
        synfundus_example(i, seed=6, size=150)[1].image.save(root / "photos" / f"{i}.png")
    return root


def _run(env: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**clean, "PATH": f"{env / 'bin'}:{clean.get('PATH', '')}"})


CORE_SCRIPT = r"""
import importlib.util, json, sys
import numpy as np
from PIL import Image
import cn_clip_ext, cn_clip_ext as vc
absent = [m for m in ("sklearn", "onnx", "onnxruntime", "tokenizers", "transformers", "imagehash", "faiss",
                      "matplotlib", "tensorboard", "xlrd", "openpyxl", "open_clip", "timm", "pandas", "pytest")
          if importlib.util.find_spec(m) is not None]
model, preprocess, tokenizer = vc.load_pretrained("bundle")
image = model.encode_image(preprocess(Image.open("photos/0.png"))[None])
text = model.encode_text(["疑似青光眼。", "未见明显异常。"])
print(json.dumps({"present": absent, "library": cn_clip_ext.__file__, "image": image.tolist(),
                  "text_shape": list(text.shape)}))
"""


def test_core_alone_loads_a_bundle_and_embeds(core_env, bundle):
    import json

    import numpy as np

    proc = _run(core_env, str(core_env / "bin" / "python"), "-c", CORE_SCRIPT, cwd=bundle)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["present"] == []  # no extra-only package, nor a test tool, is importable there
    assert str(core_env) in out["library"] and str(ROOT) not in out["library"]  # the wheel, not this checkout
    model, preprocess, _ = vc.load_pretrained(bundle / "bundle")
    from PIL import Image

    expected = model.encode_image(preprocess(Image.open(bundle / "photos" / "0.png"))[None]).numpy()
    assert np.allclose(np.array(out["image"]), expected, atol=1e-5) and out["text_shape"] == [2, 128]

    proc = _run(core_env, "vclip-embed", "--model", "bundle", "--images", "photos", "--out", "emb", "--quiet",
                "--device", "cpu", "--workers", "0", cwd=bundle)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.load(bundle / "emb" / "embeddings.npy").shape == (3, 128)
    assert "ERROR" not in proc.stderr and "Traceback" not in proc.stderr


def test_core_alone_generates_data_and_evaluates_zero_shot(core_env, bundle):
    import json

    proc = _run(core_env, "vclip-synth", "synth", "--no-corpus", "--n-eval", "12", "--size", "96", "--no-progress",
                cwd=bundle)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run(core_env, "vclip-eval", "--checkpoint", "bundle=tiny", "--data-root", "synth", "--out", "zero_shot",
                "--bootstrap", "10", "--workers", "0", "--device", "cpu", "--quiet", cwd=bundle)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((bundle / "zero_shot" / "report.json").read_text(encoding="utf-8"))["results"]["tiny"]
    assert set(results) == {"messidor2", "fives", "refuge"}
    assert all(r["n_images"] > 0 and 0 <= r["metrics"]["balanced_accuracy"] <= 1 for r in results.values())


@pytest.mark.parametrize("extra, args", [
    ("export", ["vclip-export", "latest.pt", "exported"]),
    ("eval", ["vclip-eval", "--checkpoint", "latest.pt", "--data", "fives=photos", "--probe", "linear",
              "--out", "report"]),
    ("audit", ["vclip-audit", "--corpus", "photos", "--data", "fives=photos", "--out", "audit"]),
])
def test_core_alone_names_the_missing_extra(core_env, bundle, extra, args):
    proc = _run(core_env, *args, cwd=bundle)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert err[0].endswith(f"which is not installed: pip install 'visionclip-cn[{extra}]'"), err
    assert not (bundle / args[-1]).exists()
