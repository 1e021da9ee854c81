"""
Tests for scripts/prepare_dataset.py: for each format a small replica of the dataset as its authors distribute it
(their file names, nesting, mask values and split file) is converted, the counts and masks are checked, and the
converted data trains and tests. Also: the sweep on a converted VisA root with no --categories, evaluation with image
labels only, masks stored as 0/1 or label indices, and the converter's refusals.

Run: python -m pytest -q tests/test_prepare_dataset.py   (about 3 minutes on 2 CPU cores)
"""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import SMALL, make_category, run_main, run_sweep, table_row

SIZE = 64
BOX = (slice(20, 36), slice(24, 40))  # the defect of every anomalous replica image: 16 x 16 pixels


def write_image(path, seed, defect=False):
    """A smooth random colour image with a white square where defect is set."""
    rng = np.random.default_rng(seed)
    image = np.repeat(np.repeat(rng.integers(60, 200, (8, 8, 3)), 8, axis=0), 8, axis=1).astype(np.uint8)
    if defect:
        image[BOX] = 255
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path)


def write_mask(path, value=255, box=BOX):
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[box] = value
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(mask).save(path)


def tree(root):
    """{relative path: (size, mtime)} of every file: what must not change in a source."""
    return {os.path.relpath(os.path.join(d, f), root): (os.path.getsize(os.path.join(d, f)), os.path.getmtime(os.path.join(d, f)))
            for d, _, files in os.walk(root) for f in files}


def prepare(fmt, src, dst, *extra, check=True):
    before = tree(src)
    result = run_main("scripts/prepare_dataset.py", f"--format={fmt}", f"--src={src}", f"--dst={dst}", *extra, check=check)
    assert tree(src) == before  # the source is only read
    return result


def check_masks(category_dir, expected):
    """Every mask of the category is a 0/255 PNG whose anomalous pixels are exactly `expected` (a bool (64,64))."""
    masks = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(category_dir, "ground_truth")) for f in files]
    assert masks
    for path in masks:
        assert path.endswith("_mask.png")
        values = np.asarray(Image.open(path))
        assert set(np.unique(values).tolist()) <= {0, 255}
        assert np.array_equal(values == 255, expected), path


def box_mask(box=BOX):
    mask = np.zeros((SIZE, SIZE), bool)
    mask[box] = True
    return mask


def train_and_test(data_root, category, out_dir):
    """train.py then test.py on one converted category; its results.json."""
    run_main("train.py", f"--data_root={data_root}", f"--category={category}", f"--out_dir={out_dir}", "--epochs=1",
             "--batch_size=4", *SMALL, check=True)
    run_main("test.py", f"--checkpoint={os.path.join(out_dir, category, 'checkpoint.pth')}", check=True)
    return json.load(open(os.path.join(out_dir, category, "results.json")))


def files(folder):
    return sorted(os.listdir(folder))


# -----------------------------------------------------------------------------
# replicas of each dataset's distributed layout

def make_visa(root, objects=("candle", "pcb1")):
    """VisA.tar as extracted: <object>/Data/Images/{Normal,Anomaly}/*.JPG, masks <object>/Data/Masks/Anomaly/*.png
    holding label values (here 1 and 2, two defect instances), and split_csv/1cls.csv."""
    rows = []
    for k, obj in enumerate(objects):
        for i in range(6):  # 4 train, 2 test
            name = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            write_image(os.path.join(root, name), seed=100 * k + i)
            rows.append([obj, "train" if i < 4 else "test", "normal", name, ""])
        for i in range(2):
            name, mask = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG", f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            write_image(os.path.join(root, name), seed=100 * k + 50 + i, defect=True)
            label = np.zeros((SIZE, SIZE), np.uint8)
            label[20:36, 24:32], label[20:36, 32:40] = 1, 2
            os.makedirs(os.path.dirname(os.path.join(root, mask)), exist_ok=True)
            Image.fromarray(label).save(os.path.join(root, mask))
            rows.append([obj, "test", "anomaly", name, mask])
    os.makedirs(os.path.join(root, "split_csv"))
    with open(os.path.join(root, "split_csv", "1cls.csv"), "w", newline="") as f:
        csv.writer(f).writerows([["object", "split", "label", "image", "mask"], *rows])


