"""The READMEs: the English and Chinese ones hold the same commands, the first two are what CI runs, and every
command they show names a script that exists and options its program has."""
import argparse
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = {"en": ROOT / "README.md", "zh": ROOT / "README.zh.md"}


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` outside quotes that starts a word)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def bash_commands(path: Path) -> list[str]:
    """The commands of the fenced ``bash`` blocks, in order: continuations joined, comments dropped,
    whitespace collapsed."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S):
        pending = ""
        for raw in block.splitlines():
            line = _strip_comment(raw)
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line = " ".join((pending + line).split())
            pending = ""
            if line:
                commands.append(line)
    return commands


def test_both_readmes_exist_and_link_each_other():
    assert "README.zh.md" in READMES["en"].read_text(encoding="utf-8")
    assert "README.md" in READMES["zh"].read_text(encoding="utf-8").replace("README.zh.md", "")


def test_english_and_chinese_readmes_hold_the_same_commands():
    en, zh = bash_commands(READMES["en"]), bash_commands(READMES["zh"])
    assert len(en) > 20
    assert set(en) - set(zh) == set(), "commands only in README.md"
    assert set(zh) - set(en) == set(), "commands only in README.zh.md"


@pytest.mark.parametrize("lang", sorted(READMES))
def test_the_first_two_commands_are_what_ci_runs(lang):
    first = re.search(r"```bash\n(.*?)```", READMES[lang].read_text(encoding="utf-8"), flags=re.S).group(1)
    commands = [c for c in (_strip_comment(line) for line in first.splitlines()) if c]
    assert commands == ["bash run_scripts/demo.sh", "bash run_scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^bash run_scripts/test\.sh\b", ci, flags=re.M)  # CI runs the test command itself ...
    demo = (ROOT / "tests" / "test_demo.py").read_text(encoding="utf-8")
    assert '"run_scripts" / "demo.sh"' in demo  # ... and the suite runs the demo script (tests/test_demo.py)


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from vclip_data_prep.build_lmdb import build_parser as build_lmdb
    from vclip_data_prep.synth import build_parser as synth
    from vclip_eval.audit import build_parser as audit
    from vclip_eval.evaluate import build_parser as evaluate
    from vclip_export.embed import build_parser as embed
    from vclip_export.export import build_parser as export
    from vclip_train.train import build_parser as train

    return {"vclip-synth": synth(), "vclip-build-lmdb": build_lmdb(), "vclip-train": train(),
            "vclip-eval": evaluate(), "vclip-audit": audit(), "vclip-export": export(), "vclip-embed": embed()}


def test_readme_commands_name_real_scripts_and_options():
    parsers = _parsers()
    checked = 0
    for command in bash_commands(READMES["en"]):
        words = shlex.split(command)
        for i, word in enumerate(words):
            if word.endswith((".sh", ".sbatch")) and "run_scripts/" in word:
                assert (ROOT / word[word.index("run_scripts/"):]).is_file(), command
            program = word.rsplit("/", 1)[-1]
            if program in parsers:
                known = set(parsers[program]._option_string_actions)
                used = [w.split("=", 1)[0] for w in words[i + 1:] if w.startswith("--")]
                assert set(used) <= known, (command, sorted(set(used) - known))
                checked += 1
            if program == "vclip_train.train":  # python -m / torchrun -m
                used = [w.split("=", 1)[0] for w in words[i + 1:] if w.startswith("--")]
                assert set(used) <= set(parsers["vclip-train"]._option_string_actions), command
    assert checked >= 15
