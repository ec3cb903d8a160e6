"""Model bundles: a folder a downstream team can load without our training stack.

Layout::

    model.safetensors    weights (no pickle), fp32 or fp16, of the exported towers
    config.json          architecture, tower configs, preprocessing, hashes of every other file
    vocab.txt            the tokenizer vocabulary (cn_clip's)
    tokenizer.json       the same tokenizer for Hugging Face tokenizers/transformers (identical ids), with
    tokenizer_config.json, special_tokens_map.json   what AutoTokenizer.from_pretrained(folder) reads
    preprocessing.json   the image preprocessing as data (field-of-view crop, pad, resize, mean/std)
    prompts/*.yaml       the prompt sets used for evaluation
    eval_report.json     the evaluation report, when one was given
    image_encoder.onnx   optional ONNX encoders (dynamic batch, normalised outputs)
    text_encoder.onnx
    README.md            the model card (Hugging Face model-card front matter)

``config.json`` records a format version and the SHA-256 of every other file, so a missing,
truncated or swapped file is refused with a one-line :class:`~cn_clip_ext.errors.UserError`.
A bundle is written into a temporary sibling folder and renamed into place, so a failed export
never leaves a half-written bundle.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import string
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from ..errors import UserError, excerpt, first_line
from .factory import ModelConfig
from ..files import check_input_file, read_structured
from ..outputs import write_failure
from .tokenizer import save_fast_tokenizer, vocab_path, vocab_sha256
from .transforms import CLIP_MEAN, CLIP_STD, PREPROCESS_MODES, preprocessing_spec
from .tripartite import LOGIT_SCALES, SINGLE_EYE_HEADS, TripartiteCLIP
from .weights import is_pooler

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "visionclip-bundle"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
CARD_FILE = "README.md"
REPORT_FILE = "eval_report.json"
PROMPTS_DIR = "prompts"
PREPROCESSING_FILE = "preprocessing.json"
ONNX_FILES = {"image": "image_encoder.onnx", "text": "text_encoder.onnx"}
TOWERS = ("image", "text")
_TOWER_PREFIXES = {  # RET-CLIP's image-side heads map image features, so they travel with the image tower
    "image": ("visual.", "global_feature_mapping.", "left_feature_mapping.", "right_feature_mapping."),
    "text": ("bert.", "text_projection"),
}
_SHARED_KEYS = LOGIT_SCALES
HEAD_KINDS = ("clip", "tripartite")
"""``config.json`` ``heads``: cn_clip's ``CLIP``, or RET-CLIP's three heads (:class:`TripartiteCLIP`)."""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a folder that looks like a bundle (has ``config.json``)."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


@dataclass(frozen=True)
class SourceInfo:
    """Where a bundle's weights came from."""

    checkpoint: str
    sha256: str
    step: int | None = None
    epoch: int | None = None


