"""
The threshold from good images alone (evaluation/threshold.py, calibrate.py) and which threshold a run uses.

Run: python -m pytest -q tests/test_threshold.py
"""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import make_category, run_main
from evaluation.threshold import false_alarm_threshold, min_images, pixel_false_alarm_threshold, validation_threshold
from utils.demo_data import make_sample

CATEGORY = "stripes"


def at_or_above(scores, threshold):
    return int(np.sum(np.asarray(scores) >= threshold))


@pytest.mark.parametrize("seed", range(5))
def test_rule_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    scores = rng.random(200).astype(np.float32).astype(np.float64)  # float32 scores, as the networks give
    ranked = np.sort(scores)[::-1]
    # floor(rate * 200); 0.29 * 200 is 57.99999999999999 in floats and must still allow 58
    for rate, allowed in ((0.005, 1), (0.01, 2), (0.05, 10), (0.1, 20), (0.29, 58), (0.5, 100)):
        threshold, k = false_alarm_threshold(scores, rate)
        assert k == allowed
        assert at_or_above(scores, threshold) == k  # no ties: exactly k
        assert threshold == (ranked[k] + ranked[k - 1]) / 2  # midway: no image sits on the threshold


def test_rule_with_ties():
    # k = floor(0.3 * 10) = 3; the 3rd and 4th largest tie at 8: only the 2 above them may be flagged
    scores = [1, 2, 3, 4, 5, 6, 8, 8, 9, 10]
    threshold, k = false_alarm_threshold(scores, 0.3)
    assert k == 3 and threshold == 8.5 and at_or_above(scores, threshold) == 2
    # the top scores all tie: nothing can be flagged without flagging too many, the threshold is just above them
    threshold, k = false_alarm_threshold([5.0] * 10, 0.2)
    assert k == 2 and threshold == np.nextafter(5.0, np.inf) and at_or_above([5.0] * 10, threshold) == 0


def test_rule_needs_enough_images():
    assert min_images(0.05) == 20 and min_images(0.01) == 100 and min_images(0.3) == 4 and min_images(0.29) == 4
    assert false_alarm_threshold(np.arange(20.0), 0.05)[1] == 1
    with pytest.raises(ValueError, match="at least 20"):
        false_alarm_threshold(np.arange(19.0), 0.05)
    for rate in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\)"):
            false_alarm_threshold(np.arange(100.0), rate)


def validation_maps(seed, offset=0.0):
    """Good maps of different sizes, float32 as the networks give, shifted by offset."""
    rng = np.random.default_rng(seed)
    return [(offset + rng.gamma(2.0, 0.05, (h, w))).astype(np.float32) for h, w in ((40, 30), (25, 50), (33, 33))]


@pytest.mark.parametrize("offset", [0.0, 1000.0])  # 1000: a large mean, where a sum of squares would cancel
def test_validation_threshold_is_mean_plus_3_std_of_the_pixels(offset):
    maps = validation_maps(0, offset)
    pixels = np.concatenate([m.ravel().astype(np.float64) for m in maps])
    # the rule as MVTec's checker writes it: np.mean(scores) + 3 * np.std(scores), over every validation pixel
    expected = np.mean(pixels) + 3 * np.std(pixels)
    assert abs(validation_threshold(maps) - expected) <= 1e-12 * max(1.0, abs(expected))
    same = maps[2].astype(np.float64)  # an (N, H, W) stack works too; one image twice: that image's statistics
    assert abs(validation_threshold(np.stack([maps[2], maps[2]])) - (np.mean(same) + 3 * np.std(same))) < 1e-9
    with pytest.raises(ValueError, match="validation maps: no maps"):
        validation_threshold([])
    with pytest.raises(ValueError, match="a map contains NaN"):
        validation_threshold([np.full((2, 2), np.nan)])


