"""
MVTec AD 2's protocol on generated data in its own layout: prepare_dataset.py --format=mvtec_ad_2, train.py
--protocol=mvtec_ad_2, then test.py, which reads the protocol from the checkpoint: pixel metrics at the masks' own
size, the threshold of the validation images, SegF1 at it, each held to an independent transcription of its
definition; and results.md's MVTec AD 2 tables with the published rows, their source and split.

    $ python -m pytest -q tests/test_ad2_protocol.py
"""

import html
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL, assert_user_error, bilinear, make_mvtec_ad_2_source, ref_aupro, run_main, run_sweep
from evaluation.results import results_md
from model.checkpoint import load_checkpoint, load_network, resolve_settings
from model.scoring import predict
from utils.config import script_settings
from utils.images import list_images, read_image

SIZES = {"can": (64, 96), "vial": (96, 64)}  # (height, width) of each object's images, as MVTec ships them
TRAIN = ["--backbone=resnet18", "--weights=none", "--device=cpu", "--image_size=64", "--epochs=1", "--batch_size=2", "--seed=1"]


@pytest.fixture(scope="module")
def evaluated_ad2(tmp_path_factory):
    """(data_root, out_dir): generated MVTec AD 2, converted, a model per object trained with --protocol=mvtec_ad_2 and
    evaluated by test.py with no protocol given."""
    work = tmp_path_factory.mktemp("ad2")
    make_mvtec_ad_2_source(str(work / "source"), SIZES, n_validation=3)
    data_root, out_dir = work / "mvtec_ad_2", work / "runs"
    run_main("scripts/prepare_dataset.py", "--format=mvtec_ad_2", f"--src={work / 'source'}", f"--dst={data_root}", check=True)
    for name in SIZES:
        run_main("train.py", f"--data_root={data_root}", f"--category={name}", f"--out_dir={out_dir}", f"--cache_dir={work / 'cache'}",
                 "--protocol=mvtec_ad_2", *TRAIN, check=True)
        report = [] if name == "can" else ["--report=0"]  # one report: SegF1 shows there
        result = run_main("test.py", f"--checkpoint={out_dir / name / 'checkpoint.pth'}", *report, check=True)
        assert "MVTec AD 2: seg_f1" in result.stdout
    return data_root, out_dir


def scored_at_native_size(checkpoint, paths):
    """Each image's map, scored at the checkpoint's image size and resized to the image's own (the definition)."""
    ckpt = load_checkpoint(checkpoint)
    settings = resolve_settings(ckpt, checkpoint, {})
    network = load_network(ckpt, settings, torch.device("cpu"), checkpoint)
    maps, _ = predict(network, torch.from_numpy(np.stack([read_image(p, settings["image_size"]) for p in paths])))
    native = []
    for amap, path in zip(maps.numpy().astype(np.float64), paths):
        with Image.open(path) as image:
            native.append(bilinear(amap, (image.height, image.width)))
    return native


