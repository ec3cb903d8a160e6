"""vclip-train against careless and hostile use: a folder that holds another run, two trainings at once,
SIGTERM/SIGUSR1 mid-run, invalid numbers, a hostile LMDB record, OS errors while writing, --help."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from cn_clip_ext.outputs import LOCK_FILE
from cn_clip_ext.training.checkpoint import LATEST, list_step_checkpoints, load_checkpoint
from cn_clip_ext.training.preemption import PREEMPTED_EXIT_STATUS
from test_train_support import PYTHON, ROOT, TEST_MODEL, cpu_env, model_config_dir, train_losses
from vclip_train.train import main


def _args(tmp_path: Path, out: Path, *extra: str, data: str = "toy:32") -> list[str]:
    return ["--preset", "tiny", "--model", TEST_MODEL, "--model-config-dir", str(model_config_dir(tmp_path)),
            "--data", data, "--output-dir", str(out), "--batch-size", "4", "--num-workers", "0",
            "--max-steps", "4", "--save-every", "2", "--valid-every", "0", "--log-every", "1", "--no-progress",
            "--no-plot", "--no-tensorboard", "--seed", "5", *extra]


def _error_line(err: str, *needles: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("vclip-train: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([str(PYTHON), "-m", "vclip_train.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cpu_env(), cwd=ROOT, **kw)


def _wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float = 240) -> None:
    """Wait until the training subprocess has logged ``step`` (it must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            if metrics.is_file() and max(train_losses(metrics), default=0) >= step:
                return
        except (ValueError, KeyError, TypeError):  # a row being written
            pass
        time.sleep(0.02)
    raise AssertionError(f"no step {step} within {timeout} s")


# -- a folder that holds another run --------------------------------------------------------------
def test_folder_with_another_run_is_refused_and_overwrite_moves_it_aside(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tmp_path, out)) == 0
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    capsys.readouterr()

    assert main(_args(tmp_path, out, "--lr", "0.002")) == 2  # another config, no --resume
    line = _error_line(capsys.readouterr().err, str(out), "another training run", "--resume auto",
                       "--output-dir", "--overwrite")
    assert "step 4" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # untouched
    assert main(_args(tmp_path, out)) == 2  # the same config: a fresh start would still lose the checkpoints
    _error_line(capsys.readouterr().err, "another training run")

    assert main(_args(tmp_path, out, "--lr", "0.002", "--overwrite")) == 0
    [moved] = tmp_path.glob("run.replaced-*")
    assert sorted(p.name for p in (moved / "checkpoints").iterdir()) == before  # renamed, never deleted
    assert json.loads((moved / "config.json").read_text())["lr"] == 0.001
    assert json.loads((out / "config.json").read_text())["lr"] == 0.002
    assert load_checkpoint(out / "checkpoints" / LATEST)["config"]["lr"] == 0.002

    # --overwrite moves only a training run: a folder of other files is refused and left alone
    other = tmp_path / "notes"
    other.mkdir()
    (other / "paper.txt").write_text("draft")
    assert main(_args(tmp_path, other, "--overwrite")) == 2
    _error_line(capsys.readouterr().err, str(other), "not a training run", "another --output-dir")
    assert sorted(p.name for p in other.iterdir() if p.name != LOCK_FILE) == ["paper.txt"]
    assert main(_args(tmp_path, out, "--overwrite", "--resume", "auto")) == 2  # contradictory: refused at once
    _error_line(capsys.readouterr().err, "overwrite", "resume")