@pytest.mark.parametrize("rate", [0.001, 0.01, 0.05])
def test_pixel_false_alarm_threshold(rate):
    maps = validation_maps(1)
    pixels = np.sort(np.concatenate([m.ravel() for m in maps]).astype(np.float64))[::-1]  # largest first
    threshold, k = pixel_false_alarm_threshold(maps, rate)
    assert k == int(rate * pixels.size + 1e-9)
    # the images' rule on pixels: exactly the pixels above the (k+1)-th largest are at or above the threshold
    assert at_or_above(pixels, threshold) == int(np.sum(pixels > pixels[k])) <= k
    assert np.float32(threshold) == threshold  # a float32 value: float32 maps compare with it as float64 ones do
    assert at_or_above(pixels.astype(np.float32), threshold) == at_or_above(pixels, threshold)


def test_pixel_false_alarm_threshold_ties_and_refusals():
    tied = [np.array([[0.0, 1.0], [1.0, 1.0]], np.float32), np.zeros((2, 3), np.float32)]  # 10 pixels, three of 1.0
    assert at_or_above(np.concatenate([m.ravel() for m in tied]), pixel_false_alarm_threshold(tied, 0.2)[0]) == 0
    assert pixel_false_alarm_threshold(tied, 0.3) == (0.5, 3)
    with pytest.raises(ValueError, match="10 pixels cannot resolve a false-alarm rate of 0.05"):
        pixel_false_alarm_threshold(tied, 0.05)
    with pytest.raises(ValueError, match="false_alarm_rate=1: must be in"):
        pixel_false_alarm_threshold(tied, 1)


def test_demo_data_calibration_images_are_new(tmp_path):
    """--n_calibration adds good images that are neither training nor test images, and changes no other file."""
    args = dict(size=32, n_train=3, n_test_good=2, n_test_defect=1, seed=0)
    make_category(str(tmp_path / "plain"), "disc", **args)
    make_category(str(tmp_path / "more"), "disc", n_calibration=4, **args)
    plain, more = tmp_path / "plain" / "disc", tmp_path / "more" / "disc"
    others = sorted(p.relative_to(plain) for p in plain.rglob("*.png"))
    assert sorted(p.relative_to(more) for p in more.rglob("*.png") if "calibration" not in p.parts) == others
    assert all((plain / p).read_bytes() == (more / p).read_bytes() for p in others)
    calibration = sorted((more / "calibration" / "good").iterdir())
    assert len(calibration) == 4
    pixels = {np.asarray(Image.open(plain / p)).tobytes() for p in others}
    assert not pixels & {np.asarray(Image.open(p)).tobytes() for p in calibration}


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    """200 generated good images of the trained category, neither trained nor tested on."""
    folder = tmp_path_factory.mktemp("good")
    for i in range(200):
        image, _, _ = make_sample(CATEGORY, "calibration/good", i, size=64, seed=0)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def calibrated(trained, good_folder, tmp_path_factory):
    """A copy of the trained run's checkpoint (threshold.json goes beside it), calibrated at rate 0.05."""
    _, checkpoint = trained
    run = tmp_path_factory.mktemp("calibrated")
    os.link(checkpoint, run / "checkpoint.pth")
    result = run_main("calibrate.py", f"--checkpoint={run / 'checkpoint.pth'}", f"--good_images={good_folder}",
                      "--false_alarm_rate=0.05", "--device=cpu", check=True)
    return run, result


def read_scores(path):
    with open(path) as f:
        return [(row["path"], float(row["score"]), int(row["label"])) for row in csv.DictReader(f)]


def test_good_images_threshold(calibrated, good_folder):
    """On 200 good images at rate 0.05: at most 10 of them score at or above the threshold; predict.py then uses it."""
    run, result = calibrated
    record = json.loads((run / "threshold.json").read_text())
    assert record["false_alarm_rate"] == 0.05 and record["n_images"] == 200
    assert record["resolved_false_alarm_rate"] == 0.05 and record["calibration_false_alarm_rate"] <= 0.05
    assert record["good_images"] == str(good_folder) and "floor(false_alarm_rate * n_images)" in record["method"]
    assert record["date"][:2] == "20" and record["image_size"] == 64 and record["map_mode"] == "add"
    assert "threshold.json" in result.stdout

    # score the same images again with predict.py: the threshold comes from threshold.json, and 10 at most are flagged
    scored = run_main("predict.py", f"--checkpoint={run / 'checkpoint.pth'}", f"--images={good_folder}",
                      f"--out_dir={run}", "--device=cpu", check=True)
    assert "threshold.json: calibrated on 200 good images" in scored.stdout
    rows = read_scores(run / CATEGORY / "predict" / "scores.csv")
    assert len(rows) == 200
    flagged = sum(label for _, _, label in rows)
    assert flagged <= 10 and flagged == round(record["calibration_false_alarm_rate"] * 200)
    assert all(label == int(score >= record["threshold"]) for _, score, label in rows)
    # the threshold lies strictly between two scores: rescoring does not move an image across it
    assert min(abs(score - record["threshold"]) for _, score, _ in rows) > 1e-6