def make_mvtec_3d(root):
    """mvtec_3d_anomaly_detection.tar.xz: <cat>/{train,validation}/good/{rgb,xyz}, test/<type>/{rgb,gt,xyz}."""
    for split, kinds, n in (("train", ("good",), 4), ("validation", ("good",), 2), ("test", ("good", "crack"), 2)):
        for kind in kinds:
            for i in range(n):
                base = os.path.join(root, "bagel", split, kind)
                write_image(os.path.join(base, "rgb", f"{i:03d}.png"), seed=i + 10 * len(split), defect=kind != "good")
                os.makedirs(os.path.join(base, "xyz"), exist_ok=True)
                open(os.path.join(base, "xyz", f"{i:03d}.tiff"), "wb").write(b"II*\0")
                if split == "test":  # test/good has all-zero gt masks too
                    write_mask(os.path.join(base, "gt", f"{i:03d}.png"), 255 if kind != "good" else 0)


def make_mvtec_loco(root):
    """mvtec_loco_anomaly_detection.tar.xz: <cat>/{train,validation}/good, test/{good,logical_anomalies,...},
    ground_truth/<type>/<NNN>/000.png, 001.png: one file per defect region, here the two halves of the box."""
    cat = os.path.join(root, "juice_bottle")
    for i in range(4):
        write_image(os.path.join(cat, "train", "good", f"{i:03d}.png"), seed=i)
    write_image(os.path.join(cat, "validation", "good", "000.png"), seed=9)
    for i in range(2):
        write_image(os.path.join(cat, "test", "good", f"{i:03d}.png"), seed=20 + i)
        for kind in ("logical_anomalies", "structural_anomalies"):
            write_image(os.path.join(cat, "test", kind, f"{i:03d}.png"), seed=30 + i, defect=True)
            write_mask(os.path.join(cat, "ground_truth", kind, f"{i:03d}", "000.png"), box=(slice(20, 36), slice(24, 32)))
            write_mask(os.path.join(cat, "ground_truth", kind, f"{i:03d}", "001.png"), box=(slice(20, 36), slice(32, 40)))
    with open(os.path.join(cat, "defects_config.json"), "w") as f:
        f.write("[]")


def make_btad(root):
    """btad.zip's BTech_Dataset_transformed: NN/train/ok, NN/test/{ok,ko}, NN/ground_truth/ko; 01 with .bmp images
    and .png masks, 03 with .png images and .bmp masks."""
    for cat, image_ext, mask_ext in (("01", ".bmp", ".png"), ("03", ".png", ".bmp")):
        for i in range(4):
            write_image(os.path.join(root, cat, "train", "ok", f"{i:04d}{image_ext}"), seed=i)
        for i in range(2):
            write_image(os.path.join(root, cat, "test", "ok", f"{i:04d}{image_ext}"), seed=20 + i)
            write_image(os.path.join(root, cat, "test", "ko", f"{i:04d}{image_ext}"), seed=30 + i, defect=True)
            write_mask(os.path.join(root, cat, "ground_truth", "ko", f"{i:04d}{mask_ext}"))


def make_mpdd(root):
    """MPDD: the MVTec layout, masks ground_truth/<type>/<stem>_mask.png."""
    cat = os.path.join(root, "tubes")
    for i in range(4):
        write_image(os.path.join(cat, "train", "good", f"{i:03d}.png"), seed=i)
    for i in range(2):
        write_image(os.path.join(cat, "test", "good", f"{i:03d}.png"), seed=20 + i)
        write_image(os.path.join(cat, "test", "anomalous", f"{i:03d}.png"), seed=30 + i, defect=True)
        write_mask(os.path.join(cat, "ground_truth", "anomalous", f"{i:03d}_mask.png"))


