"""
Pictures and scoring of new images: test.py --save_images=K, predict.py --images=DIR, evaluation/visualize.py.

    $ python -m pytest -q tests/test_visualize.py
"""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

from conftest import run_main
from evaluation.visualize import draw_outline, jet

SIZE = 64  # the `trained` checkpoint's image_size
CATEGORY = "stripes"


@pytest.fixture(scope="module")
def category_folder(evaluated):
    """The session's evaluation (conftest.evaluated, --save_images=2): its category folder."""
    return evaluated[0] / CATEGORY


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def panels(path, n):
    """The n (S,S,3) panels of a strip, checking its size on the way."""
    strip = np.asarray(Image.open(path))
    assert strip.shape == (SIZE, n * SIZE, 3), path
    return [strip[:, i * SIZE:(i + 1) * SIZE] for i in range(n)]


def test_jet_endpoints():
    assert jet([0.0, 0.5, 1.0]).tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0]]
    assert jet([-3.0, 7.0]).tolist() == [[0, 0, 128], [128, 0, 0]]  # values outside [0,1] are clipped
    assert jet(np.zeros((2, 5))).shape == (2, 5, 3)


def test_outline_is_the_inner_contour():
    image = np.full((10, 10, 3), 50, dtype=np.uint8)
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:7, 3:8] = True  # a 5x5 square: its 1-pixel contour is 16 pixels, its inside 3x3
    out = draw_outline(image, mask)
    red = (out == [255, 0, 0]).all(axis=-1)
    assert red.sum() == 16 and red[2, 3] and not red[4, 5]
    assert (out[~red] == 50).all()


def test_save_images(category_folder, data_root):
    test_folder = os.path.join(data_root, CATEGORY, "test")
    expected = {}
    for defect in sorted(os.listdir(test_folder)):
        for name in sorted(os.listdir(os.path.join(test_folder, defect)))[:2]:  # --save_images=2
            expected[f"{defect}_{name[:-4]}.png"] = (defect, name)
    assert len(expected) > 2 and sorted(os.listdir(category_folder / "images")) == sorted(expected)

    for strip_name, (defect, name) in expected.items():
        image, outlined, heatmap = panels(category_folder / "images" / strip_name, 3)
        reference = Image.open(os.path.join(test_folder, defect, name)).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        assert np.array_equal(image, np.asarray(reference)), strip_name
        assert not np.array_equal(heatmap, image)
        if defect == "good":
            assert np.array_equal(outlined, image)
            continue
        mask_file = os.path.join(data_root, CATEGORY, "ground_truth", defect, name[:-4] + "_mask.png")
        mask = np.asarray(Image.open(mask_file).convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)) > 127.5
        outline = mask & ~binary_erosion(mask)
        assert outline.any(), strip_name
        assert (outlined[outline] == [255, 0, 0]).all(), strip_name  # every pixel of the outline is red
        assert np.array_equal(outlined[~outline], image[~outline]), strip_name

    results = json.loads((category_folder / "results.json").read_text())
    low, high = results["heatmap_range"]
    assert low < high and results["image_f1_threshold"] is not None


def test_images_scores_new_folder(evaluated, new_images):
    run, _ = evaluated
    result = run_main("predict.py", f"--checkpoint={run / 'checkpoint.pth'}", f"--out_dir={run}", f"--images={new_images}",
                      "--device=cpu", check=True)  # predict.py has no data_root: the test split is not loaded
    category_folder = run / CATEGORY
    assert "ignored 1 non-image files" in result.stdout
    rows = read_csv(category_folder / "predict" / "scores.csv")
    names = ["a_copy.png", "b.jpg", "c.BMP", "d_gray.png", "e_rgba.png"]
    assert [row["path"] for row in rows] == [str(new_images / n) for n in names]
    threshold = json.loads((category_folder / "results.json").read_text())["image_f1_threshold"]
    for row in rows:
        score = float(row["score"])
        if abs(score - threshold) > 1e-5:  # scores.csv rounds to 6 decimals
            assert row["label"] == str(int(score >= threshold)), row
    # the same file scores the same as in the evaluation
    evaluation = {row["path"]: float(row["score"]) for row in read_csv(category_folder / "scores.csv")}
    assert float(rows[0]["score"]) == pytest.approx(evaluation["test/good/000.png"], abs=2e-6)
    for strip_name in ["a_copy.png", "b.jpg.png", "c.BMP.png", "d_gray.png", "e_rgba.png"]:
        panels(category_folder / "predict" / strip_name, 2)


def test_images_threshold_override(trained, new_images, tmp_path):
    """--threshold labels the images without any evaluation (no results.json in this out_dir)."""
    _, checkpoint = trained
    for threshold, label in ((0, "1"), (1e9, "0")):
        run_main("predict.py", f"--checkpoint={checkpoint}", f"--out_dir={tmp_path}", f"--images={new_images}",
                 f"--threshold={threshold}", "--device=cpu", check=True)
        rows = read_csv(tmp_path / CATEGORY / "predict" / "scores.csv")
        assert len(rows) == 5 and all(row["label"] == label for row in rows)


@pytest.mark.parametrize("case", ["empty", "missing", "no_results", "no_images", "save_images_with_images"])
def test_images_errors(trained, new_images, tmp_path, case):
    _, checkpoint = trained
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    args, named = {
        "empty": ([f"--images={empty}"], str(empty)),
        "missing": ([f"--images={missing}"], str(missing)),
        "no_results": ([f"--images={new_images}"], os.path.join(tmp_path, CATEGORY, "results.json")),
        "no_images": (["--threshold=0.5"], "--images"),
        "save_images_with_images": ([f"--images={new_images}", "--threshold=0.5", "--save_images=1"], "--save_images"),
    }[case]
    result = run_main("predict.py", f"--checkpoint={checkpoint}", f"--out_dir={tmp_path}", *args)  # in this process: faster
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.stderr
    if case == "no_results":
        assert "--threshold" in lines[0]
    assert not (tmp_path / CATEGORY / "predict").exists()