@pytest.mark.parametrize("name", list(SIZES))
def test_results_hold_mvtec_ad_2_metrics_equal_to_their_definitions(evaluated_ad2, name):
    data_root, out_dir = evaluated_ad2
    results = json.loads((out_dir / name / "results.json").read_text())
    assert results["protocol"] == "mvtec_ad_2" and results["eval_size"] == "native"
    checkpoint = str(out_dir / name / "checkpoint.pth")
    folder = os.path.join(data_root, name)

    validation_paths = list_images(os.path.join(folder, "validation", "good"))
    assert len(validation_paths) == 3
    pixels = np.concatenate([m.ravel() for m in scored_at_native_size(checkpoint, validation_paths)])
    threshold = pixels.mean() + 3 * pixels.std()  # MVTec AD 2's rule: mean + 3 std of the validation pixels
    assert results["seg_threshold"] == pytest.approx(threshold, rel=1e-6)
    assert results["seg_threshold_source"].startswith("mean + 3 std of every pixel of the 3 validation maps of ")
    assert os.path.join(folder, "validation", "good") in results["seg_threshold_source"]

    test_paths = [p for kind in ("bad", "good") for p in list_images(os.path.join(folder, "test", kind))]
    maps = np.stack(scored_at_native_size(checkpoint, test_paths))  # one object: one native size
    masks = np.stack([np.asarray(Image.open(os.path.join(folder, "ground_truth", "bad", os.path.basename(p)[:-4] + "_mask.png"))) > 0
                      if "/bad/" in p else np.zeros(SIZES[name], bool) for p in test_paths])
    assert maps.shape[1:] == SIZES[name]
    predicted = maps >= results["seg_threshold"]
    tp, fp, fn = (predicted & masks).sum(), (predicted & ~masks).sum(), (~predicted & masks).sum()
    assert results["seg_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)  # every pixel pooled
    assert results["pixel_aupro_05"] == pytest.approx(ref_aupro(maps, masks, max_fpr=0.05), abs=1e-5)


def test_the_report_shows_segf1_and_its_threshold(evaluated_ad2):
    _, out_dir = evaluated_ad2
    page = (out_dir / "can" / "report.html").read_text()
    results = json.loads((out_dir / "can" / "results.json").read_text())
    assert "seg_f1" in page and "seg_threshold" in page and "pixel_aupro_05" in page
    assert html.escape(results["seg_threshold_source"]) in page and "each mask&#x27;s own size" in page


def test_results_md_shows_the_published_rows_with_source_and_split(evaluated_ad2):
    data_root, out_dir = evaluated_ad2
    train_config = {**script_settings("train.py"), "data_root": str(data_root), "out_dir": str(out_dir), "protocol": "mvtec_ad_2",
                    "backbone": "resnet18", "weights": "none", "image_size": 64, "epochs": 1, "batch_size": 2, "seed": 1}
    text = results_md(str(out_dir), str(data_root), list(SIZES), train_config)
    for table in ("AUPRO up to FPR 0.05 (MVTec AD 2)", "SegF1 (MVTec AD 2)"):
        section = text.split(f"## {table}\n", 1)[1].split("\n## ", 1)[0]
        assert "| ours, RD (resnet18) |" in section
        for method in ("RD", "RD++"):
            for split in ("TEST_priv", "TEST_priv,mix"):
                assert f"| {method}, MVTec AD 2 paper, {split} (private test set, not test_public) |" in section
    assert "arXiv 2503.21622" in text and "arXiv 2505.21152" in text  # the sources
    assert "only MVTec's evaluation server scores" in text


def test_protocol_needs_the_validation_images(evaluated_ad2, tmp_path):
    data_root, out_dir = evaluated_ad2
    checkpoint = out_dir / "can" / "checkpoint.pth"
    copy = tmp_path / "mvtec_ad_2"
    os.makedirs(copy / "can")
    for part in ("train", "test", "ground_truth"):
        os.symlink(data_root / "can" / part, copy / "can" / part)
    result = run_main("test.py", f"--checkpoint={checkpoint}", f"--data_root={copy}", f"--out_dir={tmp_path / 'runs'}")
    assert_user_error(result, "--protocol=mvtec_ad_2", str(copy / "can" / "validation" / "good"))
    assert not (tmp_path / "runs").exists()
    assert_user_error(run_main("test.py", f"--checkpoint={checkpoint}", "--protocol=mvtec"), "--protocol=mvtec", "mvtec_ad_2")


@pytest.mark.slow  # a sweep: a process per training and evaluation
def test_the_sweep_recognises_mvtec_ad_2_and_runs_its_protocol(evaluated_ad2, tmp_path):
    data_root, _ = evaluated_ad2
    result = run_sweep(f"--data_root={data_root}", f"--out_dir={tmp_path}", *SMALL, "--epochs=1", "--batch_size=2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MVTec AD 2: trained and evaluated with its protocol" in result.stdout
    for name in SIZES:
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert results["protocol"] == "mvtec_ad_2" and results["eval_size"] == "native" and results["seg_f1"] is not None
    text = (tmp_path / "results.md").read_text()
    assert "MVTec AD 2 (test_public)" in text and "## SegF1 (MVTec AD 2)" in text