def make_mvtec_ad_2(root):
    """MVTec AD 2: <cat>/train/good, validation/good, test_public/{good,bad,ground_truth/bad/<stem>_mask.png}, and
    the unlabelled test_private/NNN_regular.png and test_private_mixed/NNN_mixed.png (the names MVTec's
    MVTecAD2_public_code_utils reads and its submission checker expects back as NNN_regular.tiff, NNN_mixed.tiff)."""
    cat = os.path.join(root, "vial")
    for i in range(4):
        write_image(os.path.join(cat, "train", "good", f"{i:03d}_regular.png"), seed=i)
    for i in range(3):
        write_image(os.path.join(cat, "validation", "good", f"{i:03d}_regular.png"), seed=9 + i)
    for i in range(2):
        write_image(os.path.join(cat, "test_public", "good", f"{i:03d}_regular.png"), seed=20 + i)
        write_image(os.path.join(cat, "test_public", "bad", f"{i:03d}_regular.png"), seed=30 + i, defect=True)
        write_mask(os.path.join(cat, "test_public", "ground_truth", "bad", f"{i:03d}_regular_mask.png"))
        write_image(os.path.join(cat, "test_private", f"{i:03d}_regular.png"), seed=40 + i)
        write_image(os.path.join(cat, "test_private_mixed", f"{i:03d}_mixed.png"), seed=50 + i)


REAL_IAD_TIME = "20231021130210"


def real_iad_name(obj, sample, kind, view):
    """Real-IAD's file stem: object, sample number, OK or NG_<class>, camera view, capture time."""
    return f"{obj}_{sample:04d}_{'OK' if kind == 'OK' else 'NG_' + kind}_C{view}_{REAL_IAD_TIME}"


def make_real_iad(root, objects=("audiojack", "pcb"), resolutions=("256",), nested=False):
    """Real-IAD as extracted: realiad_<res>/<object>/OK/S<nnnn>/<stem>.jpg and NG/<class>/S<nnnn>/<stem>.jpg with the
    mask <stem>.png beside it, five views C1-C5 per sample; split files <object>.json with meta {prefix, normal_class}
    and train/test entries in realiad_jsons/ (every view) and realiad_jsons_sv/ (C1), or both in realiad_jsons/ when
    nested. Per object: 4 normal training samples, 1 normal and 1 anomalous (class AK) test sample; the anomalous
    sample's defect is not visible from C3, whose entry has no mask."""
    splits = {"all": {}, "single": {}}
    for k, obj in enumerate(objects):
        entries = {"train": [], "test": []}
        for sample, split, kind in [(s, "train", "OK") for s in range(1, 5)] + [(5, "test", "OK"), (6, "test", "AK")]:
            for view in range(1, 6):
                stem = real_iad_name(obj, sample, kind, view)
                folder = f"OK/S{sample:04d}" if kind == "OK" else f"NG/{kind}/S{sample:04d}"
                has_mask = kind != "OK" and view != 3
                for res in resolutions:
                    base = os.path.join(root, f"realiad_{res}", obj, folder)
                    write_image(os.path.join(base, stem + ".jpg"), seed=1000 * k + 10 * sample + view, defect=has_mask)
                    if has_mask:
                        write_mask(os.path.join(base, stem + ".png"))
                entries[split].append({"category": obj, "anomaly_class": kind, "image_path": f"{folder}/{stem}.jpg",
                                       "mask_path": f"{folder}/{stem}.png" if has_mask else None})
        for views, keep in (("all", lambda e: True), ("single", lambda e: "_C1_" in e["image_path"])):
            splits[views][obj] = {"meta": {"prefix": f"{obj}/", "normal_class": "OK"},
                                  "train": [e for e in entries["train"] if keep(e)], "test": [e for e in entries["test"] if keep(e)]}
    for views, folder in (("all", "realiad_jsons"), ("single", "realiad_jsons_sv")):
        target = os.path.join(root, "realiad_jsons", folder) if nested else os.path.join(root, folder)
        os.makedirs(target)
        for obj, info in splits[views].items():
            with open(os.path.join(target, f"{obj}.json"), "w") as f:
                json.dump(info, f)


