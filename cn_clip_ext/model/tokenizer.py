"""Chinese tokenizer on cn_clip's vocabulary, with an optional transformers fast path.

Both backends produce ids identical to :func:`cn_clip.clip.tokenize`: ``[CLS] tokens [SEP]``,
truncated to ``context_length - 2`` tokens and zero-padded (``[PAD]`` is id 0).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    import torch

DEFAULT_CONTEXT_LENGTH = 52


def _cn_clip_clip_dir() -> Path:
    """The folder of the ``cn_clip.clip`` package, found without importing it (or torch)."""
    spec = importlib.util.find_spec("cn_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("cn_clip is not installed: pip install --no-deps cn_clip==1.6.0")
    return Path(list(spec.submodule_search_locations)[0]) / "clip"


def vocab_path() -> Path:
    """cn_clip's ``vocab.txt`` (21,128 entries, RoBERTa-wwm-ext-chinese)."""
    return _cn_clip_clip_dir() / "vocab.txt"


@lru_cache(maxsize=1)
def wordpiece() -> Any:
    """cn_clip's own word-piece tokenizer (``FullTokenizer`` on its vocabulary).

    Its ``bert_tokenizer`` module is loaded on its own when ``cn_clip.clip`` is not imported yet,
    so that counting caption tokens (the LMDB build) needs neither torch nor the model code.
    """
    module = sys.modules.get("cn_clip.clip.bert_tokenizer")
    if module is None:
        spec = importlib.util.spec_from_file_location("cn_clip_ext._cn_clip_bert_tokenizer",
                                                      _cn_clip_clip_dir() / "bert_tokenizer.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.FullTokenizer(vocab_file=str(vocab_path()))


def vocab_sha256(path: Path | None = None) -> str:
    """Content hash of a vocabulary file, recorded in exported bundles."""
    return hashlib.sha256((path or vocab_path()).read_bytes()).hexdigest()


def _cn_clip_backend(texts: Sequence[str], context_length: int) -> torch.Tensor:
    from cn_clip.clip import tokenize

    return tokenize(list(texts), context_length=context_length)


@lru_cache(maxsize=4)
def _fast_tokenizer(vocab: str):
    from ..extras import require

    BertTokenizerFast = require("transformers", extra="fast-tokenizer", purpose='backend="fast"').BertTokenizerFast
    return BertTokenizerFast.from_pretrained(str(Path(vocab).parent), local_files_only=True, do_lower_case=True,
                                             tokenize_chinese_chars=True)


def _fast_backend(texts: Sequence[str], context_length: int) -> torch.Tensor:
    tok = _fast_tokenizer(str(vocab_path()))
    out = tok(list(texts), padding="max_length", truncation=True, max_length=context_length,
              return_tensors="pt", return_attention_mask=False, return_token_type_ids=False)
    return out["input_ids"].long()


BACKENDS: dict[str, Callable[[Sequence[str], int], torch.Tensor]] = {
    "cn_clip": _cn_clip_backend,
    "fast": _fast_backend,
}


# -- the same tokenizer as a tokenizers/transformers file, for bundles --------------------------------
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
SPECIAL_TOKENS = MappingProxyType({"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                                   "unk_token": "[UNK]", "mask_token": "[MASK]"})
MAX_INPUT_CHARS_PER_WORD = 200
"""cn_clip's ``WordpieceTokenizer`` limit (a longer word is ``[UNK]``); the tokenizers default is 100."""


def fast_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> Any:
    """cn_clip's tokenizer as a Hugging Face ``tokenizers.Tokenizer``: the same vocabulary (cn_clip's
    own parse of ``vocab.txt``) and BERT normalisation, word pieces up to 200 characters, ``[CLS] ... [SEP]``,
    truncated and zero-padded to ``context_length``, so ``encode(text).ids`` equals
    :func:`cn_clip.clip.tokenize`'s row (needs the ``tokenizers`` package, in the ``export`` extra)."""
    from ..extras import require

    tk = require("tokenizers", extra="export", purpose="writing tokenizer.json")
    vocab = dict(wordpiece().vocab)  # cn_clip's parse: readline per token, stripped (a few map to "")
    tok = tk.Tokenizer(tk.models.WordPiece(vocab, unk_token=SPECIAL_TOKENS["unk_token"],
                                           max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
    tok.normalizer = tk.normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                   lowercase=True)
    tok.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    cls, sep = SPECIAL_TOKENS["cls_token"], SPECIAL_TOKENS["sep_token"]
    tok.post_processor = tk.processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    tok.decoder = tk.decoders.WordPiece(prefix="##")
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(length=context_length, pad_id=vocab[SPECIAL_TOKENS["pad_token"]],
                       pad_token=SPECIAL_TOKENS["pad_token"])
    return tok


def save_fast_tokenizer(folder: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH) -> list[Path]:
    """Write ``tokenizer.json`` (:func:`fast_tokenizer`) and the two small files with which
    ``transformers.AutoTokenizer.from_pretrained(folder)`` loads it as it is; returns the paths.

    ``tokenizer_class`` is the generic ``PreTrainedTokenizerFast``: a BERT class would rebuild the
    word-piece model from ``vocab.txt`` with its own defaults and lose the 200-character limit.
    """
    folder = Path(folder)
    paths = [folder / TOKENIZER_JSON, folder / TOKENIZER_CONFIG, folder / SPECIAL_TOKENS_MAP]
    fast_tokenizer(context_length).save(str(paths[0]))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_length,
              "padding_side": "right", "truncation_side": "right", "do_lower_case": True,
              "tokenize_chinese_chars": True, **SPECIAL_TOKENS}
    for path, data in zip(paths[1:], (config, dict(SPECIAL_TOKENS))):
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths


class Tokenizer:
    """Callable: ``tokenizer(texts) -> LongTensor[len(texts), context_length]``."""

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH, backend: str = "cn_clip"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown tokenizer backend {backend!r}; choose from {sorted(BACKENDS)}")
        if context_length < 2:
            raise ValueError("context_length must be at least 2 ([CLS] and [SEP])")
        self.context_length = context_length
        self.backend = backend
        self._encode = BACKENDS[backend]

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._encode(texts, self.context_length)

    def __repr__(self) -> str:
        return f"Tokenizer(context_length={self.context_length}, backend={self.backend!r})"
