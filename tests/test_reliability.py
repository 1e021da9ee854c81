"""
Nothing run, nothing lost, the same result twice: a checkpoint that would run code is refused, outputs are
written atomically (a full disk keeps the previous file), Ctrl-C and SIGTERM save a checkpoint that resumes to
exactly the uninterrupted result, a NaN loss stops with the last good checkpoint kept, and two seeded
deterministic runs give bit-identical checkpoints and scores.

Run: python -m pytest -q tests/test_reliability.py   (about two minutes on 2 CPU cores)
"""

import csv
import errno
import hashlib
import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, SMALL, assert_same, assert_user_error, run_main, snapshot
from model.checkpoint import load_checkpoint
from utils.files import atomic_write_json
from utils.io import save_checkpoint
from utils.runs import CheckpointWriter, LossLog, ckpt_path

# 8 training images in batches of 2: 4 steps per epoch, 12 in all; --save_minutes=1000, so only the end of
# training and a signal save a checkpoint
SHORT = ["--category=stripes", "--epochs=3", "--batch_size=2", "--save_minutes=1000", "--seed=3", *SMALL]
TRAIN = [*SHORT, "--deterministic=1"]  # sets torch's global deterministic mode, which run_main puts back





def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# -----------------------------------------------------------------------------
# a checkpoint cannot run code


class Payload:
    """Unpickling this calls open(marker, 'w'): a harmless stand-in for the code a malicious checkpoint runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def malicious(tmp_path):
    """(marker, the payload in torch.save's zip format, the payload as a plain protocol-2 pickle)."""
    marker = tmp_path / "payload_ran"
    zipped, pickled = tmp_path / "malicious.pth", tmp_path / "malicious.pkl"
    torch.save({"bn": Payload(str(marker)), "decoder": {}}, zipped)
    with open(pickled, "wb") as f:
        pickle.dump({"bn": Payload(str(marker)), "decoder": {}}, f, protocol=2)
    return marker, zipped, pickled


def test_the_payload_is_live(malicious):
    """Unpickled without weights_only, both files do run their payload: the refusals below are what stops them."""
    marker, zipped, pickled = malicious
    torch.load(zipped, weights_only=False)["bn"].close()  # the payload's return value: an open file
    assert marker.exists()
    marker.unlink()
    with open(pickled, "rb") as f:
        pickle.load(f)["bn"].close()
    assert marker.exists()


def test_test_py_refuses_a_malicious_checkpoint(malicious, data_root, tmp_path):
    marker, zipped, _ = malicious
    out_dir = tmp_path / "runs"
    result = run_main("test.py", f"--checkpoint={zipped}", f"--data_root={data_root}", "--category=stripes",
                      f"--out_dir={out_dir}", *SMALL, check=False)
    assert_user_error(result, f"checkpoint={zipped}", "refused", "io.open")
    assert not marker.exists()
    assert not out_dir.exists()


@pytest.mark.parametrize("form", ["zip", "pickle"])
def test_resume_refuses_a_malicious_checkpoint(malicious, data_root, tmp_path, form):
    marker, zipped, pickled = malicious
    out_dir = tmp_path / "runs"
    (out_dir / "stripes").mkdir(parents=True)
    os.replace(zipped if form == "zip" else pickled, out_dir / "stripes" / "checkpoint.pth")
    before = snapshot(out_dir)
    result = run_main("train.py", f"--data_root={data_root}", f"--out_dir={out_dir}", "--resume=1", *SHORT)
    assert_user_error(result, f"checkpoint={out_dir / 'stripes' / 'checkpoint.pth'}", "refused", "io.open")
    assert not marker.exists()
    assert snapshot(out_dir) == before


@pytest.mark.parametrize("form", ["zip", "pickle"])
def test_teacher_weights_refuse_a_malicious_file(malicious, data_root, tmp_path, form):
    marker, zipped, pickled = malicious
    path = zipped if form == "zip" else pickled
    out_dir = tmp_path / "runs"
    result = run_main("train.py", f"--data_root={data_root}", f"--out_dir={out_dir}", *SHORT, f"--weights={path}")
    assert_user_error(result, f"weights={path}", "refused", "io.open")
    assert not marker.exists()
    assert not out_dir.exists()


def test_every_torch_load_is_weights_only():
    """No load path in the code (scripts, utils, model) unpickles with weights_only=False, or with torch's default."""
    import ast
    calls = []
    for folder, _, names in os.walk(ROOT):
        parts = os.path.relpath(folder, ROOT).split(os.sep)
        if parts[0] in ("tests", "data") or any(p.startswith(".") and p != "." for p in parts):
            continue
        for name in (n for n in names if n.endswith(".py")):
            with open(os.path.join(folder, name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("load", "get_state_dict"):
                    source = ast.unparse(node.func)
                    if source in ("torch.load", "weights.get_state_dict", "torch.hub.load_state_dict_from_url"):
                        safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                        calls.append((os.path.relpath(os.path.join(folder, name), ROOT), node.lineno, safe))
    assert len(calls) >= 2 and all(safe for *_, safe in calls), calls


# -----------------------------------------------------------------------------
# atomic writes


class FullDisk:
    """A file that takes `room` bytes, then fails the way a full disk does (or is interrupted by Ctrl-C)."""

    def __init__(self, f, room, error):
        self.f, self.room, self.error, self.written = f, room, error, 0

    def write(self, data):
        n = min(len(data), self.room - self.written)
        self.f.write(bytes(data[:n]))
        self.written += n
        if n < len(data):
            raise self.error
        return n

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), KeyboardInterrupt()], ids=["ENOSPC", "Ctrl-C"])
@pytest.mark.parametrize("name, write", [
    ("checkpoint.pth", lambda path, n: save_checkpoint(path, {"bn": {"w": torch.full((n,), 1.0)}, "decoder": {}, "step": n})),
    ("results.json", lambda path, n: atomic_write_json(path, {"scores": list(range(n))})),
])
def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch, name, write, error):
    path = str(tmp_path / "stripes" / name)
    write(path, 10)
    before = snapshot(tmp_path)
    files = []
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):  # atomic_write's temporary file, filling up after 1000 bytes
        files.append(os.readlink(f"/proc/self/fd/{fd}"))
        return FullDisk(real_fdopen(fd, *args, **kwargs), 1000, error)

    with monkeypatch.context() as m:
        m.setattr(os, "fdopen", fdopen)
        with pytest.raises(type(error)) as raised:
            write(path, 100_000)
    assert raised.value is error  # not swallowed, not replaced by another error
    assert len(files) == 1 and os.path.dirname(files[0]) == os.path.dirname(path) and files[0] != path
    assert snapshot(tmp_path) == before  # old file byte-identical, the partial temporary file gone
    if name == "checkpoint.pth":
        assert load_checkpoint(path)["step"] == 10