# -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def visa(tmp_path_factory):
    src, dst = tmp_path_factory.mktemp("visa_src"), tmp_path_factory.mktemp("visa") / "converted"
    make_visa(str(src))
    result = prepare("visa", str(src), str(dst))
    return str(src), str(dst), result.stdout


def test_visa_conversion(visa):
    src, dst, stdout = visa
    assert files(dst) == ["candle", "pcb1"]
    for obj in ("candle", "pcb1"):
        base = os.path.join(dst, obj)
        assert files(os.path.join(base, "train", "good")) == ["0000.JPG", "0001.JPG", "0002.JPG", "0003.JPG"]
        assert files(os.path.join(base, "test", "good")) == ["0004.JPG", "0005.JPG"]
        assert files(os.path.join(base, "test", "bad")) == ["000.JPG", "001.JPG"]
        assert files(os.path.join(base, "ground_truth", "bad")) == ["000_mask.png", "001_mask.png"]
        check_masks(base, box_mask())  # label values 1 and 2 became 255
        assert f"  {obj}: train/good 4, test/bad 2, test/good 2, masks 2" in stdout
        # images are hard links to the source files, not copies
        assert os.path.samefile(os.path.join(base, "test", "bad", "000.JPG"), os.path.join(src, obj, "Data", "Images", "Anomaly", "000.JPG"))
    assert "every anomalous test image has its mask" in stdout


