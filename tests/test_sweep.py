"""
Tests for the category sweep, bash scripts/run_all_mvtec.sh -> scripts/sweep.py, run as a user runs it: a broken
category fails alone, finished ones are skipped on a rerun, Ctrl-C stops with a checkpoint and a rerun resumes.

Run: python -m pytest -q tests/test_sweep.py   (under 2 minutes on 2 CPU cores)
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, SMALL, make_category, run_sweep, sweep_command, table_row

pytestmark = pytest.mark.slow  # sweeps: a process per training and evaluation


@pytest.fixture(scope="module")
def three_categories(tmp_path_factory):
    """stripes and disc as generated; grid_gray with one train image that is not an image at all."""
    root = str(tmp_path_factory.mktemp("sweep_data"))
    for name in ("stripes", "disc", "grid_gray"):
        make_category(root, name, size=64, n_train=4, n_test_good=2, n_test_defect=1, seed=0)
    with open(os.path.join(root, "grid_gray", "train", "good", "001.png"), "wb") as f:
        f.write(b"these bytes are not a PNG")
    return root


def test_failure_is_isolated_and_finished_categories_are_skipped(three_categories, tmp_path):
    out_dir = str(tmp_path / "runs")
    # --gpus=0,0 on CPU: two categories at a time, which exercises the parallel path without a GPU
    args = [f"--data_root={three_categories}", f"--out_dir={out_dir}", "--categories=stripes,disc,grid_gray",
            "--gpus=0,0", *SMALL, "--epochs=1", "--batch_size=4"]
    first = run_sweep(*args)
    assert first.returncode == 1, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    for name in ("stripes", "disc", "grid_gray"):
        assert f"start {name} on GPU 0" in lines  # whole lines: the parallel runs never share a line
    assert any(line.startswith("grid_gray FAILED after") and "train exited 2" in line for line in lines)
    grid_log = os.path.join(out_dir, "grid_gray", "log.txt")
    assert lines[-1] == f"failed: grid_gray, log: {grid_log}"
    assert "unreadable image" in open(grid_log).read()

    results = {}
    for name in ("stripes", "disc"):
        results[name] = json.load(open(os.path.join(out_dir, name, "results.json")))
        assert any(line.startswith(f"{name} done in ") and "image_auroc" in line for line in lines)
        log = open(os.path.join(out_dir, name, "log.txt")).read()
        assert "saved" in log and f"wrote {os.path.join(out_dir, name, 'results.json')}" in log
        other = "disc" if name == "stripes" else "stripes"
        assert f"category={other}" not in log  # each run has its own log
    assert not os.path.exists(os.path.join(out_dir, "grid_gray", "results.json"))

    results_md = open(os.path.join(out_dir, "results.md")).read()
    assert first.stdout.count("## Image-Level AUC") == 1  # the tables are also printed at the end
    for table, key in (("Image-Level AUC", "image_auroc"), ("Pixel-Level AUC", "pixel_auroc"),
                       ("Image F1 Score", "image_f1"), ("mIoU-max (ADer)", "pixel_iou_max"), ("mAD (ADer)", "mad"),
                       ("AUPRO", "pixel_aupro")):  # AUPRO last: its cells are compared again below
        # columns: Avg, then non-MVTec names sorted: Disc, Grid Gray, Stripes
        avg, disc, grid, stripes = table_row(results_md, table, "ours, RD (resnet18)")
        assert (disc, grid, stripes) == (f"{results['disc'][key]:.3f}", "failed", f"{results['stripes'][key]:.3f}")
        assert avg == f"{(results['disc'][key] + results['stripes'][key]) / 2:.3f} (2/3)"
    assert "anomalib" not in results_md  # reference rows only for MVTec categories
    train_time = table_row(results_md, "Wall time", "train (s)")
    assert train_time[2] == "failed" and float(train_time[1]) > 0
    assert f"grid_gray: failed (train exited 2), log: {grid_log}" in results_md

    mtimes = {name: os.stat(os.path.join(out_dir, name, "checkpoint.pth")).st_mtime_ns for name in ("stripes", "disc")}
    second = run_sweep(*args)
    assert second.returncode == 1, second.stdout + second.stderr
    for name in ("stripes", "disc"):
        assert f"skip {name}: results.json exists (use --force=1 to redo)" in second.stdout.splitlines()
        assert os.stat(os.path.join(out_dir, name, "checkpoint.pth")).st_mtime_ns == mtimes[name]
    assert "start grid_gray" in second.stdout and "start stripes" not in second.stdout
    assert open(grid_log).read().count("train.py --category=grid_gray") == 2  # appended, a header per attempt
    assert table_row(open(os.path.join(out_dir, "results.md")).read(), "AUPRO", "ours, RD (resnet18)")[1:] == [disc, "failed", stripes]


def test_settings_are_checked_before_anything_runs(three_categories, tmp_path):
    out_dir = tmp_path / "runs"
    unknown = run_sweep(f"--data_root={three_categories}", f"--out_dir={out_dir}", "--learning_rate=0.1")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: --learning_rate: neither the sweep")
    missing = run_sweep(f"--data_root={tmp_path}", f"--out_dir={out_dir}")
    assert missing.returncode == 2 and "holds no category of a known dataset" in missing.stderr
    assert len(missing.stderr.splitlines()) == 1 and not out_dir.exists()


def test_interrupted_sweep_resumes(tmp_path):
    data_root, out_dir = str(tmp_path / "data"), str(tmp_path / "runs")
    make_category(data_root, "stripes", size=64, n_train=8, n_test_good=2, n_test_defect=1, seed=0)
    command = sweep_command(f"--data_root={data_root}", f"--out_dir={out_dir}", "--categories=stripes", *SMALL,
                            "--epochs=8", "--batch_size=4", "--save_minutes=0")
    checkpoint = os.path.join(out_dir, "stripes", "checkpoint.pth")
    env = dict(os.environ, PYTHON=sys.executable)
    sweep = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not os.path.exists(checkpoint):  # written atomically after the first epoch: training is under way
            assert sweep.poll() is None and time.time() < deadline, "the sweep ended or hung before its first checkpoint"
            time.sleep(0.05)
        sweep.send_signal(signal.SIGINT)  # to the sweep only: it must forward it to train.py
        stdout, stderr = sweep.communicate(timeout=120)
    finally:
        sweep.kill()
    assert sweep.returncode == 128 + signal.SIGINT, stdout + stderr
    assert "stopping: the running categories save a checkpoint" in stderr
    assert "stripes interrupted after" in stdout and "rerun the same command to resume" in stdout.splitlines()[-1]
    assert "stopped by signal 2" in open(os.path.join(out_dir, "stripes", "log.txt")).read()
    stopped_at = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= stopped_at < 8
    assert table_row(open(os.path.join(out_dir, "results.md")).read(), "Image-Level AUC", "ours, RD (resnet18)") == ["-", "-"]
    first_seconds = json.load(open(os.path.join(out_dir, "stripes", "sweep.json")))["train_seconds"]

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "start stripes (resuming its checkpoint)" in again.stdout
    log = open(os.path.join(out_dir, "stripes", "log.txt")).read()
    assert f"resuming {checkpoint} at epoch {stopped_at + 1}" in log
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 8
    results = json.load(open(os.path.join(out_dir, "stripes", "results.json")))
    avg, cell = table_row(open(os.path.join(out_dir, "results.md")).read(), "Image-Level AUC", "ours, RD (resnet18)")
    assert avg == cell == f"{results['image_auroc']:.3f}"
    assert json.load(open(os.path.join(out_dir, "stripes", "sweep.json")))["train_seconds"] > first_seconds


def test_table_of_mvtec_categories_has_the_reference_rows(tmp_path):
    """The table from hand-written per-category files: states, averages, reference rows, notes; then --table_only=1
    gathers it the way the Slurm recipe does, from out_dir alone (the data is not on that machine)."""
    import evaluation.results as results_layer
    import train

    config = {k: getattr(train, k) for k in train.config_keys}  # the defaults: wide_resnet50_2, 200 epochs, ...
    out_dir = tmp_path / "runs"

    def write(category, name, content):
        (out_dir / category).mkdir(parents=True, exist_ok=True)
        (out_dir / category / name).write_text(json.dumps(content))

    def trained(category, **changes):
        return dict(config, category=category, betas=list(config["betas"]), **changes)

    metrics = {"image_auroc": 0.99, "pixel_auroc": 0.95, "image_f1": 0.97, "pixel_aupro": 0.91, "pixel_pro_paper": 0.93}
    write("carpet", "results.json", dict(metrics, train_config=trained("carpet")))
    write("carpet", "sweep.json", {"status": "done", "config": results_layer.requested_config(config, "carpet"),
                                   "train_seconds": 100.0, "test_seconds": 20.0})
    write("bottle", "results.json", dict(metrics, image_auroc=0.97, train_config=trained("bottle")))  # test.py by hand
    write("cable", "sweep.json", {"status": "failed", "config": results_layer.requested_config(config, "cable"),
                                  "reason": "train exited 1", "log": "runs/cable/log.txt"})
    write("screw", "results.json", dict(metrics, train_config=trained("screw", epochs=3)))

    text = results_layer.results_md(str(out_dir), "data/mvtec", ["carpet", "bottle", "cable", "screw"], config)
    assert table_row(text, "Image-Level AUC", "") == ["Avg", "Carpet", "Bottle", "Cable", "Screw"]
    assert table_row(text, "Image-Level AUC", "ours, RD (wide_resnet50_2)") == ["0.980 (2/4)", "0.990", "0.970", "failed", "-"]
    # anomalib's Avg over the categories ours counts: (.984 + 1.000) / 2
    assert table_row(text, "Image-Level AUC", "anomalib (seed 42, batch 16)") == ["0.992", "0.984", "1.000", "0.966", "0.985"]
    assert table_row(text, "Image-Level AUC", "paper (Deng & Li, CVPR 2022), 15-category mean")[0] == "0.985"
    assert table_row(text, "Pixel-Level AUC", "RD++ (CVPR 2023), 15-category mean, each category at its epoch of best test score")[0] == "0.983"
    assert "paper (Deng" not in text.split("## Image F1 Score", 1)[1].split("## AUPRO", 1)[0]
    assert table_row(text, "AUPRO", "paper's PRO (per-image, official script; not AUPRO), 15-category mean")[0] == "0.939"
    assert table_row(text, "AUPRO", "ours, the official script's per-image PRO (compare with the paper's PRO)")[:2] == ["0.930 (2/4)", "0.930"]
    assert table_row(text, "Wall time", "train + test (s)") == ["120.0 (1/4)", "120.0", "-", "failed", "-"]
    assert "- cable: failed (train exited 1), log: runs/cable/log.txt" in text
    assert "- screw: results.json is from other settings, not shown: epochs=3 (requested 200)" in text

    gathered = run_sweep("--table_only=1", f"--out_dir={out_dir}", f"--data_root={tmp_path / 'elsewhere'}")
    assert gathered.returncode == 0, gathered.stderr
    results_md = (out_dir / "results.md").read_text()
    assert table_row(results_md, "AUPRO", "") == ["Avg", "Carpet", "Bottle", "Cable"]  # screw: other settings
    assert results_md.strip() in gathered.stdout
