"""scripts/mvtec_ad2_submission.py: an MVTec AD 2 submission written from a generated replica of the dataset as MVTec
distributes it, held to a transcription of the rules of MVTec's checker (check_and_prepare_data_for_upload.py and
utils.py of MVTecAD2_public_code_utils, read at github denisonus/mvtec_research 0f13574), and its refusals."""

import json
import os
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import SMALL, assert_user_error, make_mvtec_ad_2_source, run_main, snapshot
from mvtec_ad2_submission import CHECKER_COUNTS

SCRIPT = "scripts/mvtec_ad2_submission.py"
SIZES = {"can": (80, 64), "vial": (64, 64)}  # native sizes (height, width); can's is not square: resized twice
SPLITS = {"test_private": "regular", "test_private_mixed": "mixed"}
# MVTec's published test_private (and test_private_mixed) sizes, as its checker's OBJECT_FILE_COUNTER holds them
PUBLISHED = {"can": 321, "fabric": 314, "fruit_jelly": 255, "rice": 277, "sheet_metal": 142, "vial": 276, "wallplugs": 232,
             "walnuts": 228}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(data_root, runs): the replica, and a checkpoint per object under runs/<object>/checkpoint.pth. One train.py run
    (1 epoch, random resnet18) serves both objects: the second object's checkpoint is a copy of the first's."""
    root = tmp_path_factory.mktemp("mvtec_ad_2")
    data_root, runs = str(root / "source"), str(root / "runs")
    make_mvtec_ad_2_source(data_root, SIZES)
    run_main("train.py", f"--data_root={data_root}", "--category=can", f"--out_dir={runs}", "--epochs=1", "--batch_size=4",
             *SMALL, check=True)
    os.makedirs(os.path.join(runs, "vial"))
    shutil.copy(os.path.join(runs, "can", "checkpoint.pth"), os.path.join(runs, "vial", "checkpoint.pth"))
    return data_root, runs


def submit(source, out, *more):
    data_root, runs = source
    return run_main(SCRIPT, f"--data_root={data_root}", f"--runs={runs}", f"--out={out}", "--objects=can,vial", "--device=cpu", *more)


def assert_checker_rules(submission, data_root, objects):
    """The checker's rules for the objects written here (it wants all 8: CHECKER_COUNTS), plus native sizes."""
    assert sorted(os.listdir(submission)) == ["anomaly_images", "anomaly_images_thresholded"]
    for kind, suffix in (("anomaly_images", ".tiff"), ("anomaly_images_thresholded", ".png")):
        assert sorted(os.listdir(os.path.join(submission, kind))) == sorted(objects)
        for name in objects:
            assert sorted(os.listdir(os.path.join(submission, kind, name))) == sorted(SPLITS)
            counts = set()
            for split, label in SPLITS.items():
                folder = os.path.join(submission, kind, name, split)
                n = len(os.listdir(os.path.join(data_root, name, split)))
                counts.add(n)
                assert sorted(os.listdir(folder)) == [f"{i:03d}_{label}{suffix}" for i in range(n)]  # nothing else
                for i in range(n):
                    path = os.path.join(folder, f"{i:03d}_{label}{suffix}")
                    image = tifffile.imread(path) if suffix == ".tiff" else np.asarray(Image.open(path))
                    assert image.ndim == 2, path
                    if suffix == ".tiff":
                        assert image.dtype == np.float16 and np.isfinite(image).all(), path
                    else:
                        assert set(np.unique(image).tolist()) <= {0, 255}, path
                    with Image.open(os.path.join(data_root, name, split, f"{i:03d}_{label}.png")) as src:
                        assert image.shape == (src.height, src.width), path
            assert len(counts) == 1  # the same N in both splits


def test_checker_counts_are_mvtecs():
    assert CHECKER_COUNTS == PUBLISHED


@pytest.mark.slow
def test_submission(source, tmp_path):
    data_root, _ = source
    out = tmp_path / "submission"
    result = submit(source, out)
    assert result.returncode == 0, result.stderr
    assert "partial submission" in result.stdout
    assert_checker_rules(str(out), data_root, list(SIZES))
    assert sorted(os.listdir(tmp_path)) == ["submission", "submission.thresholds.json"]  # no temporary folder left
    thresholds = json.loads((tmp_path / "submission.thresholds.json").read_text())["thresholds"]
    assert sorted(thresholds) == sorted(SIZES)
    for name, value in thresholds.items():
        assert f"{name}: threshold {value:.6f}" in result.stdout
        for split, label in SPLITS.items():  # the PNG binarises the map (float32, before float16) at the threshold
            for i in range(len(os.listdir(os.path.join(data_root, name, split)))):
                amap = tifffile.imread(out / "anomaly_images" / name / split / f"{i:03d}_{label}.tiff").astype(np.float32)
                binary = np.asarray(Image.open(out / "anomaly_images_thresholded" / name / split / f"{i:03d}_{label}.png"))
                assert (binary[amap > value * 1.002] == 255).all() and (binary[amap < value * 0.998] == 0).all()
    # the maps of the second object, scored with the same weights, differ from the first's: each object is its own
    assert thresholds["can"] != thresholds["vial"]

    before = snapshot(tmp_path)
    assert_user_error(submit(source, out), str(out), "--overwrite=1")  # an existing submission is kept
    assert snapshot(tmp_path) == before
    assert submit(source, out, "--overwrite=1").returncode == 0
    assert_checker_rules(str(out), data_root, list(SIZES))
    assert sorted(os.listdir(tmp_path)) == ["submission", "submission.thresholds.json"]


@pytest.mark.slow
def test_refusals(source, tmp_path):
    data_root, runs = source
    out = tmp_path / "submission"
    # the default is all 8 objects, which the replica lacks: the first missing folder is named
    result = run_main(SCRIPT, f"--data_root={data_root}", f"--runs={runs}", f"--out={out}")
    assert_user_error(result, os.path.join(data_root, "fabric", "test_private"))
    # a root without the private splits
    broken = tmp_path / "broken"
    shutil.copytree(data_root, broken)
    shutil.rmtree(broken / "vial" / "test_private")
    assert_user_error(submit((str(broken), runs), out), os.path.join(str(broken), "vial", "test_private"))
    # a missing checkpoint
    empty_runs = tmp_path / "runs"
    shutil.copytree(os.path.join(runs, "can"), empty_runs / "can")
    assert_user_error(submit((data_root, str(empty_runs)), out), os.path.join(str(empty_runs), "vial", "checkpoint.pth"))
    # an output that cannot be written: under a file
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert_user_error(submit(source, blocker / "submission"), str(blocker))
    assert not out.exists()
    # a failure while scoring (an unreadable image of the second object) leaves no submission, half or whole
    shutil.copytree(data_root, tmp_path / "corrupt")
    (tmp_path / "corrupt" / "vial" / "test_private_mixed" / "001_mixed.png").write_bytes(b"not a png")
    assert_user_error(submit((str(tmp_path / "corrupt"), runs), out), "001_mixed.png")
    assert sorted(os.listdir(tmp_path)) == ["a_file", "broken", "corrupt", "runs"]