@pytest.mark.slow  # a sweep: a process per run
def test_sweep_runs_converted_visa_without_categories(visa, tmp_path):
    _, dst, _ = visa
    out_dir = str(tmp_path / "runs")
    result = run_sweep(f"--data_root={dst}", f"--out_dir={out_dir}", *SMALL, "--epochs=1", "--batch_size=4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sweep: 2 of 2 categories to run" in result.stdout
    results_md = open(os.path.join(out_dir, "results.md")).read()
    assert results_md.startswith(f"# Reverse Distillation on {dst} (VisA)")
    assert "|  | Avg | Candle | Pcb1 |" in results_md  # VisA's order (alphabetical too)
    for table in ("Image-Level AUC", "Pixel-Level AUC", "AUPRO"):
        cells = table_row(results_md, table, "ours, RD (resnet18)")
        assert all(c not in ("-", "n/a", "failed") for c in cells)
    assert "Reference rows: ADer benchmark, configs/benchmark/README.md of github zhangzjn/ADer at commit 902937a" in results_md
    assert table_row(results_md, "mIoU-max (ADer)", "RD, ADer benchmark: one model for all 12 categories, 100 epochs") == ["0.279", "", ""]
    assert all(c not in ("-", "n/a", "failed") for c in table_row(results_md, "mAD (ADer)", "ours, RD (resnet18)"))
    assert "anomalib" not in results_md  # MVTec AD's reference rows belong to MVTec AD


@pytest.mark.parametrize("fmt, make, categories, expected", [
    ("mvtec_3d", make_mvtec_3d, ["bagel"],
     {"bagel": ("train/good 4, test/crack 2, test/good 2, masks 2; left out: 2 validation/good (not used); "
                "left out: 10 xyz point clouds (RGB only)")}),
    ("mvtec_loco", make_mvtec_loco, ["juice_bottle"],
     {"juice_bottle": ("train/good 4, test/good 2, test/logical_anomalies 2, test/structural_anomalies 2, masks 4; "
                       "left out: 1 validation/good (not used)")}),
    ("btad", make_btad, ["01", "03"],
     {"01": "train/good 4, test/good 2, test/ko 2, masks 2", "03": "train/good 4, test/good 2, test/ko 2, masks 2"}),
    ("mpdd", make_mpdd, ["tubes"], {"tubes": "train/good 4, test/anomalous 2, test/good 2, masks 2"}),
    ("mvtec_ad_2", make_mvtec_ad_2, ["vial"],
     {"vial": ("train/good 4, test/bad 2, test/good 2, validation/good 3, masks 2; "
               "left out: 2 test_private (no ground truth); left out: 2 test_private_mixed (no ground truth)")}),
])
def test_format_converts_and_trains(fmt, make, categories, expected, tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "converted")
    make(src)
    stdout = prepare(fmt, src, dst).stdout
    assert files(dst) == categories
    for category in categories:
        assert f"  {category}: {expected[category]}\n" in stdout
        check_masks(os.path.join(dst, category), box_mask())  # LOCO: the union of its two region files
    results = train_and_test(dst, categories[0], str(tmp_path / "runs"))
    assert results["n_anomalous"] == {"mvtec_loco": 4}.get(fmt, 2) and results["n_images"] == results["n_anomalous"] + 2
    assert results["pixel_auroc"] is not None and results["image_auroc"] is not None


def test_mvtec_ad_2_keeps_validation_images_and_leaves_private_sets_in_the_source(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "converted")
    make_mvtec_ad_2(src)
    prepare("mvtec_ad_2", src, dst)
    validation = os.path.join(dst, "vial", "validation", "good")
    assert files(validation) == ["000_regular.png", "001_regular.png", "002_regular.png"]
    for name in files(validation):  # hard-linked: the source's very file
        assert os.path.samefile(os.path.join(validation, name), os.path.join(src, "vial", "validation", "good", name))
    assert files(os.path.join(dst, "vial")) == ["ground_truth", "test", "train", "validation"]

    shutil.rmtree(os.path.join(src, "vial", "validation"))
    missing = prepare("mvtec_ad_2", src, str(tmp_path / "other"), check=False)
    assert missing.returncode == 2 and "validation/good: missing; expected MVTec AD 2's validation images" in missing.stderr


def test_converter_refusals(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "converted")
    make_mpdd(src)
    os.makedirs(dst)
    open(os.path.join(dst, "keep.txt"), "w").write("mine")
    refused = prepare("mpdd", src, dst, check=False)
    assert refused.returncode == 2 and f"dst={dst}: not empty; pass --force=1" in refused.stderr
    assert files(dst) == ["keep.txt"]
    prepare("mpdd", src, dst, "--force=1")
    assert files(dst) == ["tubes"]

    inside = prepare("mpdd", src, os.path.join(src, "out"), check=False)
    assert inside.returncode == 2 and "must be outside src" in inside.stderr

    os.remove(os.path.join(src, "tubes", "ground_truth", "anomalous", "001_mask.png"))
    missing = prepare("mpdd", src, str(tmp_path / "other"), check=False)
    assert missing.returncode == 2 and "001.png: anomalous image without its mask" in missing.stderr
    assert not os.path.exists(tmp_path / "other") and not os.path.exists(tmp_path / "other.partial")

    bad_format = prepare("kolektor", src, str(tmp_path / "other"), check=False)
    assert bad_format.returncode == 2 and "--format=kolektor: must be one of visa, mvtec_3d" in bad_format.stderr


@pytest.mark.slow  # a sweep: a process per run
def test_image_labels_only_trains_evaluates_and_tabulates(tmp_path):
    root, out_dir = str(tmp_path / "data"), str(tmp_path / "runs")
    make_category(root, "stripes", size=SIZE, n_train=4, n_test_good=2, n_test_defect=1, seed=0)
    shutil.rmtree(os.path.join(root, "stripes", "ground_truth"))  # a plant's data: folders of good and bad images
    result = run_sweep(f"--data_root={root}", f"--out_dir={out_dir}", *SMALL, "--epochs=1", "--batch_size=4")
    assert result.returncode == 0, result.stdout + result.stderr  # no --categories: the folder with train/good
    results = json.load(open(os.path.join(out_dir, "stripes", "results.json")))
    assert results["n_anomalous"] == 4 and results["image_auroc"] is not None and results["image_f1"] is not None
    for name in ("pixel_auroc", "pixel_aupro", "pixel_f1", "pixel_ap", "pixel_pro_paper"):
        assert results[name] is None and results["undefined"][name] == "no ground truth masks: image labels only"
    results_md = open(os.path.join(out_dir, "results.md")).read()
    assert table_row(results_md, "Pixel-Level AUC", "ours, RD (resnet18)") == ["-", "n/a"]
    assert table_row(results_md, "AUPRO", "ours, RD (resnet18)") == ["-", "n/a"]
    assert table_row(results_md, "Image-Level AUC", "ours, RD (resnet18)")[1] not in ("-", "n/a")

    test = run_main("test.py", f"--checkpoint={os.path.join(out_dir, 'stripes', 'checkpoint.pth')}", "--save_images=1", check=True)
    assert test.stdout.count("no ground_truth folder: evaluated on image labels") == 1
    assert "pixel_auroc undefined" not in test.stdout
    strip = Image.open(os.path.join(out_dir, "stripes", "images", "scratch_000.png"))
    assert strip.size == (2 * SIZE, SIZE)  # input | heatmap: no ground-truth panel

    os.makedirs(os.path.join(root, "stripes", "ground_truth"))  # ground_truth present but a mask missing: an error
    missing = run_main("test.py", f"--checkpoint={os.path.join(out_dir, 'stripes', 'checkpoint.pth')}", check=False)
    assert missing.returncode == 2 and "anomalous test image without its mask" in missing.stderr


def test_masks_with_other_values_are_read_as_binary(tmp_path, capsys):
    from dataset import load_test_set
    root = str(tmp_path)
    make_category(root, "disc", size=SIZE, n_train=1, n_test_good=1, n_test_defect=1, seed=0)
    capsys.readouterr()
    _, expected, _, _ = load_test_set(root, "disc", SIZE)
    assert capsys.readouterr().out == ""  # MVTec's 0/255: no note
    gt = os.path.join(root, "disc", "ground_truth")
    for value, kind in ((1, "scratch"), (3, "spot")):  # a 0/1 mask and a label index
        path = os.path.join(gt, kind, "000_mask.png")
        mask = np.asarray(Image.open(path))
        Image.fromarray(np.where(mask > 0, value, 0).astype(np.uint8)).save(path)
    _, masks, _, _ = load_test_set(root, "disc", SIZE)
    assert np.array_equal(masks.numpy(), expected.numpy())
    out = capsys.readouterr().out
    assert out == f"{gt}: 2 of 4 masks hold values other than 0 and 255 (e.g. 0/1 or label indices): read as binary, non-zero = anomalous\n"


def test_btad_table_has_the_published_rdpp_means_and_its_source(tmp_path):
    """The table from hand-written per-category files: BTAD's order, RD++'s published means and where they are from."""
    import evaluation.results as results_layer
    import train

    config = {k: getattr(train, k) for k in train.config_keys}
    for category in ("03", "01", "02"):
        (tmp_path / category).mkdir()
        results = {"image_auroc": 0.9, "pixel_auroc": 0.95, "image_f1": 0.9, "pixel_aupro": 0.7,
                   "train_config": dict(config, category=category, betas=list(config["betas"]))}
        (tmp_path / category / "results.json").write_text(json.dumps(results))
    text = results_layer.results_md(str(tmp_path), "data/btad", ["03", "01", "02"], config)
    assert text.startswith("# Reverse Distillation on data/btad (BTAD)")
    assert table_row(text, "Image-Level AUC", "") == ["Avg", "01", "02", "03"]
    assert table_row(text, "Image-Level AUC", "RD++ (Tien et al., CVPR 2023), 3-category mean") == ["0.956", "", "", ""]
    assert table_row(text, "Pixel-Level AUC", "RD++ (Tien et al., CVPR 2023), 3-category mean") == ["0.974", "", "", ""]
    assert "Reference rows: Tien et al., \"Revisiting Reverse Distillation for Anomaly Detection\", CVPR 2023" in text
    assert "anomalib" not in text


def test_real_iad_all_views_and_single_view(tmp_path):
    src = str(tmp_path / "Real-IAD")
    make_real_iad(src)
    stem = real_iad_name("pcb", 6, "AK", 5)
    write_mask(os.path.join(src, "realiad_256", "pcb", "NG", "AK", "S0006", stem + ".png"), value=0)  # an empty mask
    note = "1 test images of an anomalous class without a mask, normal as Real-IAD's loader reads them"
    stdout = prepare("real_iad", src, str(tmp_path / "all"), "--views=all").stdout
    assert f"  audiojack: train/good 20, test/AK 4, test/good 6, masks 4; {note}\n" in stdout
    assert (f"  pcb: train/good 20, test/AK 4, test/good 6, masks 4; {note}; 1 anomalous test images with an empty mask "
            "(anomalous here by their folder; ADer scores them normal)\n") in stdout
    for obj in ("audiojack", "pcb"):
        base = os.path.join(tmp_path, "all", obj)
        # every view an image of its own, under Real-IAD's own file name
        assert files(os.path.join(base, "train", "good")) == sorted(
            real_iad_name(obj, sample, "OK", view) + ".jpg" for sample in range(1, 5) for view in range(1, 6))
        assert files(os.path.join(base, "test", "AK")) == [real_iad_name(obj, 6, "AK", v) + ".jpg" for v in (1, 2, 4, 5)]
        assert real_iad_name(obj, 6, "AK", 3) + ".jpg" in files(os.path.join(base, "test", "good"))
        assert files(os.path.join(base, "ground_truth", "AK")) == [real_iad_name(obj, 6, "AK", v) + "_mask.png" for v in (1, 2, 4, 5)]
        if obj == "audiojack":
            check_masks(base, box_mask())
        stem = real_iad_name(obj, 6, "AK", 1)
        assert os.path.samefile(os.path.join(base, "test", "AK", stem + ".jpg"),
                                os.path.join(src, "realiad_256", obj, "NG", "AK", "S0006", stem + ".jpg"))

    stdout = prepare("real_iad", src, str(tmp_path / "c1"), "--views=single").stdout
    assert "  audiojack: train/good 4, test/AK 1, test/good 1, masks 1\n" in stdout
    base = os.path.join(tmp_path, "c1", "audiojack")
    assert all("_C1_" in name for d in ("train/good", "test/good", "test/AK") for name in files(os.path.join(base, d)))


def test_real_iad_nested_split_files_several_resolutions_trains(tmp_path):
    src, dst = str(tmp_path / "Real-IAD"), str(tmp_path / "converted")
    make_real_iad(src, objects=("toy",), resolutions=("256", "1024"), nested=True)  # realiad_jsons/realiad_jsons_sv/
    several = prepare("real_iad", src, dst, "--views=single", check=False)
    assert several.returncode == 2 and "holds realiad_1024, realiad_256; pick one with --resolution=1024" in several.stderr
    stdout = prepare("real_iad", src, dst, "--views=single", "--resolution=256").stdout
    assert "  toy: train/good 4, test/AK 1, test/good 1, masks 1\n" in stdout
    results = train_and_test(dst, "toy", str(tmp_path / "runs"))
    assert results["n_images"] == 2 and results["n_anomalous"] == 1
    assert results["pixel_auroc"] is not None and results["pixel_iou_max"] is not None


def test_real_iad_refusals(tmp_path):
    src = str(tmp_path / "Real-IAD")
    make_real_iad(src, objects=("toy",))
    bad_views = prepare("real_iad", src, str(tmp_path / "out"), "--views=three", check=False)
    assert bad_views.returncode == 2 and "--views=three: must be all" in bad_views.stderr
    other_format = prepare("mpdd", src, str(tmp_path / "out"), "--views=single", check=False)
    assert other_format.returncode == 2 and "--views: only used with --format=real_iad" in other_format.stderr
    stem = real_iad_name("toy", 6, "AK", 2)
    os.remove(os.path.join(src, "realiad_256", "toy", "NG", "AK", "S0006", stem + ".png"))
    missing = prepare("real_iad", src, str(tmp_path / "out"), check=False)
    split_file = os.path.join(src, "realiad_jsons", "toy.json")
    assert missing.returncode == 2 and f"{split_file}: test[6]: no mask " in missing.stderr and stem + ".png" in missing.stderr
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "out.partial")
    info = json.load(open(split_file))
    info["test"][6]["mask_path"] = None  # no mask: read as normal, as Real-IAD's loader does
    info["train"].append(info["train"][0])  # one image twice
    with open(split_file, "w") as f:
        json.dump(info, f)
    twice = prepare("real_iad", src, str(tmp_path / "out"), check=False)
    name = real_iad_name("toy", 1, "OK", 1) + ".jpg"
    assert twice.returncode == 2 and f"{name}: would be written as toy/train/good/{name}, as " in twice.stderr
    with open(split_file, "w") as f:
        json.dump({"train": [], "test": []}, f)
    broken = prepare("real_iad", src, str(tmp_path / "out"), check=False)
    assert broken.returncode == 2 and f"{split_file}: expected a Real-IAD split file" in broken.stderr


