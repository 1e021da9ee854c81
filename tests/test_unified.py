"""
One model of several categories (train.py --categories=...) under ADer's protocol preset, and its evaluation:
train.py equals a transcription of ADer's RD training loop, in_memory=0 and 1 and a run resumed after SIGINT give
bit-identical checkpoints, test.py writes each category's results and their mean, one category scored alone scores
as in the full evaluation, and the sweep's unified mode isolates a failing category and resumes.

ADer is read at github.com/zhangzjn/ADer commit 902937a7ed7fa7689674a4ac9b8fe9a72a40c402 (2025-01-29).

Run: python -m pytest -q tests/test_unified.py   (about 3 minutes on 2 CPU cores: each case runs train.py or test.py
in new processes, as a user does)
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torchvision import transforms

import train
from model.protocols import apply_protocol
from conftest import ROOT, SMALL, assert_same, make_category, run_main
from model import OCBE, Decoder, build_encoder
from model.checkpoint import load_checkpoint
from utils.runs import ckpt_path, run_name

CATEGORIES = ["disc", "grid_gray", "stripes"]  # sorted, as train.py records them
RUN = "disc+grid_gray+stripes"
N_TRAIN = {"disc": 4, "grid_gray": 4, "stripes": 5}  # 13 images: batches of 4 with ADer's drop_last, 3 steps an epoch
SIZE, EPOCHS, BATCH = 64, 3, 4
# ADer's protocol on the small model; lr_decay 0.8 of 3 epochs: the lr drops x0.1 for the 3rd epoch. --clip_grad=0.2
# (the command line wins over the preset's 5.0, which these small gradients never reach) clips most steps but the last
# few (a clipped first step would prove nothing: Adam's first update does not depend on the gradient's scale).
UNIFIED = [f"--categories={','.join(CATEGORIES)}", "--protocol=ader", f"--epochs={EPOCHS}", f"--batch_size={BATCH}",
           "--clip_grad=0.2", "--cache_teacher=0", "--save_minutes=1000", "--deterministic=1", *SMALL]
ADER_COMMIT = "902937a7ed7fa7689674a4ac9b8fe9a72a40c402"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("unified_data"))
    for seed, name in enumerate(CATEGORIES):
        make_category(root, name, size=64, n_train=N_TRAIN[name], n_test_good=2, n_test_defect=1, seed=seed)
    return root


@pytest.fixture(scope="module")
def unified(data_root, tmp_path_factory):
    """The unified model trained with its images in memory: its out_dir."""
    out_dir = str(tmp_path_factory.mktemp("unified_runs"))
    run_main("train.py", f"--data_root={data_root}", f"--out_dir={out_dir}", "--in_memory=1", *UNIFIED, check=True)
    return out_dir


# -----------------------------------------------------------------------------
# the preset


def test_ader_preset_and_the_command_line_over_it():
    settings = {k: getattr(train, k) for k in train.config_keys}
    settings.update(protocol="ader", method="rd", epochs=300)  # as apply_overrides leaves them for this command line
    apply_protocol(settings, ["--protocol=ader", "--epochs=300"])
    assert (settings["epochs"], settings["batch_size"], settings["lr"], settings["betas"], settings["seed"]) == (300, 16, 0.005, (0.5, 0.999), 42)
    assert (settings["lr_decay"], settings["clip_grad"], settings["drop_last"], settings["image_size"]) == (0.8, 5.0, True, 256)
    rdpp = {k: getattr(train, k) for k in train.config_keys}
    rdpp.update(protocol="ader", method="rd++")
    apply_protocol(rdpp, [])
    # rdpp_trainer.py: proj_opt at cfg.optim.lr = 0.001, distill_opt at 5 x 0.001; the StepLR scheduler drives the
    # base trainer's own optimizer, which never steps, so RD++'s learning rates stay constant in ADer; its
    # backward_term zeroes both optimizers' gradients before each backward and steps when (iter + 1) % 2 == 0
    assert (rdpp["proj_lr"], rdpp["lr"], rdpp["lr_decay"], rdpp["clip_grad"], rdpp["epochs"]) == (0.001, 0.005, 0.0, 5.0, 100)
    assert (rdpp["step_every"], rdpp["accumulate"]) == (2, False)  # zero_grad before every backward, a step every 2nd
    official = {k: getattr(train, k) for k in train.config_keys}
    apply_protocol(official, [])
    assert official == {k: getattr(train, k) for k in train.config_keys}  # official: the defaults as they are
    assert ADER_COMMIT[:7] in open(os.path.join(ROOT, "model", "protocols.py")).read()


def test_run_names():
    assert run_name(["stripes"]) == "stripes"
    assert run_name(["stripes", "disc"]) == "disc+stripes"
    long = [f"category_{i:02d}" for i in range(15)]
    assert run_name(long).startswith("unified_15_categories_") and run_name(long) == run_name(long[::-1])


# -----------------------------------------------------------------------------
# training


def ader_loop(data_root):
    """ADer's RD training (trainer/_base_trainer.py, rd_trainer.py, optim/scheduler.py) transcribed: per iteration t
    (0-based) the lr is 0.005 * 0.1 ** (t // decay_t), decay_t = int(0.8 * epochs) epochs of iterations (timm's
    StepLRScheduler); zero_grad, the frozen teacher's features, CosLoss (sum over taps of the batch mean of 1 - cos of
    the flattened maps), backward, timm's dispatch_clip_grad (torch.nn.utils.clip_grad_norm_ over the network's
    parameters), an Adam step (betas 0.5, 0.999); batches of a shuffled union, the last incomplete one dropped.
    The shuffle is train.py's (seed + epoch): ADer's DataLoader draws its own. Adam is torch's fused implementation,
    as train.py's: ADer's default one computes the same update with other roundings, which Adam turns into
    differences of up to 1e-4 in a few weights of 16 million after 9 steps. Returns (ocbe, decoder, times clipped)."""
    torch.manual_seed(42)
    encoder = build_encoder("resnet18", weights="none", seed=42)
    ocbe, decoder = OCBE("resnet18"), Decoder("resnet18")
    tf = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    folders = [os.path.join(data_root, c, "train", "good") for c in CATEGORIES]
    images = torch.stack([tf(Image.open(os.path.join(f, n)).convert("RGB")) for f in folders for n in sorted(os.listdir(f))])
    params = list(ocbe.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.999), fused=True)
    steps_per_epoch = len(images) // BATCH
    decay_t = int(0.8 * EPOCHS) * steps_per_epoch
    cos = torch.nn.CosineSimilarity()
    ocbe.train(), decoder.train()
    t, clipped = 0, 0
    for epoch in range(EPOCHS):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(42 + epoch))
        for i in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = 0.005 * 0.1 ** (t // decay_t)
            optimizer.zero_grad()
            with torch.no_grad():
                teacher = encoder(images[order[i * BATCH:(i + 1) * BATCH]])
            student = decoder(ocbe(teacher))
            loss = sum(torch.mean(1 - cos(a.view(a.shape[0], -1), b.view(b.shape[0], -1))) for a, b in zip(teacher, student))
            loss.backward()
            total = torch.nn.utils.clip_grad_norm_(params, 0.2)  # scaled by 0.2 / (norm + 1e-6) where that is < 1
            clipped += int(t > 0 and total > 0.2)
            optimizer.step()
            t += 1
    return ocbe, decoder, clipped


def test_unified_training_follows_ader_loop(unified, data_root):
    path = ckpt_path(unified, RUN)
    checkpoint = load_checkpoint(path)
    assert checkpoint["step"] == EPOCHS * 3 and checkpoint["config"]["categories"] == CATEGORIES
    assert checkpoint["config"]["category"] == "" and checkpoint["config"]["protocol"] == "ader"
    with open(os.path.join(unified, RUN, "config.json")) as f:
        assert json.load(f)["categories"] == CATEGORIES
    assert optimizer_lrs(checkpoint) == [pytest.approx(0.0005)]  # the 3rd epoch's, x0.1
    ocbe, decoder, clipped = ader_loop(data_root)
    assert clipped >= 3  # steps after the first whose gradient was clipped
    for name, module in (("bn", ocbe), ("decoder", decoder)):
        for k, v in module.state_dict().items():
            assert torch.allclose(checkpoint[name][k].float(), v.float(), atol=1e-6, rtol=1e-6), f"{name}.{k}"


def optimizer_lrs(checkpoint):
    return [group["lr"] for group in checkpoint["optimizer"]["param_groups"]]


def test_streamed_training_is_bit_identical(unified, data_root, tmp_path):
    """in_memory=0 reads every batch from the store file: the checkpoint is the in-memory run's, bit for bit."""
    run_main("train.py", f"--data_root={data_root}", f"--out_dir={tmp_path}", "--in_memory=0", *UNIFIED, check=True)
    streamed, in_memory = load_checkpoint(ckpt_path(str(tmp_path), RUN)), load_checkpoint(ckpt_path(unified, RUN))
    for key in ("bn", "decoder", "optimizer", "step", "epoch"):
        assert_same(streamed[key], in_memory[key], key)