def test_background_write_is_a_snapshot_and_leaves_no_temporary_file(tmp_path):
    """CheckpointWriter copies the tensors when write() is called: the live ones change on, the file does not."""
    path = str(tmp_path / "stripes" / "checkpoint.pth")
    live = {"bn": {"w": torch.zeros(1000)}, "decoder": {}, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}}, "step": 1}
    writer = CheckpointWriter()
    writer.write(path, live)
    live["bn"]["w"] += 1  # the next training steps, while the file is being written
    live["optimizer"]["state"][0]["exp_avg"] += 1
    writer.wait()
    saved = load_checkpoint(path)
    assert torch.equal(saved["bn"]["w"], torch.zeros(1000)) and torch.equal(saved["optimizer"]["state"][0]["exp_avg"], torch.zeros(3))
    writer.write(path, live)  # the next one replaces it
    writer.wait()
    assert torch.equal(load_checkpoint(path)["bn"]["w"], torch.ones(1000))
    assert os.listdir(tmp_path / "stripes") == ["checkpoint.pth"]


def test_failed_background_write_raises_in_the_training_thread(tmp_path, monkeypatch):
    """A full disk in the writer thread: the error comes out of wait() (and check()) in the caller's thread,
    unchanged, once; the previous checkpoint is byte-identical and the partial temporary file is gone."""
    path = str(tmp_path / "stripes" / "checkpoint.pth")
    writer = CheckpointWriter()
    writer.write(path, {"bn": {"w": torch.zeros(10)}, "decoder": {}, "step": 10})
    writer.wait()
    before = snapshot(tmp_path)
    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: FullDisk(real_fdopen(fd, *args, **kwargs), 1000, error))
    writer.write(path, {"bn": {"w": torch.zeros(100_000)}, "decoder": {}, "step": 20})
    writer.thread.join()  # the write has failed by now, in the background
    with pytest.raises(OSError) as raised:
        writer.check()
    assert raised.value is error
    writer.wait()  # reported once: nothing more to raise
    assert snapshot(tmp_path) == before
    assert load_checkpoint(path)["step"] == 10


