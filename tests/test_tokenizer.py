"""Tokenizer ids equal cn_clip.clip.tokenize on every backend."""
import pytest
import torch
from cn_clip.clip import tokenize as cn_tokenize

import cn_clip_ext as vc
from cn_clip_ext.model.tokenizer import vocab_path, vocab_sha256

SENTENCES = [
    "疑似青光眼。",
    "可见出血斑。",
    "未见明显异常。",
    "糖尿病视网膜病变（中度非增殖期），建议眼科随诊。",
    "黄斑区可见玻璃膜疣，疑似年龄相关性黄斑变性。",
    "",  # empty
    "   ",  # whitespace only
    "杯盘比C/D=0.7，OCT检查RNFL变薄。",  # Latin letters, digits, punctuation
    "Fundus photo shows DR grade 3; HbA1c 8.5%!",
    "ÉCLAIR café naïve",  # accents are stripped by lower-casing
    "视网膜" * 40,  # longer than the context
    "左眼：视盘边界清，右眼：视网膜豹纹状改变……",
    "emoji 👁 and tabs\tand\nnewlines",
]


@pytest.mark.parametrize("backend", ["cn_clip", "fast"])
@pytest.mark.parametrize("context_length", [52, 16])
def test_ids_equal_cn_clip(backend, context_length):
    ours = vc.Tokenizer(context_length=context_length, backend=backend)(SENTENCES)
    ref = cn_tokenize(SENTENCES, context_length=context_length)
    assert ours.dtype == torch.long
    assert torch.equal(ours, ref)


def test_generated_captions_match(tmp_path):
    synth = pytest.importorskip("cn_clip_ext.synth.generator")
    captions = synth.sample_captions(200, seed=3) if hasattr(synth, "sample_captions") else None
    if captions is None:
        pytest.skip("generator exposes no caption sampler")
    fast = vc.Tokenizer(backend="fast")(captions)
    assert torch.equal(fast, cn_tokenize(captions))


def test_structure_of_ids():
    ids = vc.get_tokenizer(vc.VISIONCLIP_TINY)(["", "视网膜" * 40])
    cls, sep = 101, 102
    assert ids[0, :3].tolist() == [cls, sep, 0]
    assert ids[1, 0] == cls and ids[1, -1] == sep and (ids[1] != 0).all()


def test_single_string_and_bad_arguments():
    tok = vc.Tokenizer(context_length=8)
    assert tok("视网膜").shape == (1, 8)
    with pytest.raises(ValueError, match="backend"):
        vc.Tokenizer(backend="sentencepiece")
    with pytest.raises(ValueError):
        vc.Tokenizer(context_length=1)


def test_vocab_is_cn_clips():
    lines = vocab_path().read_text(encoding="utf-8").rstrip("\n").split("\n")
    assert len(lines) == 21128 and lines[0] == "[PAD]"
    assert len(vocab_sha256()) == 64