@dataclass(frozen=True)
class BundleConfig:
    """The parsed ``config.json`` of a bundle."""

    architecture: str
    embed_dim: int
    image_size: int
    context_length: int
    preprocess: str
    towers: tuple[str, ...]
    vision: Mapping[str, Any]
    text: Mapping[str, Any]
    vocab_sha256: str
    source: Mapping[str, Any]
    weights_dtype: str = "float32"
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    heads: str = "clip"  # one of HEAD_KINDS
    single_eye_head: str = "global"  # tripartite: the head single images and prompts use by default
    files: Mapping[str, str] = field(default_factory=dict)  # relative path -> sha256
    onnx: Mapping[str, Any] = field(default_factory=dict)
    format: str = BUNDLE_FORMAT
    format_version: int = FORMAT_VERSION

    def model_config(self) -> ModelConfig:
        """The :class:`ModelConfig` that rebuilds cn_clip's ``CLIP`` for these weights."""
        vision = dict(self.vision)
        if isinstance(vision.get("vision_layers"), list):
            vision["vision_layers"] = tuple(vision["vision_layers"])
        return ModelConfig(self.architecture, MappingProxyType(vision), MappingProxyType(dict(self.text)),
                           self.context_length)

    def to_json(self) -> str:
        data = asdict(self)
        data = {"format": data.pop("format"), "format_version": data.pop("format_version"), **data}
        return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> "BundleConfig":
        """Parse and validate ``config.json``; a one-line :class:`UserError` when it is not one."""
        if not path.is_file():
            raise UserError(f"{path}: not found; {path.parent} is not a VisionCLIP bundle")
        data = read_structured(path, "bundle config")
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
            raise UserError(f"{path}: not a VisionCLIP bundle config (format is not {BUNDLE_FORMAT!r})")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise UserError(f"{path}: bundle format version {excerpt(version)} is not supported "
                            f"(this cn_clip_ext reads 1..{FORMAT_VERSION}); upgrade cn_clip_ext")
        known = set(cls.__dataclass_fields__)
        try:
            kwargs = {k: v for k, v in data.items() if k in known}
            for key in ("towers", "mean", "std"):
                if key in kwargs:
                    kwargs[key] = tuple(kwargs[key])
            cfg = cls(**kwargs)
        except TypeError as exc:
            raise UserError(f"{path}: incomplete bundle config ({exc})") from None
        bad_towers = set(cfg.towers) - set(TOWERS)
        if not cfg.towers or bad_towers:
            raise UserError(f"{path}: towers must be a non-empty subset of {list(TOWERS)}, got {excerpt(list(cfg.towers))}")
        if cfg.preprocess not in PREPROCESS_MODES:
            raise UserError(f"{path}: unknown preprocess mode {excerpt(cfg.preprocess)}")
        if cfg.heads not in HEAD_KINDS or cfg.single_eye_head not in SINGLE_EYE_HEADS:
            raise UserError(f"{path}: unknown heads {excerpt(cfg.heads)} / single-eye head {excerpt(cfg.single_eye_head)} "
                            f"(expected one of {list(HEAD_KINDS)} / {sorted(SINGLE_EYE_HEADS)})")
        check_config(path, cfg)
        return cfg


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_config(path: Path, cfg: BundleConfig) -> None:
    """The values of ``config.json`` are possible and agree with each other: positive sizes, the
    image size and width that the vision tower has, a context length within the text tower's
    positions, and ``files`` entries that stay inside the bundle folder; else one line."""
    if not isinstance(cfg.architecture, str) or "@" not in cfg.architecture:
        raise UserError(f"{path}: architecture {excerpt(cfg.architecture)} is not a '<vision>@<text>' name")
    if not isinstance(cfg.vision, Mapping) or not isinstance(cfg.text, Mapping):
        raise UserError(f"{path}: 'vision' and 'text' must be the towers' config mappings")
    for name in ("embed_dim", "image_size", "context_length"):
        value = getattr(cfg, name)
        if not _positive_int(value):
            raise UserError(f"{path}: {name} must be a positive integer, got {excerpt(value)}")
    for key, own in (("image_resolution", "image_size"), ("embed_dim", "embed_dim")):
        tower = cfg.vision.get(key)
        if tower is not None and tower != getattr(cfg, own):
            raise UserError(f"{path}: {own} {getattr(cfg, own)} disagrees with the vision tower's {key} "
                            f"{excerpt(tower)}")
    positions = cfg.text.get("text_max_position_embeddings")
    if positions is not None and (not _positive_int(positions) or cfg.context_length > positions):
        raise UserError(f"{path}: context_length {cfg.context_length} exceeds the text tower's "
                        f"{excerpt(positions)} positions (text_max_position_embeddings)")
    if not isinstance(cfg.files, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in cfg.files.items()):
        raise UserError(f"{path}: 'files' must map relative paths to SHA-256 strings")
    for rel in cfg.files:
        reason = _unsafe_entry(rel)
        if reason:
            raise UserError(f"{path}: files entry {excerpt(rel)} {reason}; refused")


def _unsafe_entry(rel: str) -> str | None:
    """Why a ``files`` entry could point outside its bundle folder (``None`` when it cannot)."""
    from pathlib import PurePosixPath, PureWindowsPath

    if not rel or "\\" in rel or "\0" in rel:
        return "is not a plain relative path"
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        return "is an absolute path"
    if ".." in PurePosixPath(rel).parts:
        return "escapes the bundle folder through '..'"
    return None


def _hf_blob_link(folder: Path, link: Path) -> bool:
    """Whether ``link`` is a Hugging Face cache snapshot's link to a file of its own repository's ``blobs/``
    (``models--ORG--NAME/snapshots/<commit>/name -> ../../blobs/<hash>``), the one kind of link allowed."""
    if folder.parent.name != "snapshots":
        return False
    target = link.resolve()
    return target.parent == (folder.parent.parent / "blobs").resolve() and target.is_file()


