"""
High resolution: image_size as a (height, width) pair, training on random crops (train.py --crop_size), the whole
image scored in one pass, pixel metrics at the masks' own size (test.py --eval_size=native), and the errors of bad
sizes. Export at a non-square size is in test_export.py.

    $ python -m pytest -q tests/test_high_resolution.py
    $ python -m pytest -q -m slow tests/test_high_resolution.py   # + crops at native size beat squeezing, on AUPRO
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from conftest import assert_same, assert_user_error, bilinear, run_main, snapshot
from model.checkpoint import load_checkpoint, load_network, resolve_settings
from model.pseudo_anomalies import MIN_PATCH, SimplexPatches, step_generator
from model.scoring import predict
from utils.config import ConfigError, parse_value
from utils.demo_data import make_category
from utils.images import list_images, read_image

HEIGHT, WIDTH = 96, 128
CROP = ["--image_size=96,128", "--crop_size=64"]
COMMON = ["--category=specks", "--backbone=resnet18", "--weights=none", "--device=cpu", "--batch_size=4",
          "--save_minutes=1000", "--deterministic=1", "--seed=5"]


@pytest.fixture(scope="module")
def specks(tmp_path_factory):
    """The high-resolution demo category at 96 x 128 (height x width), its defects still 6-24 pixels."""
    root = tmp_path_factory.mktemp("specks")
    make_category(str(root), "specks", size=(HEIGHT, WIDTH), n_train=6, n_test_good=2, n_test_defect=1, seed=0)
    return str(root)


def train(root, out_dir, *args):
    return run_main("train.py", f"--data_root={root}", f"--out_dir={out_dir}", f"--cache_dir={out_dir}/cache", *COMMON, *args, check=True)


@pytest.fixture(scope="module")
def cropped(specks, tmp_path_factory):
    """2 epochs on 64 x 64 crops of the 96 x 128 images, the images kept in memory: the run folder."""
    out_dir = tmp_path_factory.mktemp("cropped")
    result = train(specks, out_dir, *CROP, "--epochs=2", "--in_memory=1")
    assert "on random 64x64 crops (the teacher's features are not cached)" in result.stdout
    return out_dir


def test_a_size_is_an_int_or_a_height_width_pair():
    assert parse_value("image_size", "768,1024", 256) == [768, 1024]
    assert parse_value("image_size", "[768, 1024]", 256) == [768, 1024]
    assert parse_value("image_size", "512,512", 256) == 512  # a square pair is the int: the two compare equal
    assert parse_value("image_size", "320", 0) == 320
    for bad in ("768,", "768x1024", "768,1024,3", "768.0,1024"):
        with pytest.raises(ConfigError, match="a pair HEIGHT,WIDTH"):
            parse_value("image_size", bad, 256)


def test_images_are_read_at_height_by_width(specks):
    path = list_images(os.path.join(specks, "specks", "train", "good"))[0]
    assert read_image(path, [64, 96]).shape == (3, 64, 96) and read_image(path, 64).shape == (3, 64, 64)


def test_crop_run_saves_its_size_and_crop(cropped):
    config = load_checkpoint(str(cropped / "specks" / "checkpoint.pth"))["config"]
    assert config["image_size"] == [HEIGHT, WIDTH] and config["crop_size"] == 64
    assert json.loads((cropped / "specks" / "config.json").read_text())["image_size"] == [HEIGHT, WIDTH]


def test_crop_run_resumes_bit_identically(specks, cropped, tmp_path):
    train(specks, tmp_path, *CROP, "--epochs=1", "--in_memory=1")
    result = train(specks, tmp_path, *CROP, "--epochs=2", "--in_memory=1", "--resume=1")
    assert "resuming" in result.stdout
    first, resumed = (load_checkpoint(str(d / "specks" / "checkpoint.pth")) for d in (cropped, tmp_path))
    for key in ("bn", "decoder", "optimizer", "step"):
        assert_same(first[key], resumed[key], key)


def test_crops_read_from_the_store_train_as_crops_in_memory(specks, cropped, tmp_path):
    result = train(specks, tmp_path, *CROP, "--epochs=2", "--in_memory=0")
    assert "read batch by batch" not in result.stdout  # in_memory=0 says nothing; it just streams
    first, streamed = (load_checkpoint(str(d / "specks" / "checkpoint.pth")) for d in (cropped, tmp_path))
    for key in ("bn", "decoder", "optimizer"):
        assert_same(first[key], streamed[key], key)


def test_rdpp_trains_on_crops_with_patches_of_the_crop(specks, tmp_path):
    train(specks, tmp_path, "--method=rd++", "--image_size=96,128", "--crop_size=96", "--epochs=1")
    assert "proj" in load_checkpoint(str(tmp_path / "specks" / "checkpoint.pth"))


def test_simplex_patches_of_a_non_square_size_stay_inside_it():
    height, width = 96, 160
    patches = SimplexPatches([height, width], seed=1).patches(64, step_generator(1, 0), torch.device("cpu"))  # (64,3,H,W)
    assert patches.shape == (64, 3, height, width)
    for patch in patches.abs().sum(1) > 0:  # (H,W): where the noise is
        rows, columns = patch.any(1).nonzero()[:, 0], patch.any(0).nonzero()[:, 0]
        assert rows.min() >= 1 and columns.min() >= 1  # the official corner is at least 1
        assert MIN_PATCH <= len(rows) < height // 8 + 1 and MIN_PATCH <= len(columns) < width // 8 + 1


def test_native_evaluation_scores_each_map_at_its_mask_size(specks, tmp_path):
    """A model of 64 x 64 squeezed images, evaluated against the 96 x 128 masks: results.json's pixel metrics are
    sklearn's over the maps resized to the masks (the definition above) and the masks as the files hold them."""
    train(specks, tmp_path, "--image_size=64", "--epochs=1")
    checkpoint = str(tmp_path / "specks" / "checkpoint.pth")
    run_main("test.py", f"--checkpoint={checkpoint}", "--eval_size=native", "--report=0", check=True)
    results = json.loads((tmp_path / "specks" / "results.json").read_text())
    assert results["eval_size"] == "native" and results["image_size"] == 64

    ckpt = load_checkpoint(checkpoint)
    settings = resolve_settings(ckpt, checkpoint, {})
    network = load_network(ckpt, settings, torch.device("cpu"), checkpoint)
    test_folder = os.path.join(specks, "specks", "test")
    paths = [p for d in sorted(os.listdir(test_folder)) for p in list_images(os.path.join(test_folder, d))]
    maps, _ = predict(network, torch.from_numpy(np.stack([read_image(p, 64) for p in paths])))  # (N,64,64)
    pixels, labels = [], []
    for amap, path in zip(maps.numpy().astype(np.float64), paths):
        defect, stem = path.split(os.sep)[-2], os.path.splitext(os.path.basename(path))[0]
        mask_path = os.path.join(specks, "specks", "ground_truth", defect, stem + "_mask.png")
        mask = np.asarray(Image.open(mask_path)) > 0 if defect != "good" else np.zeros((HEIGHT, WIDTH), bool)
        assert mask.shape == (HEIGHT, WIDTH)
        pixels.append(bilinear(amap, mask.shape).ravel())
        labels.append(mask.ravel())
    pixels, labels = np.concatenate(pixels), np.concatenate(labels)
    assert results["pixel_auroc"] == pytest.approx(roc_auc_score(labels, pixels), abs=1e-6)
    assert results["pixel_ap"] == pytest.approx(average_precision_score(labels, pixels), abs=1e-5)


