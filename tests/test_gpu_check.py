"""bench/gpu_check.py --cpu-smoke: every part of the GPU check runs with tiny sizes on the CPU, so the
one short GPU run cannot fail on a typo (the numbers themselves are measured on the GPU only)."""
from __future__ import annotations

import json
import subprocess
import sys

from test_train_support import ROOT, cpu_env


def test_gpu_check_cpu_smoke_writes_its_section(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\n## Other\n\nkept\n", encoding="utf-8")
    raw = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--cpu-smoke", "--results",
                           str(results), "--json", str(raw), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, env=cpu_env(), cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(raw.read_text(encoding="utf-8"))
    assert data["failures"] == []
    rows = data["rows"]
    assert rows["a"]["identical"] is True and rows["a"]["steps"] == 12  # kill (or end) and resume: same losses
    assert {(r["batch"], r["compile"]) for r in rows["b"]} == {(4, False), (8, False)}
    for r in rows["b"]:
        assert r["samples_per_s"] > 0 and r["flops_per_step"] > 0 and 0 < r["peak_fraction"]
    assert "get_loss" in rows["c"]["note"]  # cn_clip's step itself needs CUDA
    assert rows["d"]["samples_per_s"] > 0 and rows["d"]["fraction_of_model_only"] > 0
    text = results.read_text(encoding="utf-8")
    assert "## Other\n\nkept" in text and text.count("## GPU check") == 1
    assert "(a) resume smoke" in text and "| 8 |" in text and "(d) end to end" in text
    # a second run replaces the section instead of adding another
    section = text.split("<!-- gpu_check:begin -->", 1)[1]
    from importlib import util

    spec = util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    module.write_section(results, "<!-- gpu_check:begin -->\nnew\n<!-- gpu_check:end -->\n")
    again = results.read_text(encoding="utf-8")
    assert "new" in again and section.split("\n", 2)[1] not in again and again.count("gpu_check:begin") == 1


def test_gpu_check_script_is_valid_bash():
    for script in ("bench/gpu_check.sh", "run_scripts/train_cnclip_reference.sh",
                   "run_scripts/train_visionclip_multinode.sbatch"):
        assert subprocess.run(["bash", "-n", str(ROOT / script)]).returncode == 0, script