def bundle_file(folder: Path, rel: str) -> Path:
    """``folder / rel`` after checking that it is a regular file inside ``folder``: no ``..``, no
    absolute path, no symbolic link on the way (a link could point anywhere; a Hugging Face cache
    snapshot's links into its repository's ``blobs/`` excepted), no FIFO or device."""
    reason = _unsafe_entry(rel)
    if reason:
        raise UserError(f"{folder / CONFIG_FILE}: files entry {excerpt(rel)} {reason}; refused")
    path = folder
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink() and not _hf_blob_link(folder, path):
            raise UserError(f"{path}: a symbolic link inside the bundle (it could point outside {folder}); "
                            "refused: copy the real file into the bundle")
    if not path.exists():
        raise UserError(f"{path}: missing from the bundle (config.json lists it)")
    check_input_file(path, "bundle file", None)
    return path


def tower_of(key: str) -> str | None:
    """``"image"``, ``"text"`` or ``None`` (shared, e.g. ``logit_scale``) for a CLIP state-dict key."""
    for tower, prefixes in _TOWER_PREFIXES.items():
        if key.startswith(prefixes):
            return tower
    return None


def tower_state_dict(model: torch.nn.Module, towers: Sequence[str] = TOWERS,
                     fp16: bool = False) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the weights of the chosen towers (plus ``logit_scale``)."""
    out = {}
    for key, value in model.state_dict().items():
        tower = tower_of(key)
        if is_pooler(key) or (tower is not None and tower not in towers):
            continue
        if tower is None and key not in _SHARED_KEYS:
            logger.debug("keeping unassigned key %s", key)
        value = value.detach().cpu()
        if fp16 and value.is_floating_point():
            value = value.half()
        out[key] = value.contiguous().clone()
    return out


# -- the model card ---------------------------------------------------------------------------------
CARD_FRONT_MATTER = {
    "license": "cc-by-nc-sa-4.0",
    "library_name": "visionclip-cn",
    "pipeline_tag": "zero-shot-image-classification",
    "language": ["zh"],
    "tags": ["clip", "chinese-clip", "retina", "fundus", "ophthalmology", "medical-imaging", "visionclip"],
    "datasets": ["SynFundus-1M"],
}
"""Hugging Face model-card metadata (the YAML block that opens the bundle's ``README.md``)."""


def _front_matter() -> str:
    lines = ["---"]
    for key, value in CARD_FRONT_MATTER.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {item}" for item in value]
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines + ["---", ""])


CARD_TEMPLATE = string.Template("""\
$front_matter
# VisionCLIP-CN model: $architecture

A Chinese retina language-image model (CLIP) from the VisionCLIP-CN project, exported as a
self-contained bundle. The model is cn_clip's `CLIP` class; this folder holds only weights and
configuration, and loading it never executes code from the files (`safetensors`, JSON, YAML).

| | |
|---|---|
| architecture | `$architecture` |
| towers in this bundle | $towers |
| embedding width | $embed_dim |
| image resolution | $image_size px, preprocessing `$preprocess` |
| normalisation | mean $mean, std $std |
| text | cn_clip's Chinese vocabulary (`vocab.txt`, sha256 `$vocab_short`), $context_length tokens |
| weights | `model.safetensors`, $weights_dtype |
| source checkpoint | `$source_name` (sha256 `$source_short`), step $source_step |
$heads_row$onnx_row
## Load it

```python
import cn_clip_ext as vc
model, preprocess, tokenizer = vc.load_pretrained("path/to/this/folder")
$usage
```

Embeddings are L2-normalised, $embed_dim wide; the cosine similarity of an image and a caption (a dot product)
scores how well they fit, and `model.logit_scale.exp()` is the learned temperature.

The tokenizer is also in `tokenizer.json` (Hugging Face `tokenizers`; the ids equal cn_clip's, `[CLS] ... [SEP]`
padded with 0 to $context_length): `transformers.AutoTokenizer.from_pretrained("path/to/this/folder")` or
`tokenizers.Tokenizer.from_file("tokenizer.json").encode(text).ids`.

## Preprocessing for servers without Python

`preprocessing.json` states the image preprocessing as data; following it in any language gives the
model's input to within one grey level. Mode `$preprocess`, $image_size px:

$preprocessing_steps

## Training data and licence

Trained from scratch on **SynFundus-1M**, a corpus of synthetic fundus photographs with Chinese diagnostic
captions, released under **CC BY-NC-SA 4.0 for research use only**. These weights are derived from that data
and inherit the restriction: non-commercial research use, with attribution, sharing derivatives under the same
licence. The VisionCLIP-CN code is MIT-licensed; that does not extend to these weights.

## Intended use

- Research on retinal image-text representation learning: zero-shot classification with Chinese prompts,
  retrieval, linear probes and feature extraction for fundus photographs.
- Benchmarking against other retina foundation models on public datasets.

Not intended for clinical use. It is not a medical device, has not been validated prospectively, and must not be
used to diagnose, screen or triage patients.

## Evaluation

$metrics

## Limitations

- Trained only on synthetic images: real photographs differ in camera, artefacts, illumination and disease
  appearance, and performance on them can be much lower than on synthetic data.
- Chinese captions only, truncated to $context_length tokens; English or mixed prompts are out of distribution.
- Zero-shot accuracy depends strongly on the prompt wording; the prompt sets used for evaluation are in
  `prompts/`.
- Colour fundus photographs only (no OCT, angiography or external eye images); images are preprocessed with
  mode `$preprocess`, and other preprocessing shifts the embeddings.
- Biases of the synthetic generator (class balance, lesion appearance) carry over to the model.

## Files

$files
""")