def test_real_iad_table_has_ader_rows_and_the_authors_order(tmp_path):
    """Real-IAD's objects in its authors' order, and ADer's published unified-setting rows with their source."""
    import evaluation.results as results_layer
    import train

    config = {k: getattr(train, k) for k in train.config_keys}
    for category, iou in (("zipper", 0.25), ("audiojack", 0.15), ("pcb", 0.2)):
        (tmp_path / category).mkdir()
        results = {"image_auroc": 0.9, "pixel_auroc": 0.95, "image_f1": 0.9, "pixel_aupro": 0.7, "pixel_iou_max": iou,
                   "mad": 0.6, "train_config": dict(config, category=category, betas=list(config["betas"]))}
        (tmp_path / category / "results.json").write_text(json.dumps(results))
    text = results_layer.results_md(str(tmp_path), "data/realiad", ["zipper", "audiojack", "pcb"], config)
    assert text.startswith("# Reverse Distillation on data/realiad (Real-IAD)")
    assert table_row(text, "mIoU-max (ADer)", "") == ["Avg", "Audiojack", "Pcb", "Zipper"]
    assert table_row(text, "mIoU-max (ADer)", "ours, RD (wide_resnet50_2)") == ["0.200", "0.150", "0.200", "0.250"]
    assert table_row(text, "mIoU-max (ADer)", "RD, ADer benchmark: one model for all 30 categories, 100 epochs") == ["0.200", "", "", ""]
    assert table_row(text, "mAD (ADer)", "RD++, ADer benchmark: one model for all 30 categories, 100 epochs")[0] == "0.696"
    assert table_row(text, "AUPRO", "RD, ADer benchmark: one model for all 30 categories, 100 epochs")[0] == "0.900"
    assert "Reference rows: ADer benchmark, configs/benchmark/README.md of github zhangzjn/ADer at commit 902937a" in text
    assert "anomalib" not in text and "SPEC" not in text  # Real-IAD's zipper is not MVTec AD's
