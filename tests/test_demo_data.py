"""
Tests for utils/demo_data.py (scripts/make_demo_data.py), the synthetic MVTec-layout demo dataset.
Run: python -m pytest tests/test_demo_data.py -q   (a few seconds)
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import utils.demo_data as demo

REPO = Path(__file__).resolve().parents[1]

SMALL = dict(size=64, n_train=4, n_test_good=2, n_test_defect=2)

def _files(root):
    # every file under root, relative path -> bytes
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}

def _load(path):
    return np.asarray(Image.open(path))

@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    demo.make_dataset(root, seed=0, **SMALL)
    return root

def test_layout(root):
    assert sorted(os.listdir(root)) == sorted(demo.CATEGORIES)  # no .tmp leftovers
    for name in demo.CATEGORIES:
        cat, defects = root / name, demo.DEFECTS[name]
        assert len(defects) >= 3
        assert sorted(os.listdir(cat)) == ["ground_truth", "test", "train"]
        assert os.listdir(cat / "train") == ["good"]
        assert sorted(os.listdir(cat / "test")) == sorted(("good",) + defects)
        assert sorted(os.listdir(cat / "ground_truth")) == sorted(defects)  # no masks for good
        counts = {"train/good": SMALL["n_train"], "test/good": SMALL["n_test_good"]}
        counts.update({f"test/{d}": SMALL["n_test_defect"] for d in defects})
        for folder, n in counts.items():
            assert sorted(os.listdir(cat / folder)) == [f"{i:03d}.png" for i in range(n)]
            mode = "L" if name == "grid_gray" else "RGB"
            for f in os.listdir(cat / folder):
                im = Image.open(cat / folder / f)
                assert (im.mode, im.size) == (mode, (SMALL["size"],) * 2)
        for d in defects:
            assert sorted(os.listdir(cat / "ground_truth" / d)) == [f"{i:03d}_mask.png" for i in range(SMALL["n_test_defect"])]

def test_masks(root):
    regions = []
    for name in demo.CATEGORIES:
        for d in demo.DEFECTS[name]:
            for i in range(SMALL["n_test_defect"]):
                m = Image.open(root / name / "ground_truth" / d / f"{i:03d}_mask.png")
                assert m.mode == "L"
                assert m.size == Image.open(root / name / "test" / d / f"{i:03d}.png").size
                m = np.asarray(m)
                assert set(np.unique(m)) <= {0, 255}
                assert demo.MIN_AREA <= (m > 0).mean() <= demo.MAX_AREA
                regions.append(ndimage.label(m > 0)[1])
    assert max(regions) > 1  # some masks have several separate defects

def test_defects_are_exactly_in_mask(root):
    # regenerate the normal image each defect was pasted on: outside the mask the file must
    # be identical to it, inside the mask clearly different
    for name in demo.CATEGORIES:
        for d in demo.DEFECTS[name]:
            for i in range(SMALL["n_test_defect"]):
                image, mask, clean = demo.make_sample(name, f"test/{d}", i, SMALL["size"], seed=0)
                assert np.array_equal(_load(root / name / "test" / d / f"{i:03d}.png"), image)
                assert np.array_equal(_load(root / name / "ground_truth" / d / f"{i:03d}_mask.png"), mask)
                diff = np.abs(image.astype(int) - clean.astype(int))
                diff = diff.mean(-1) if diff.ndim == 3 else diff
                inside = mask > 0
                assert diff[~inside].max() == 0, (name, d, i)
                assert diff[inside].mean() > 40, (name, d, i)  # out of 255: clearly visible

def test_defects_stand_out_from_normal_images(root):
    # file-only check: against the per-pixel range of the good images, defect pixels are
    # more often out of range inside the mask than outside it
    for name in demo.CATEGORIES:
        good = np.stack([_load(p).astype(int) for p in sorted((root / name / "train" / "good").glob("*.png"))])
        lo, hi = good.min(0), good.max(0)
        for d in demo.DEFECTS[name]:
            for i in range(SMALL["n_test_defect"]):
                img = _load(root / name / "test" / d / f"{i:03d}.png").astype(int)
                out = np.maximum(lo - img, img - hi).clip(0)
                out = out.mean(-1) if out.ndim == 3 else out
                inside = _load(root / name / "ground_truth" / d / f"{i:03d}_mask.png") > 0
                assert out[inside].mean() > out[~inside].mean() + 15, (name, d, i)

def test_good_images_have_no_mask():
    for folder in ("train/good", "test/good"):
        image, mask, clean = demo.make_sample("disc", folder, 0, size=32)
        assert mask is None and np.array_equal(image, clean)

def test_deterministic_and_independent(root, tmp_path):
    # same seed -> identical bytes, even when generated alone (categories are independent)
    demo.make_category(tmp_path / "a", "disc", seed=0, **SMALL)
    assert _files(tmp_path / "a" / "disc") == _files(root / "disc")
    demo.make_category(tmp_path / "b", "disc", seed=1, **SMALL)
    a, b = _files(tmp_path / "a" / "disc"), _files(tmp_path / "b" / "disc")
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a)

def test_skip_existing_and_force(tmp_path, capsys):
    args = dict(size=32, n_train=1, n_test_good=1, n_test_defect=1)
    (tmp_path / ".stripes.tmp").mkdir(parents=True)  # debris of an interrupted run
    (tmp_path / ".stripes.tmp" / "junk").write_text("x")
    demo.make_category(tmp_path, "stripes", **args)
    assert not (tmp_path / ".stripes.tmp").exists()
    assert not (tmp_path / "stripes" / "junk").exists()
    marker = tmp_path / "stripes" / "marker"
    marker.write_text("x")
    capsys.readouterr()
    demo.make_category(tmp_path, "stripes", **args)
    assert marker.exists() and "skipping" in capsys.readouterr().out
    demo.make_category(tmp_path, "stripes", force=True, **args)
    assert not marker.exists() and (tmp_path / "stripes" / "train" / "good" / "000.png").exists()

def test_unknown_category(tmp_path):
    with pytest.raises(ValueError):
        demo.make_dataset(tmp_path, categories=("disc", "carpet"))
    assert not (tmp_path / "disc").exists()  # validated before anything is written

def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "scripts/make_demo_data.py", f"--out={out}", "--size=32", "--n_train=2",
           "--n_test_good=1", "--n_test_defect=1", "--categories=grid_gray,disc"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    assert sorted(os.listdir(out)) == ["disc", "grid_gray"]
    assert "disc: 2 train, 1 test good, 4 test defect" in r.stdout
    r = subprocess.run(cmd[:-1] + ["--categories=nope"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0