def _metrics_section(report: Mapping[str, Any] | None) -> str:
    if not report:
        return "No evaluation report was included with this export."
    results = report.get("results") if isinstance(report, Mapping) else None
    if not isinstance(results, Mapping) or not results:
        return "The included evaluation report (`eval_report.json`) has no results."
    cols = ("balanced_accuracy", "top1", "macro_f1", "macro_auc", "quadratic_kappa")
    lines = ["Zero-shot, from `eval_report.json` (bootstrap 95 % intervals are in the report):", "",
             "| model | dataset | images | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for label, per in results.items():
        if not isinstance(per, Mapping):
            continue
        for dataset, r in per.items():
            m = r.get("metrics", {}) if isinstance(r, Mapping) else {}
            cells = [f"{m[c]:.3f}" if isinstance(m.get(c), (int, float)) else "–" for c in cols]
            lines.append(f"| {label} | {dataset} | {r.get('n_images', '–')} | " + " | ".join(cells) + " |")
    meta = report.get("meta") or {}
    if meta:
        lines += ["", "Settings: " + ", ".join(f"{k} = {v}" for k, v in meta.items()) + "."]
    return "\n".join(lines)


def model_card(cfg: BundleConfig, report: Mapping[str, Any] | None = None) -> str:
    """The bundle's ``README.md`` text, filled from its config and evaluation report."""
    files = "\n".join(f"- `{name}` (sha256 `{digest[:16]}…`)" for name, digest in sorted(cfg.files.items())
                      if name != CARD_FILE)
    onnx = ""
    if cfg.onnx:
        diffs = ", ".join(f"{t} {d:.1e}" for t, d in cfg.onnx.get("max_abs_diff", {}).items())
        onnx = (f"| ONNX | {', '.join(f'`{ONNX_FILES[t]}`' for t in cfg.onnx.get('towers', []))}, opset "
                f"{cfg.onnx.get('opset')}, dynamic batch; max abs difference to PyTorch: {diffs} |\n")
    usage = []
    if "image" in cfg.towers:
        usage.append("image_emb = model.encode_image(preprocess(pil_image)[None])  # [1, D]")
    if "text" in cfg.towers:
        usage.append('text_emb = model.encode_text(tokenizer(["疑似青光眼。", "未见明显异常。"]))  # [2, D]')
    if len(cfg.towers) == 1:
        usage.append(f"# {cfg.towers[0]}-only bundle: the other encoder raises MissingTowerError")
    heads = ""
    if cfg.heads == "tripartite":
        heads = (f"| heads | RET-CLIP's three (patient, left eye, right eye); single images and prompts use the "
                 f"`{cfg.single_eye_head}` head (`model.clip.set_single_eye_head('left')` to change) |\n")
    spec = preprocessing_spec(cfg.image_size, cfg.preprocess)
    steps = list(spec["steps"])
    if "field_of_view" in spec:
        fov = spec["field_of_view"]
        steps.insert(1, f"   Field of view: a pixel belongs to it when {fov['test']} (threshold {fov['threshold']}); "
                        f"{fov['bounding_box']} (probe_size {fov['probe_size']}, min_fraction {fov['min_fraction']}).")
    steps.append(f"   mean = {list(cfg.mean)}, std = {list(cfg.std)}.")
    return CARD_TEMPLATE.substitute(
        front_matter=_front_matter(), preprocessing_steps="\n".join(steps),
        usage="\n".join(usage), heads_row=heads,
        architecture=cfg.architecture, towers=" and ".join(cfg.towers), embed_dim=cfg.embed_dim,
        image_size=cfg.image_size, preprocess=cfg.preprocess, mean=list(cfg.mean), std=list(cfg.std),
        vocab_short=cfg.vocab_sha256[:16], context_length=cfg.context_length, weights_dtype=cfg.weights_dtype,
        source_name=Path(str(cfg.source.get("checkpoint", "?"))).name,
        source_short=str(cfg.source.get("sha256", "?"))[:16], source_step=cfg.source.get("step", "?"),
        onnx_row=onnx, metrics=_metrics_section(report), files=files or "-")


# -- writing ----------------------------------------------------------------------------------------
def _read_report(path: Path) -> dict[str, Any]:
    data = read_structured(path, "evaluation report")
    if not isinstance(data, dict) or "results" not in data:
        raise UserError(f"{path}: not a vclip-eval report.json (no 'results' key)")
    return data


def _check_prompts(paths: Iterable[Path]) -> list[Path]:
    """Prompt files to copy: present, one per name (their content is checked by the exporter, which
    reads them as prompt sets; the model side does not import evaluation)."""
    paths = [Path(p) for p in paths]
    names = [p.name for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{dupes[0]}: two prompt files share this name")
    for p in paths:
        if not p.is_file():
            raise UserError(f"{p}: prompt file not found")
    return paths


def _hash_tree(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in (CONFIG_FILE, CARD_FILE):  # the card is hashed after it is written
            out[rel] = file_sha256(path)
    return out


def prove_bundle(folder: Path, flag: str = "--force") -> None:
    """One line unless ``folder`` may be replaced by a new bundle: it is absent, empty, or a bundle
    this toolkit wrote, proved by its own ``config.json`` and file list (every file in the folder is
    ``config.json`` or listed in it). A folder that holds anything else is never removed."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder; {flag} replaces only a bundle folder")
    entries = list(folder.rglob("*"))
    if not entries:
        return
    try:
        cfg = BundleConfig.from_file(folder / CONFIG_FILE)
    except UserError:
        raise UserError(f"{folder}: not a bundle written by vclip-export (no valid {CONFIG_FILE}); {flag} replaces "
                        "only a bundle: choose another folder or remove it yourself") from None
    listed = {CONFIG_FILE, *cfg.files}
    parents = {p.as_posix() for rel in listed for p in Path(rel).parents if p.as_posix() != "."}
    for path in sorted(entries):
        rel = path.relative_to(folder).as_posix()
        ours = rel in parents if path.is_dir() and not path.is_symlink() else rel in listed
        if not ours:
            raise UserError(f"{path}: not part of the bundle in {folder} (its {CONFIG_FILE} does not list it); "
                            f"{flag} removes only a bundle's own files: move it or choose another folder")


def _publish(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished temporary folder to ``out`` (replacing an old bundle with ``force``)."""
    old = None
    if out.exists():
        if not force:
            raise UserError(f"{out}: already exists (use --force to replace it)")
        prove_bundle(out)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


OnnxHook = Callable[[Path, Sequence[str]], Mapping[str, Any]]


def write_bundle(model: torch.nn.Module, out_dir: str | Path, *, source: SourceInfo, preprocess: str = "fov",
                 towers: Sequence[str] = TOWERS, fp16: bool = False, prompts: Sequence[str | Path] = (),
                 report: str | Path | None = None, onnx: OnnxHook | None = None,
                 force: bool = False) -> Path:
    """Write a bundle for cn_clip's ``CLIP`` or a :class:`TripartiteCLIP` ``model`` (with
    ``model.vclip_config``) to ``out_dir``.

    ``onnx``, when given, is called as ``onnx(folder, towers)`` once the weights are in the
    temporary folder and returns a summary for ``config.json`` (see :mod:`cn_clip_ext.model.onnx`).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    towers = tuple(t for t in TOWERS if t in towers)
    if not towers:
        raise UserError(f"{out}: nothing to export (choose the image tower, the text tower or both)")
    if preprocess not in PREPROCESS_MODES:
        raise UserError(f"unknown preprocess mode {preprocess!r}; choose from {sorted(PREPROCESS_MODES)}")
    mc: ModelConfig = model.vclip_config
    if out.exists() and not force:
        raise UserError(f"{out}: already exists (use --force to replace it)")
    prove_bundle(out)
    prompt_paths = _check_prompts(prompts)
    report_data = _read_report(Path(report)) if report is not None else None

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise write_failure(exc, out, "bundle folder") from None
    try:
        state = tower_state_dict(model, towers, fp16)
        save_file(state, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "pt", "bundle_format": BUNDLE_FORMAT, "architecture": mc.name})
        shutil.copyfile(vocab_path(), tmp / VOCAB_FILE)
        save_fast_tokenizer(tmp, mc.context_length)
        (tmp / PREPROCESSING_FILE).write_text(json.dumps(preprocessing_spec(mc.image_size, preprocess), indent=2)
                                              + "\n", encoding="utf-8")
        if prompt_paths:
            (tmp / PROMPTS_DIR).mkdir()
            for p in prompt_paths:
                shutil.copyfile(p, tmp / PROMPTS_DIR / p.name)
        if report is not None:
            shutil.copyfile(report, tmp / REPORT_FILE)
        tripartite = isinstance(model, TripartiteCLIP)
        cfg = BundleConfig(
            architecture=mc.name, embed_dim=mc.embed_dim, image_size=mc.image_size,
            context_length=mc.context_length, preprocess=preprocess, towers=towers,
            vision=dict(mc.vision), text=dict(mc.text), vocab_sha256=vocab_sha256(tmp / VOCAB_FILE),
            source=asdict(source), weights_dtype="float16" if fp16 else "float32",
            heads="tripartite" if tripartite else "clip",
            single_eye_head=model.single_eye_head if tripartite else "global")
        (tmp / CONFIG_FILE).write_text(cfg.to_json(), encoding="utf-8")  # provisional, for the ONNX hook
        onnx_info = dict(onnx(tmp, towers)) if onnx is not None else {}
        cfg = replace(cfg, files=_hash_tree(tmp), onnx=onnx_info)
        (tmp / CARD_FILE).write_text(model_card(cfg, report_data), encoding="utf-8")
        cfg = replace(cfg, files={**cfg.files, CARD_FILE: file_sha256(tmp / CARD_FILE)})
        (tmp / CONFIG_FILE).write_text(cfg.to_json(), encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        for item in [tmp, *tmp.rglob("*")]:  # mkdtemp and safetensors create owner-only entries
            item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)
        _publish(tmp, out, force)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(exc, out, "bundle") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote bundle %s (%s, towers: %s, %d files)", out, mc.name, "+".join(towers), len(cfg.files) + 1)
    return out


# -- reading ----------------------------------------------------------------------------------------
HF_REVISION = "main"


def resolve_bundle_folder(path: str | Path, revision: str = HF_REVISION) -> Path:
    """The bundle folder ``path`` stands for: ``path`` itself, or, for a Hugging Face cache repository
    folder (``models--ORG--NAME`` with ``refs/`` and ``snapshots/``, as ``huggingface_hub`` downloads
    it), the snapshot that ``refs/<revision>`` names (the only snapshot when there is no such ref).

    A snapshot folder (``models--ORG--NAME/snapshots/<commit>/``) is a bundle as it is: its files are
    links into ``blobs/``, read through. Nothing is fetched; a one-line :class:`UserError` when the
    cache folder does not lead to one snapshot.
    """
    folder = Path(path)
    snapshots = folder / "snapshots"
    if (folder / CONFIG_FILE).exists() or not snapshots.is_dir():
        return folder
    ref = folder / "refs" / revision
    if ref.exists():
        check_input_file(ref, "Hugging Face cache ref", max_bytes=4096)
        commit = ref.read_text(encoding="utf-8").strip()
        snapshot = snapshots / commit
        if not commit or "/" in commit or not snapshot.is_dir():
            raise UserError(f"{ref}: names snapshot {commit!r}, which is not in {snapshots} (an incomplete "
                            "download; fetch it again or pass a snapshots/<commit> folder)")
        return snapshot
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) != 1:
        raise UserError(f"{folder}: a Hugging Face cache folder with no refs/{revision} and {len(found)} snapshots; "
                        f"pass one of them ({snapshots}/<commit>)")
    return found[0]


def verify_files(folder: Path, cfg: BundleConfig) -> None:
    """Every file ``config.json`` lists exists and has its recorded hash; else a one-line UserError."""
    required = {WEIGHTS_FILE, VOCAB_FILE}
    missing_from_list = sorted(required - set(cfg.files))
    if missing_from_list:
        raise UserError(f"{folder / CONFIG_FILE}: does not list {missing_from_list[0]} (incomplete bundle config)")
    for rel, digest in cfg.files.items():
        path = bundle_file(folder, rel)
        actual = file_sha256(path)
        if actual != digest:
            raise UserError(f"{path}: contents do not match config.json (sha256 {actual[:12]}…, expected "
                            f"{digest[:12]}…); the bundle was modified or damaged")


def read_bundle(path: str | Path, verify: bool = True) -> tuple[BundleConfig, dict[str, torch.Tensor]]:
    """``(config, state dict)`` of a bundle folder, after checking its files against their hashes."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{folder}: bundle folder not found")
    cfg = BundleConfig.from_file(folder / CONFIG_FILE)
    if verify:
        verify_files(folder, cfg)
    elif not (folder / WEIGHTS_FILE).is_file():
        raise UserError(f"{folder / WEIGHTS_FILE}: missing from the bundle")
    else:
        bundle_file(folder, WEIGHTS_FILE)
    if cfg.vocab_sha256 != vocab_sha256():
        raise UserError(f"{folder / VOCAB_FILE}: the bundle's vocabulary differs from cn_clip's installed "
                        "vocab.txt, which the tokenizer uses")
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        with safe_open(str(folder / WEIGHTS_FILE), "pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{folder / WEIGHTS_FILE}: unreadable safetensors file ({first_line(exc)})") from None
    check_weights(folder, cfg, state, metadata)
    present = {tower_of(k) for k in state} - {None}
    absent = [t for t in cfg.towers if t not in present]
    if absent:
        raise UserError(f"{folder / WEIGHTS_FILE}: has no weights for the {absent[0]} tower that config.json lists")
    return cfg, state


def check_weights(folder: Path, cfg: BundleConfig, state: Mapping[str, torch.Tensor],
                  metadata: Mapping[str, str] | None = None) -> None:
    """The weights file agrees with ``config.json`` (the architecture it was exported for) and holds
    only finite numbers; else one line naming the file and the first bad tensor."""
    weights = folder / WEIGHTS_FILE
    exported_for = (metadata or {}).get("architecture")
    if exported_for and exported_for != cfg.architecture:
        raise UserError(f"{weights}: the weights were exported for {excerpt(exported_for)}, but config.json "
                        f"says {excerpt(cfg.architecture)}; the bundle was modified")
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{weights}: tensor {key!r} holds NaN or infinite values; the weights are damaged")


def check_shapes(folder: Path, cfg: BundleConfig, expected: Mapping[str, torch.Tensor],
                 state: Mapping[str, torch.Tensor]) -> None:
    """Every tensor of ``state`` has the shape that the model built from ``config.json``
    (``expected``, its state dict, meta tensors are fine) needs; else one line naming the first."""
    for key, tensor in state.items():
        want = expected.get(key)
        if want is not None and tuple(want.shape) != tuple(tensor.shape):
            raise UserError(f"{folder / WEIGHTS_FILE}: tensor {key!r} has shape {list(tensor.shape)}, but the "
                            f"{excerpt(cfg.architecture)} of config.json needs {list(want.shape)}; config and "
                            "weights disagree")


__all__ = ["BUNDLE_FORMAT", "BundleConfig", "CARD_FILE", "CARD_FRONT_MATTER", "CONFIG_FILE", "FORMAT_VERSION",
           "ONNX_FILES", "PREPROCESSING_FILE", "PROMPTS_DIR", "REPORT_FILE", "SourceInfo", "TOWERS", "VOCAB_FILE",
           "WEIGHTS_FILE", "bundle_file", "check_config", "check_shapes", "check_weights", "file_sha256", "is_bundle",
           "model_card", "prove_bundle", "read_bundle", "resolve_bundle_folder", "tower_of", "tower_state_dict",
           "verify_files",
           "write_bundle"]