@pytest.mark.slow  # a signal to a training process
def test_unified_resume_after_sigint_is_bit_identical(unified, data_root, tmp_path):
    args = [sys.executable, "train.py", f"--data_root={data_root}", f"--out_dir={tmp_path}", "--in_memory=0", *UNIFIED, "--save_minutes=0"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for line in process.stdout:
            if line.startswith("epoch 1/3"):
                process.send_signal(signal.SIGINT)
                break
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGINT, stderr
    stopped = load_checkpoint(ckpt_path(str(tmp_path), RUN))
    assert 3 <= stopped["step"] < 9, stopped["step"]
    run_main("train.py", f"--data_root={data_root}", f"--out_dir={tmp_path}", "--resume=1", "--in_memory=0", *UNIFIED, check=True)
    final, uninterrupted = load_checkpoint(ckpt_path(str(tmp_path), RUN)), load_checkpoint(ckpt_path(unified, RUN))
    for key in ("bn", "decoder", "optimizer", "step", "epoch"):
        assert_same(final[key], uninterrupted[key], key)


# -----------------------------------------------------------------------------
# evaluation


def scores(path):
    with open(path) as f:
        return {row["path"]: row["score"] for row in csv.DictReader(f)}


def test_test_py_writes_each_category_and_the_mean(unified, data_root, tmp_path):
    checkpoint = ckpt_path(unified, RUN)
    result = run_main("test.py", f"--checkpoint={checkpoint}", check=True)
    assert "mean over 3 of 3 categories" in result.stdout
    per_category = {}
    for c in CATEGORIES:
        with open(os.path.join(unified, RUN, c, "results.json")) as f:
            per_category[c] = json.load(f)
        assert per_category[c]["category"] == c and per_category[c]["n_images"] == 6
    with open(os.path.join(unified, RUN, "results.json")) as f:
        mean = json.load(f)
    assert mean["categories"] == mean["evaluated"] == CATEGORIES and mean["missing"] == []
    for key in ("image_auroc", "pixel_auroc", "image_f1", "pixel_aupro", "image_ap", "pixel_ap"):
        assert mean[key] == pytest.approx(sum(per_category[c][key] for c in CATEGORIES) / 3, abs=1e-12), key
        assert mean["per_category"]["disc"][key] == per_category["disc"][key]
    assert "image_f1_threshold" not in mean  # a threshold is a category's own

    # one category alone, elsewhere: the same scores as in the full evaluation
    other = tmp_path / "alone"
    result = run_main("test.py", f"--checkpoint={checkpoint}", "--category=grid_gray", f"--out_dir={other}", check=True)
    assert "mean over 1 of 3 categories (missing: disc, stripes)" in result.stdout
    alone = other / RUN / "grid_gray"
    assert scores(alone / "scores.csv") == scores(os.path.join(unified, RUN, "grid_gray", "scores.csv"))
    with open(alone / "results.json") as f:
        assert json.load(f)["pixel_aupro"] == per_category["grid_gray"]["pixel_aupro"]
    refused = run_main("test.py", f"--checkpoint={checkpoint}", "--category=bottle")
    assert refused.returncode == 2 and "was trained on disc, grid_gray, stripes, not on it" in refused.stderr
    no_threshold = run_main("predict.py", f"--checkpoint={checkpoint}", f"--images={os.path.join(data_root, 'disc', 'test', 'good')}")
    assert no_threshold.returncode == 2 and "pass --category=<one of them> to use its threshold" in no_threshold.stderr


@pytest.mark.slow  # a sweep: a process per run
def test_sweep_unified_isolates_a_failing_category_and_resumes(data_root, tmp_path):
    """grid_gray loses a mask: its evaluation fails alone; a rerun trains nothing and evaluates only grid_gray."""
    broken = tmp_path / "data"
    shutil.copytree(data_root, broken)
    masks = broken / "grid_gray" / "ground_truth"
    os.unlink(next(p for p in sorted(masks.rglob("*.png"))))
    out_dir = tmp_path / "runs"
    args = [sys.executable, os.path.join("scripts", "sweep.py"), "--unified=1", f"--data_root={broken}",
            f"--out_dir={out_dir}", "--epochs=1", f"--batch_size={BATCH}", *SMALL]
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 1, first.stdout + first.stderr
    assert any(line.startswith("grid_gray FAILED") and "test exited 2" in line for line in first.stdout.splitlines())
    for c in ("disc", "stripes"):
        assert os.path.isfile(out_dir / RUN / c / "results.json")
    table = (out_dir / RUN / "results.md").read_text()
    assert "| ours, RD (resnet18), one model of the 3 categories |" in table and "| failed |" in table
    mtime = os.stat(out_dir / RUN / "checkpoint.pth").st_mtime_ns

    shutil.copytree(os.path.join(data_root, "grid_gray", "ground_truth"), masks, dirs_exist_ok=True)  # repaired
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"skip training {RUN}" in second.stdout and "start grid_gray" in second.stdout and "start disc" not in second.stdout
    assert os.stat(out_dir / RUN / "checkpoint.pth").st_mtime_ns == mtime
    with open(out_dir / RUN / "results.json") as f:
        assert json.load(f)["evaluated"] == CATEGORIES


def test_ader_map_scale_leaves_every_metric_unchanged():
    """ADer's map is the taps' sum divided by len(taps) * sum(tap weights) = 3 x 3 (util/metric.py cal_anomaly_map,
    amap_mode 'add', weights 1), blurred after; ours is the sum. A positive factor keeps every ranking: all our
    threshold-free metrics are the same (ADer's F1/IoU over min-max normalised maps are scale-free too)."""
    from evaluation.metrics import compute_metrics
    from evaluation.results import AVERAGED
    generator = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 4096, (8, 32, 32), generator=generator).double() / 1024  # distinct levels, no ties made by /9
    masks = torch.zeros(8, 32, 32, dtype=torch.bool)
    masks[4:, 8:20, 10:22] = True
    maps[4:, 8:20, 10:22] += 1.0  # anomalies score higher, not perfectly
    labels = masks.flatten(1).any(1).long()
    ours = compute_metrics(maps.amax((1, 2)), labels, maps, masks)
    ader = compute_metrics((maps / 9).amax((1, 2)), labels, maps / 9, masks)
    for key in AVERAGED:
        assert ours[key] == pytest.approx(ader[key], abs=1e-12), key
    assert ader["image_f1_threshold"] == pytest.approx(ours["image_f1_threshold"] / 9)