def test_resume_with_changed_config_is_refused_unless_allowed(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    assert main(_args(tmp_path, out, "--stop-after", "2")) == 0
    capsys.readouterr()
    for flag, value, key in (("--lr", "0.002", "lr"), ("--batch-size", "8", "batch_size"),
                             ("--seed", "6", "seed"), ("--max-steps", "6", "max_steps"),
                             ("--model", "RN-tiny@BERT-tiny-chinese", "model")):
        assert main(_args(tmp_path, out, "--resume", "auto", flag, value)) == 2
        _error_line(capsys.readouterr().err, str(out), key, "--allow-config-change")
    assert load_checkpoint(out / "checkpoints" / LATEST)["step"] == 2
    # keys that do not shape the trajectory may change (workers, logging, stop point)
    assert main(_args(tmp_path, out, "--resume", "auto", "--log-every", "2", "--stop-after", "3")) == 0
    caplog.clear()
    assert main(_args(tmp_path, out, "--resume", "auto", "--lr", "0.002", "--allow-config-change")) == 0
    assert "resume changes lr from 0.001 to 0.002" in caplog.text
    assert load_checkpoint(out / "checkpoints" / LATEST)["step"] == 4


def test_keep_last_prunes_only_this_runs_checkpoints(tmp_path):
    out = tmp_path / "run"
    assert main(_args(tmp_path, out, "--save-every", "1", "--keep-last", "2", "--stop-after", "2")) == 0
    ckpts = out / "checkpoints"
    (ckpts / "step_00000000.pt").write_bytes(b"a colleague's checkpoint")  # files this run did not write
    (ckpts / "best.pt").write_bytes(b"kept by hand")
    assert main(_args(tmp_path, out, "--save-every", "1", "--keep-last", "2", "--resume", "auto")) == 0
    assert [s for s, _ in list_step_checkpoints(ckpts)] == [0, 3, 4]  # 1 and 2 (ours) pruned
    assert (ckpts / "step_00000000.pt").read_bytes() == b"a colleague's checkpoint"
    assert (ckpts / "best.pt").read_bytes() == b"kept by hand"
    assert load_checkpoint(ckpts / LATEST)["run"]["checkpoints"] == ["step_00000003.pt", "step_00000004.pt"]


# -- two trainings into one folder ----------------------------------------------------------------
def test_second_training_into_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    first = _cli(*_args(tmp_path, out, "--max-steps", "100000", "--save-every", "100000"))
    try:
        _wait_for_step(first, out / "metrics.csv", 1)
        second = _cli(*_args(tmp_path, out, "--resume", "auto"))
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        _error_line(err, str(out), "another command is writing")
        assert first.poll() is None  # the first run goes on, its folder untouched by the second
        assert not (out / "checkpoints" / LATEST).exists()
    finally:
        first.kill()
        first.communicate()


# -- SIGTERM / SIGUSR1 -------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_saves_exits_75_and_resume_is_exact(tmp_path, sig):
    # 32 items / 4 = 8 steps per epoch: 24 steps cross epochs; 2 persistent workers get the
    # signal too (it goes to the process group, as torchrun's killpg sends it) and must survive it
    extra = ("--max-steps", "24", "--save-every", "1000", "--num-workers", "2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess (OMP_NUM_THREADS=1): the same float reductions
    try:
        _stop_and_resume(tmp_path, sig, extra)
    finally:
        torch.set_num_threads(threads)


def _stop_and_resume(tmp_path: Path, sig: signal.Signals, extra: tuple[str, ...]) -> None:
    assert main(_args(tmp_path, tmp_path / "full", *extra)) == 0
    out = tmp_path / "split"
    proc = _cli(*_args(tmp_path, out, *extra), start_new_session=True)
    try:
        _wait_for_step(proc, out / "metrics.csv", 2)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == PREEMPTED_EXIT_STATUS, err
    assert "Traceback" not in err
    assert f"vclip-train: stopped by {sig.name} at step" in err and "--resume auto" in err
    state = load_checkpoint(out / "checkpoints" / LATEST)
    assert 2 <= state["step"] < 24
    assert max(train_losses(out / "metrics.csv")) == state["step"]  # stopped right after the saved step

    assert main(_args(tmp_path, out, *extra, "--resume", "auto")) == 0
    expected = train_losses(tmp_path / "full" / "metrics.csv")
    assert list(expected) == list(range(1, 25))
    assert train_losses(out / "metrics.csv") == expected  # exact float equality, step by step
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / LATEST)["state_dict"]
    b = load_checkpoint(out / "checkpoints" / LATEST)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- invalid numbers -----------------------------------------------------------------------------
@pytest.mark.parametrize("flag,value", [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--beta1", "2"), ("--beta2", "-0.1"), ("--eps", "-1"),
    ("--weight-decay", "-0.1"), ("--grad-clip", "0"), ("--data", "toy:abc"), ("--data", "toy:-3"),
    ("--batch-size", "-4"), ("--max-steps", "0"), ("--warmup-steps", "-1"), ("--num-workers", "-1"),
    ("--context-length", "0"), ("--seed", "-1"), ("--keep-last", "0"), ("--precision", "fp64"),
    ("--preprocess", "crop"), ("--device", "tpu"), ("--epochs", "1.5")])
def test_invalid_numbers_are_refused_at_parse_time(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main([*_args(tmp_path, out), flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err.splitlines()[-1] and "Traceback" not in err
    assert not out.exists()


def test_invalid_numbers_in_a_config_file_are_one_line_errors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: .nan\nbeta1: 2\n")
    out = tmp_path / "run"
    assert main([*_args(tmp_path, out), "--config", str(cfg)]) == 2
    _error_line(capsys.readouterr().err, "lr must be a finite number", "beta1 must be >= 0 and < 1")
    assert not out.exists()


# -- a hostile record read by a DataLoader worker -------------------------------------------------
class _HostileAt(torch.utils.data.Dataset):
    """Toy pairs whose item ``bad`` raises the one-line error a reader gives for a hostile record."""

    def __init__(self, base, bad: int):
        self.base, self.bad, self.labels = base, bad, getattr(base, "labels", {})

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i == self.bad:
            from cn_clip_ext.errors import UserError

            raise UserError(f"/data/lmdb/train/pairs: record {i}: unsafe pickle (global os.system)")
        return self.base[i]


def test_worker_user_error_stops_training_with_its_one_line(tmp_path):
    from cn_clip_ext.errors import UserError
    from cn_clip_ext.synth.toys import make_toy_pairs
    from cn_clip_ext.training import TrainConfig, train

    cfg = TrainConfig.tiny(model=TEST_MODEL, model_config_dir=str(model_config_dir(tmp_path)),
                           output_dir=str(tmp_path / "run"), batch_size=4, num_workers=2, max_steps=8,
                           valid_every=0, progress=False, plot=False, tensorboard=False)
    with pytest.raises(UserError) as info:
        train(cfg, _HostileAt(make_toy_pairs(32, 64), bad=5), make_toy_pairs(8, 64))
    assert str(info.value) == "/data/lmdb/train/pairs: record 5: unsafe pickle (global os.system)"


# -- OS errors while writing -----------------------------------------------------------------------
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint_resumable(tmp_path, capsys, monkeypatch):
    import cn_clip_ext.training.checkpoint as ckpt

    real_save = ckpt.torch.save

    def full_disk_at_step_4(obj, fh, *a, **kw):
        if obj.get("step") == 4:
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", getattr(fh, "name", None))
        return real_save(obj, fh, *a, **kw)

    out = tmp_path / "run"
    monkeypatch.setattr(ckpt.torch, "save", full_disk_at_step_4)
    assert main(_args(tmp_path, out)) == 2
    line = _error_line(capsys.readouterr().err, "disk full", "step_00000004.pt", "step_00000002.pt",
                       "is intact", "--resume auto")
    assert str(out / "checkpoints") in line
    assert load_checkpoint(out / "checkpoints" / LATEST)["step"] == 2
    assert [s for s, _ in list_step_checkpoints(out / "checkpoints")] == [2]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert main(_args(tmp_path, out, "--resume", "auto")) == 0
    assert load_checkpoint(out / "checkpoints" / LATEST)["step"] == 4


def test_disk_full_inside_torch_save_is_reported_as_disk_full(tmp_path, capsys, monkeypatch):
    """The real torch.save path: the file's write fails with ENOSPC part-way (torch then raises a
    RuntimeError from its zip writer's cleanup, with the OSError as its context)."""
    import cn_clip_ext.training.checkpoint as ckpt

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 4096 and state["full"]:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    state = {"full": False}
    monkeypatch.setattr(ckpt.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    out = tmp_path / "run"
    assert main(_args(tmp_path, out, "--stop-after", "2")) == 0
    state["full"] = True
    assert main(_args(tmp_path, out, "--resume", "auto")) == 2
    line = _error_line(capsys.readouterr().err, "disk full", "step_00000004.pt", "step_00000002.pt", "is intact")
    assert str(out / "checkpoints" / "step_00000004.pt") in line
    assert load_checkpoint(out / "checkpoints" / LATEST)["step"] == 2
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("code,reason", [(errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied"), (errno.ENOSPC, "disk full")])
def test_os_errors_writing_logs_are_one_line(tmp_path, capsys, monkeypatch, code, reason):
    from cn_clip_ext.training import recorder

    def failing_log(self, step, epoch, split, values):
        if step == 3:
            raise OSError(code, os.strerror(code), str(self.csv_path))

    out = tmp_path / "run"
    monkeypatch.setattr(recorder.Recorder, "log", failing_log)
    assert main(_args(tmp_path, out)) == 2
    _error_line(capsys.readouterr().err, str(out / "metrics.csv"), reason, "step_00000002.pt")


def test_output_dir_that_is_a_file_or_unwritable_is_one_line(tmp_path, capsys, monkeypatch):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    assert main(_args(tmp_path, path)) == 2
    _error_line(capsys.readouterr().err, str(path), "not a folder")
    assert path.read_text() == "not a folder"
    assert main(_args(tmp_path, path / "run")) == 2  # a file in the way of a parent folder
    _error_line(capsys.readouterr().err, str(path / "run"))

    import cn_clip_ext.outputs as outputs

    real_open = os.open

    def read_only(p, flags, *a):
        if str(p).endswith(LOCK_FILE):
            raise OSError(errno.EROFS, "Read-only file system", str(p))
        return real_open(p, flags, *a)

    monkeypatch.setattr(outputs.os, "open", read_only)
    assert main(_args(tmp_path, tmp_path / "ro")) == 2
    _error_line(capsys.readouterr().err, str(tmp_path / "ro"), "read-only file system")


# -- small ones --------------------------------------------------------------------------------
def test_help_shows_both_presets_defaults_once_and_no_percent_escapes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "%%" not in text and "%(" not in text
    flat = " ".join(text.split())
    assert "samples per process per micro-batch; >= 1 (default: 128; --preset tiny: 16)" in flat
    assert "AdamW beta1; >= 0 and < 1 (default: 0.9)" in flat
    for option in flat.split(" --")[1:]:
        assert option.count("(default:") <= 1, option
    assert str(PREEMPTED_EXIT_STATUS) in flat and "SIGTERM" in flat


def test_config_json_records_the_epochs_a_max_steps_run_covers(tmp_path):
    out = tmp_path / "run"
    assert main(_args(tmp_path, out, "--max-steps", "12")) == 0  # 32 toy items / 4 = 8 steps per epoch
    saved = json.loads((out / "config.json").read_text())
    assert saved["derived"] == {"steps_per_epoch": 8, "total_steps": 12, "epochs": 1.5}
    assert saved["max_steps"] == 12


def test_bad_data_leaves_no_output_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tmp_path, out, data=str(tmp_path / "missing_lmdb"))) == 2
    _error_line(capsys.readouterr().err, "missing_lmdb")
    assert not out.exists()
    assert main(_args(tmp_path, out, "--batch-size", "64")) == 2  # 32 items: not one step
    _error_line(capsys.readouterr().err, "fewer than one optimizer step")
    assert not out.exists()