# -----------------------------------------------------------------------------
# signals and resuming


@pytest.fixture(scope="module")
def deterministic_runs(data_root, tmp_path_factory):
    """Two uninterrupted runs with the same seed and deterministic=True, in separate processes: their out_dirs."""
    out_dirs = [tmp_path_factory.mktemp(f"deterministic_{i}") for i in range(2)]
    for out_dir in out_dirs:
        run_main("train.py", f"--data_root={data_root}", f"--out_dir={out_dir}", *TRAIN, check=True)
    return out_dirs


@pytest.mark.slow  # a signal to a training process
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_that_resumes_exactly(data_root, tmp_path, deterministic_runs, signum):
    out_dir = tmp_path / "runs"
    # a checkpoint after every step, written in the background while the next steps change the weights
    args = [sys.executable, "train.py", f"--data_root={data_root}", f"--out_dir={out_dir}", *TRAIN, "--save_minutes=0"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for line in process.stdout:  # the end of epoch 1: training is under way, 8 steps to go
            if line.startswith("epoch 1/3"):
                process.send_signal(signum)
                break
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, stderr
    assert f"stopped by signal {int(signum)}" in stdout and "Traceback" not in stderr
    path = ckpt_path(str(out_dir), "stripes")
    assert sorted(os.listdir(out_dir / "stripes")) == ["checkpoint.pth", "config.json", "loss.csv"]  # no temporary files
    stopped = load_checkpoint(path)
    assert 4 < stopped["step"] < 12, stopped["step"]  # the signal's checkpoint, at the step after it came

    resumed = run_main("train.py", f"--data_root={data_root}", f"--out_dir={out_dir}", "--resume=1", *TRAIN, check=True)
    assert f"step {stopped['step']}" in resumed.stdout
    final, uninterrupted = load_checkpoint(path), load_checkpoint(ckpt_path(str(deterministic_runs[0]), "stripes"))
    for key in ("bn", "decoder", "optimizer", "step", "epoch"):
        assert_same(final[key], uninterrupted[key], key)
    # the loss of each epoch once: the stopped run's epoch 1, then the resumed run's 2 and 3
    with open(out_dir / "stripes" / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    with open(deterministic_runs[0] / "stripes" / "loss.csv") as f:
        assert float(rows[0]["loss"]) == float(next(csv.DictReader(f))["loss"])  # the same first epoch


def test_loss_csv_of_a_resumed_run_drops_the_epochs_after_its_checkpoint(tmp_path):
    """A run killed after writing epochs 1-3 to loss.csv (the last row cut short) but with a checkpoint of
    epoch 2 only: resuming keeps rows 1 and 2, then appends."""
    path = tmp_path / "loss.csv"
    path.write_text("epoch,loss,seconds\n1,0.500000,2.00\n2,0.400000,2.00\n3,0.300000,2.00\n4,0.2")
    log = LossLog(str(path), epochs_done=2)
    log.append(3, 0.25, 1.5)
    assert path.read_text() == "epoch,loss,seconds\n1,0.500000,2.00\n2,0.400000,2.00\n3,0.250000,1.50\n"
    LossLog(str(path))  # a fresh run (no checkpoint) starts anew
    assert path.read_text() == "epoch,loss,seconds\n"


def test_failed_background_write_stops_training(data_root, tmp_path, monkeypatch):
    """The disk fills up while train.py writes its second checkpoint in the background: the run stops with
    the one-line disk error and status 1, the first checkpoint is intact, no temporary file is left."""
    out_dir = tmp_path / "runs"
    path = out_dir / "stripes" / "checkpoint.pth"
    real_fdopen, checkpoints = os.fdopen, []

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if ".checkpoint.pth." not in os.readlink(f"/proc/self/fd/{fd}"):
            return f  # config.json
        checkpoints.append(fd)
        return FullDisk(f, 1000, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) if len(checkpoints) == 2 else f

    monkeypatch.setattr(os, "fdopen", fdopen)
    result = run_main("train.py", f"--data_root={data_root}", "--category=stripes", f"--out_dir={out_dir}",
                      "--epochs=3", "--batch_size=4", "--save_minutes=0", *SMALL)
    assert_user_error(result, "no space left on the disk")
    assert result.returncode == 1
    assert len(checkpoints) == 2  # the run stopped at the failed write: no third one
    assert load_checkpoint(str(path))["step"] == 1
    assert sorted(os.listdir(path.parent)) == ["checkpoint.pth", "config.json", "loss.csv"]


# -----------------------------------------------------------------------------
# NaN / inf loss


def test_diverging_lr_stops_and_keeps_the_previous_checkpoint(data_root, tmp_path):
    """--lr=1e30 sends the loss to NaN within two steps; the checkpoint that was there is kept as it was."""
    out_dir = tmp_path / "runs"
    path = out_dir / "stripes" / "checkpoint.pth"
    save_checkpoint(str(path), {"bn": {}, "decoder": {}, "step": 7})  # an earlier run's, small stand-in
    before = digest(path)
    result = run_main("train.py", f"--data_root={data_root}", "--category=stripes", f"--out_dir={out_dir}",
                      "--overwrite=1", "--lr=1e30", "--epochs=2", "--batch_size=4", "--save_minutes=1000", *SMALL)
    assert result.returncode == 1
    assert_user_error(result, "loss is nan", path)
    assert digest(path) == before and load_checkpoint(str(path))["step"] == 7
    assert not [f for f in os.listdir(path.parent) if f.endswith(".tmp")]


def test_nan_after_a_save_keeps_that_save(data_root, tmp_path, monkeypatch):
    """The loss turns NaN at step 3 (in epoch 2) of a run that saves after every step (--save_minutes=0, in
    the background); the checkpoint of step 3, which may still be being written when the bad step comes, is
    completed and is what remains: no NaN weights, no temporary file."""
    import model.losses
    out_dir = tmp_path / "runs"
    path = out_dir / "stripes" / "checkpoint.pth"
    real_loss, calls = model.losses.cosine_loss, []

    def poisoned_loss(teacher, student):
        calls.append(1)
        loss = real_loss(teacher, student)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(model.losses, "cosine_loss", poisoned_loss)  # train.py imports it when it runs
    result = run_main("train.py", f"--data_root={data_root}", "--category=stripes", f"--out_dir={out_dir}",
                      "--epochs=3", "--batch_size=4", "--save_minutes=0", *SMALL)
    assert_user_error(result, "loss is nan at epoch 2, step 3", path)
    assert len(calls) == 4
    checkpoint = load_checkpoint(str(path))
    assert checkpoint["step"] == 3
    assert all(torch.isfinite(v).all() for part in ("bn", "decoder") for v in checkpoint[part].values() if v.is_floating_point())
    assert sorted(os.listdir(path.parent)) == ["checkpoint.pth", "config.json", "loss.csv"]


# -----------------------------------------------------------------------------
# determinism


def test_same_seed_gives_bit_identical_checkpoints_and_scores(deterministic_runs):
    first, second = (load_checkpoint(ckpt_path(str(d), "stripes")) for d in deterministic_runs)
    for key in ("bn", "decoder", "optimizer", "step"):
        assert_same(first[key], second[key], key)
    for out_dir in deterministic_runs:
        result = run_main("test.py", f"--checkpoint={ckpt_path(str(out_dir), 'stripes')}", "--device=cpu")
        assert result.returncode == 0, result.stderr
    first, second = ((d / "stripes" / "scores.csv").read_bytes() for d in deterministic_runs)
    assert first == second and len(first.splitlines()) == 1 + 11