def test_threshold_precedence(calibrated, trained, good_folder, tmp_path):
    """--threshold beats threshold.json, which beats results.json's image_f1_threshold."""
    run, _ = calibrated
    out_dir, checkpoint = trained
    one = tmp_path / "one"
    one.mkdir()
    Image.open(good_folder / "000.png").save(one / "a.png")
    given = run_main("predict.py", f"--checkpoint={run / 'checkpoint.pth'}", f"--images={one}", f"--out_dir={tmp_path}",
                     "--threshold=1e9", "--device=cpu", check=True)
    assert "score >= 1000000000.000000, --threshold)" in given.stdout
    # the trained run has no threshold.json but its evaluation: the F1-max threshold, said so
    run_main("test.py", f"--checkpoint={checkpoint}", f"--out_dir={tmp_path}", "--device=cpu", "--report=0", check=True)
    f1 = run_main("predict.py", f"--checkpoint={checkpoint}", f"--images={one}", f"--out_dir={tmp_path}", "--device=cpu", check=True)
    assert "image_f1_threshold of results.json" in f1.stdout


@pytest.mark.parametrize("case", ["empty", "too_few", "rate_zero", "rate_one", "rate_negative", "with_images"])
def test_good_images_errors(trained, good_folder, tmp_path, case):
    _, checkpoint = trained
    run = tmp_path / "run"
    run.mkdir()
    os.link(checkpoint, run / "checkpoint.pth")
    empty, few = tmp_path / "empty", tmp_path / "few"
    empty.mkdir()
    few.mkdir()
    for i in range(19):
        Image.open(good_folder / f"{i:03d}.png").save(few / f"{i:03d}.png")
    args, named = {
        "empty": ([f"--good_images={empty}"], f"good_images={empty}: holds no images"),
        "too_few": ([f"--good_images={few}", "--false_alarm_rate=0.05"], "at least 20 (1/rate) are needed"),
        "rate_zero": ([f"--good_images={good_folder}", "--false_alarm_rate=0"], "--false_alarm_rate=0.0: must be in (0, 1)"),
        "rate_one": ([f"--good_images={good_folder}", "--false_alarm_rate=1"], "--false_alarm_rate=1.0: must be in (0, 1)"),
        "rate_negative": ([f"--good_images={good_folder}", "--false_alarm_rate=-0.1"], "must be in (0, 1)"),
        "with_images": ([f"--good_images={good_folder}", f"--images={few}"], "--images"),  # predict.py's setting, not calibrate.py's
    }[case]
    result = run_main("calibrate.py", f"--checkpoint={run / 'checkpoint.pth'}", *args, "--device=cpu")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.stderr
    assert not (run / "threshold.json").exists()


def test_stale_threshold_file_is_not_used(calibrated, new_images, tmp_path):
    """A threshold.json calibrated on another checkpoint file (one retrained since) is ignored, with a note."""
    run, _ = calibrated
    other = tmp_path / "other"
    other.mkdir()
    os.link(run / "checkpoint.pth", other / "checkpoint.pth")
    record = json.loads((run / "threshold.json").read_text())
    record["checkpoint_sha256"] = "0" * 64
    (other / "threshold.json").write_text(json.dumps(record))
    result = run_main("predict.py", f"--checkpoint={other / 'checkpoint.pth'}", f"--images={new_images}", f"--out_dir={tmp_path}",
                      "--device=cpu")
    assert "its SHA-256 differs" in result.stdout
    assert result.returncode == 2 and "no threshold" in result.stderr  # and no results.json here to fall back on