def test_whole_images_are_scored_at_their_size(cropped):
    checkpoint = str(cropped / "specks" / "checkpoint.pth")
    ckpt = load_checkpoint(checkpoint)
    network = load_network(ckpt, resolve_settings(ckpt, checkpoint, {}), torch.device("cpu"), checkpoint)
    maps, scores = predict(network, torch.zeros(2, 3, HEIGHT, WIDTH, dtype=torch.uint8))
    assert maps.shape == (2, HEIGHT, WIDTH) and scores.shape == (2,)


def test_the_report_and_strips_follow_the_height_and_width(cropped):
    run_main("test.py", f"--checkpoint={cropped / 'specks' / 'checkpoint.pth'}", "--save_images=1", check=True)
    folder = cropped / "specks"
    with Image.open(folder / "images" / "dot_000.png") as strip:
        assert strip.size == (3 * WIDTH, HEIGHT)  # input | ground truth | heatmap
    page = (folder / "report.html").read_text()
    assert ".thumb.jpg" in page and "[96, 128]" in page
    assert json.loads((folder / "results.json").read_text())["image_size"] == [HEIGHT, WIDTH]


def test_predict_and_calibrate_score_at_the_checkpoints_height_and_width(specks, cropped, tmp_path):
    checkpoint = f"--checkpoint={cropped / 'specks' / 'checkpoint.pth'}"
    good = os.path.join(specks, "specks", "train", "good")
    run_main("predict.py", checkpoint, f"--images={good}", "--threshold=0.5", f"--out_dir={tmp_path}", "--report=0", check=True)
    with Image.open(tmp_path / "specks" / "predict" / "000.png") as strip:
        assert strip.size == (2 * WIDTH, HEIGHT)  # input | heatmap, each at 96 x 128
    run_main("calibrate.py", checkpoint, f"--good_images={good}", "--false_alarm_rate=0.5", check=True)
    calibration = json.loads((cropped / "specks" / "threshold.json").read_text())
    assert calibration["image_size"] == [HEIGHT, WIDTH]


@pytest.mark.parametrize("args, names", [
    (["--image_size=96,100"], ["--image_size=96,100", "multiple of 32"]),
    (["--image_size=96,"], ["--image_size=96,", "HEIGHT,WIDTH"]),
    (["--image_size=96x128"], ["--image_size=96x128", "HEIGHT,WIDTH"]),
    (["--image_size=96,128", "--crop_size=128"], ["--crop_size=128", "at most the image's shorter side, 96"]),
    (["--image_size=96,128", "--crop_size=48"], ["--crop_size=48", "multiple of 32"]),
    (["--image_size=96,128", "--crop_size=64", "--cache_teacher=1"], ["--cache_teacher='1'", "crop_size"]),
    (["--image_size=96,128", "--crop_size=64", "--method=rd++"], ["--crop_size=64", "rd++"]),
], ids=["not_multiple_of_32", "half_pair", "x_pair", "crop_too_large", "crop_not_multiple", "cache_with_crops", "rdpp_crop_too_small"])
def test_bad_sizes_fail_before_the_work(specks, tmp_path, args, names):
    before = snapshot(specks)
    result = run_main("train.py", f"--data_root={specks}", f"--out_dir={tmp_path / 'runs'}", f"--cache_dir={tmp_path / 'cache'}", *COMMON, *args)
    assert_user_error(result, *names)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists() and snapshot(specks) == before


def test_scoring_commands_refuse_a_bad_size_or_eval_size(cropped):
    checkpoint = f"--checkpoint={cropped / 'specks' / 'checkpoint.pth'}"
    assert_user_error(run_main("test.py", checkpoint, "--eval_size=full"), "--eval_size=full", "image or native")
    assert_user_error(run_main("test.py", checkpoint, "--image_size=96,120"), "--image_size=96,120", "multiple of 32")
    assert_user_error(run_main("test.py", checkpoint, "--image_size=128,96"), "--image_size=[128, 96]", "trained with image_size=[96, 128]")


@pytest.mark.slow  # two trainings and two evaluations at 384 x 512
def test_crops_at_native_size_beat_squeezing_on_aupro(tmp_path):
    """On the small-defect category, a model trained on 128-pixel crops of 384 x 512 images and scoring them whole
    finds the 6-24 pixel defects better than one of the images squeezed to 128 x 128, both evaluated at the masks'
    own size (docs/high_resolution.md measures the same at 768 x 1024)."""
    root = tmp_path / "data"
    make_category(str(root), "specks", size=(384, 512), n_train=12, n_test_good=4, n_test_defect=3, seed=0)
    aupro = {}
    for name, args in (("squeezed", ["--image_size=128"]), ("crops", ["--image_size=384,512", "--crop_size=128"])):
        out_dir = tmp_path / name
        run_main("train.py", f"--data_root={root}", f"--out_dir={out_dir}", f"--cache_dir={tmp_path / 'cache'}", "--category=specks",
                 "--backbone=resnet18", "--weights=none", "--batch_size=4", "--epochs=6", "--seed=0", *args, check=True)
        run_main("test.py", f"--checkpoint={out_dir / 'specks' / 'checkpoint.pth'}", "--eval_size=native", "--report=0", check=True)
        aupro[name] = json.loads((out_dir / "specks" / "results.json").read_text())["pixel_aupro"]
    assert aupro["crops"] > aupro["squeezed"] + 0.1, aupro
