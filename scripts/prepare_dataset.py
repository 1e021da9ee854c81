"""
Convert an anomaly-detection dataset, as its authors distribute it (extracted), into the MVTec AD layout that
train.py, test.py and the sweep read (see dataset.py):

    $ python scripts/prepare_dataset.py --format=visa --src=downloads/VisA --dst=data/visa
    $ python scripts/prepare_dataset.py --format=btad --src=downloads/BTech_Dataset_transformed --dst=data/btad --force=1
    $ python scripts/prepare_dataset.py --format=real_iad --src=downloads/Real-IAD --dst=data/realiad --views=all

    DST/CATEGORY/train/good/<image>                 normal training images
    DST/CATEGORY/test/<type>/<image>                test images; 'good' is normal
    DST/CATEGORY/ground_truth/<type>/<stem>_mask.png  one 0/255 PNG mask per anomalous test image
    DST/CATEGORY/validation/good/<image>            (mvtec_ad_2 only) defect-free images held out for a threshold

Formats (each from the dataset's own readme and preparation code):
  visa        split_csv/1cls.csv (object,split,label,image,mask) decides train/test, as the authors' prepare_data.py;
              <object>/Data/Images/{Normal,Anomaly}/*.JPG; the anomalous ones become test/bad; masks
              <object>/Data/Masks/Anomaly/*.png hold small label values, binarised (non-zero = anomalous)
  mvtec_3d    per category train/good/rgb, test/<type>/rgb, masks test/<type>/gt/<name>.png; RGB only: the xyz point
              clouds are not converted (RD is a 2-D method), validation/good is not used (RD selects no model)
  mvtec_loco  train/good, test/<type>, masks ground_truth/<type>/<NNN>/000.png, 001.png ... (one file per defect
              region): their union becomes one mask; validation/good is not used
  btad        NN/train/ok, NN/test/ok -> good, NN/test/ko, masks NN/ground_truth/ko/<stem>.png or .bmp
  mpdd        the MVTec layout; masks ground_truth/<type>/<stem>_mask.png (or <stem>.png), rewritten as 0/255 PNGs
  mvtec_ad_2  train/good, test_public/{good,bad}, masks test_public/ground_truth/bad/<stem>_mask.png; validation/good
              becomes DST/CATEGORY/validation/good (defect-free images: MVTec AD 2's segmentation threshold comes
              from them; train.py and test.py do not read that folder); test_private and test_private_mixed have no
              ground truth and are not converted: they are scored from the source folders (predict.py --images=DIR,
              or a submission for MVTec's evaluation server, the only place their metrics come from)
  real_iad    Real-IAD: images realiad_<resolution>/<object>/ (realiad_1024, realiad_256, realiad_raw: --resolution
              picks one where several are extracted), split files <object>.json in realiad_jsons/ (all five camera
              views C1-C5, each view an image: --views=all, as the ADer benchmark evaluates) or realiad_jsons_sv/
              (view C1 only: --views=single), found in src or in src/realiad_jsons/. A split file holds meta (prefix,
              normal_class), train and test: entries of category, anomaly_class, image_path and mask_path, the paths
              joined as realiad_<resolution>/<prefix>/<path> (Real-IAD's own loader, datasets/explicit_dataset.py).
              Every train entry is a normal training image; a test entry is normal (test/good) when its mask_path
              is null or its anomaly_class is normal_class ('OK'), else test/<anomaly_class> (AK, BX, ...) with its
              mask. The category is the split file's name (as ADer's loader). Real-IAD's file names hold the
              object, sample, class and view (audiojack_0001_NG_AK_C1_<time>.jpg), so every view keeps its name.

Images are hard-linked, not copied: the same bytes are read, no disk space is spent (MVTec AD 2 alone is tens of GB),
and unlike a symlink a hard link keeps working if the source folder is moved or deleted. Where the destination is on
another file system (or it refuses hard links) the image is copied. Nothing in this project writes into its data,
so sharing the files with the source is safe; --copy=1 copies anyway. Masks are always written anew: decoded,
combined (LOCO), binarised (any non-zero value = anomalous) and saved as 0/255 PNG. The source is only read.

The conversion is written to DST.partial, checked (counts per split printed, every anomalous test image with its
mask, every mask 0/255) and only then renamed to DST. A non-empty DST is replaced only with --force=1.
"""

import csv
import json
import os
import shutil
import sys
from types import SimpleNamespace

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.config import ConfigError, apply_overrides, run_cli  # noqa: E402
from utils.files import atomic_write, check_outputs  # noqa: E402
from utils.images import IMAGE_EXTENSIONS, list_images, mask_path_for, open_image  # noqa: E402

# -----------------------------------------------------------------------------
format = ""  # visa | mvtec_3d | mvtec_loco | btad | mpdd | mvtec_ad_2 | real_iad
src = ""  # the dataset as extracted from its download
dst = ""  # the folder to write: DST/CATEGORY/train, test, ground_truth
force = False  # replace a non-empty dst
copy = False  # copy the images instead of hard-linking them
views = "all"  # real_iad: all (realiad_jsons: the five camera views, each an image) | single (realiad_jsons_sv: C1)
resolution = ""  # real_iad: the image folder realiad_<resolution> (1024, 256, raw ...); needed where src has several
debug = False  # show Python tracebacks for user errors
# -----------------------------------------------------------------------------
config_keys = ["format", "src", "dst", "force", "copy", "views", "resolution", "debug"]
REAL_IAD_SPLITS = {"all": "realiad_jsons", "single": "realiad_jsons_sv"}  # --views: the folder of split files
NO_MASK_NOTE = "test images of an anomalous class without a mask, normal as Real-IAD's loader reads them"
EMPTY_MASK_NOTE = "anomalous test images with an empty mask (anomalous here by their folder; ADer scores them normal)"


class Plan:
    """What one category becomes: images to link, masks to write, and what is left out (with why)."""

    def __init__(self, category):
        self.category = category
        self.images = []  # (source path, destination path relative to DST/CATEGORY)
        self.masks = []  # ([source mask paths, combined], destination path relative to DST/CATEGORY)
        self.skipped = {}  # what is not converted: count
        self.notes = {}  # what is converted in a way worth saying: count

    def image(self, source, split, kind):
        self.images.append((source, os.path.join(split, kind, os.path.basename(source))))

    def mask(self, sources, kind, image_source):
        self.masks.append((sources, mask_path_for("", kind, image_source)))


def need_dir(path, what):
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: missing; expected {what}")
    return path


def images_in(folder):
    return list_images(folder) if os.path.isdir(folder) else []


def image_with_stem(folder, stem, suffixes=("",)):
    """The file of folder named stem + a suffix + an image extension, or None."""
    for suffix in suffixes:
        for ext in IMAGE_EXTENSIONS:
            for name in (stem + suffix + ext, stem + suffix + ext.upper()):
                if os.path.isfile(os.path.join(folder, name)):
                    return os.path.join(folder, name)
    return None


def categories_with(root, marker, dataset_format):
    """Sorted sub-folders of root that hold the folder `marker` (e.g. train/good), for --format=dataset_format."""
    need_dir(root, "the extracted dataset")
    found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, marker)))
    if not found:
        raise ConfigError(f"src={root}: no category folder holding {marker}; is this the extracted {dataset_format} dataset?")
    return found


def mask_for(mask_folder, image_path, suffixes):
    stem = os.path.splitext(os.path.basename(image_path))[0]
    found = image_with_stem(mask_folder, stem, suffixes)
    if found is None:
        names = " or ".join(stem + s + ".png" for s in suffixes)
        raise ConfigError(f"{image_path}: anomalous image without its mask {os.path.join(mask_folder, names)}")
    return found


def plan_split_folders(category_dir, category, train, tests, mask_folder, suffixes, *, skipped=()):
    """A category laid out as folders per split and type. train: folder of normal images; tests: {type: folder},
    type 'good' normal; mask_folder(type): the folder of that type's masks, named <stem><suffix>.<ext>."""
    plan = Plan(category)
    for path in list_images(need_dir(os.path.join(category_dir, train), "the normal training images")):
        plan.image(path, "train", "good")
    for kind, folder in tests.items():
        for path in images_in(os.path.join(category_dir, folder)):
            plan.image(path, "test", kind)
            if kind != "good":
                plan.mask([mask_for(mask_folder(kind), path, suffixes)], kind, path)
    for what, folder in skipped:
        if os.path.isdir(os.path.join(category_dir, folder)):
            plan.skipped[what] = len(images_in(os.path.join(category_dir, folder)))
    return plan


def test_types(folder, exclude=()):
    return sorted(t for t in os.listdir(need_dir(folder, "the test images")) if os.path.isdir(os.path.join(folder, t)) and t not in exclude)


def plan_visa(root, args):
    split_file = os.path.join(root, "split_csv", "1cls.csv")
    if not os.path.isfile(split_file):
        raise ConfigError(f"{split_file}: missing; VisA's download holds split_csv/1cls.csv (the one-class split)")
    plans = {}
    with open(split_file, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = {"object", "split", "label", "image", "mask"}
    if not rows or not columns <= set(rows[0]):
        raise ConfigError(f"{split_file}: expected the columns {','.join(sorted(columns))}")
    for line, row in enumerate(rows, start=2):
        where = f"{split_file} line {line}"
        if row["split"] not in ("train", "test") or row["label"] not in ("normal", "anomaly"):
            raise ConfigError(f"{where}: split must be train or test and label normal or anomaly, got {row['split']},{row['label']}")
        if row["split"] == "train" and row["label"] == "anomaly":
            raise ConfigError(f"{where}: an anomalous training image; this project trains on normal images only (use 1cls.csv)")
        plan = plans.setdefault(row["object"], Plan(row["object"]))
        image = os.path.join(root, row["image"])
        if not os.path.isfile(image):
            raise ConfigError(f"{where}: no image {image}")
        kind = "good" if row["label"] == "normal" else "bad"  # the authors' prepare_data.py names them so
        plan.image(image, row["split"], kind)
        if kind == "bad":
            mask = os.path.join(root, row["mask"])
            if not row["mask"] or not os.path.isfile(mask):
                raise ConfigError(f"{where}: anomalous image without its mask {mask}")
            plan.mask([mask], kind, image)
    return [plans[c] for c in sorted(plans)]


def plan_mvtec_3d(root, args):
    plans = []
    for c in categories_with(root, os.path.join("train", "good", "rgb"), args.format):
        test = os.path.join(root, c, "test")
        tests = {t: os.path.join("test", t, "rgb") for t in test_types(test)}
        plans.append(plan_split_folders(os.path.join(root, c), c, os.path.join("train", "good", "rgb"), tests,
                                        lambda t: os.path.join(test, t, "gt"), ("",),
                                        skipped=[("validation/good (not used)", os.path.join("validation", "good", "rgb"))]))
        xyz_folders = [folder for folder, _, _ in os.walk(os.path.join(root, c)) if os.path.basename(folder) == "xyz"]
        plans[-1].skipped["xyz point clouds (RGB only)"] = sum(len(os.listdir(folder)) for folder in xyz_folders)
    return plans


def plan_mvtec_loco(root, args):
    plans = []
    for c in categories_with(root, os.path.join("train", "good"), args.format):
        plan = plan_split_folders(os.path.join(root, c), c, os.path.join("train", "good"), {"good": os.path.join("test", "good")},
                                  None, (), skipped=[("validation/good (not used)", os.path.join("validation", "good"))])
        test = os.path.join(root, c, "test")
        for kind in test_types(test, exclude=("good",)):
            for path in list_images(os.path.join(test, kind)):
                stem = os.path.splitext(os.path.basename(path))[0]
                folder = os.path.join(root, c, "ground_truth", kind, stem)  # one file per defect region
                parts = images_in(folder)
                if not parts:
                    raise ConfigError(f"{path}: anomalous image without its masks in {folder}/")
                plan.image(path, "test", kind)
                plan.mask(parts, kind, path)
        plans.append(plan)
    return plans


def plan_btad(root, args):
    plans = []
    for c in categories_with(root, os.path.join("train", "ok"), args.format):
        gt = os.path.join(root, c, "ground_truth")
        tests = {"good": os.path.join("test", "ok"), **{t: os.path.join("test", t) for t in test_types(os.path.join(root, c, "test"), exclude=("ok",))}}
        plans.append(plan_split_folders(os.path.join(root, c), c, os.path.join("train", "ok"), tests,
                                        lambda t: os.path.join(gt, t), ("", "_mask")))
    return plans


def plan_mpdd(root, args):
    plans = []
    for c in categories_with(root, os.path.join("train", "good"), args.format):
        gt = os.path.join(root, c, "ground_truth")
        tests = {t: os.path.join("test", t) for t in test_types(os.path.join(root, c, "test"))}
        plans.append(plan_split_folders(os.path.join(root, c), c, os.path.join("train", "good"), tests,
                                        lambda t: os.path.join(gt, t), ("_mask", "")))
    return plans


def plan_mvtec_ad_2(root, args):
    plans = []
    for c in categories_with(root, os.path.join("train", "good"), args.format):
        public = os.path.join(root, c, "test_public")
        need_dir(public, "MVTec AD 2's test_public split (the test set with ground truth)")
        tests = {t: os.path.join("test_public", t) for t in test_types(public, exclude=("ground_truth",))}
        plan = plan_split_folders(os.path.join(root, c), c, os.path.join("train", "good"), tests,
                                  lambda t: os.path.join(public, "ground_truth", t), ("_mask",),
                                  skipped=[("test_private (no ground truth)", "test_private"),
                                           ("test_private_mixed (no ground truth)", "test_private_mixed")])
        # the defect-free images MVTec AD 2's protocol takes its segmentation threshold from
        for path in list_images(need_dir(os.path.join(root, c, "validation", "good"), "MVTec AD 2's validation images")):
            plan.image(path, "validation", "good")
        plans.append(plan)
    return plans


def real_iad_folders(root, resolution, views):
    """(image folder, split-file folder) of an extracted Real-IAD, for --resolution and --views."""
    images = sorted(d for d in os.listdir(root) if d.startswith("realiad_") and not d.startswith("realiad_jsons")
                    and os.path.isdir(os.path.join(root, d)))
    if resolution:
        image_dir = need_dir(os.path.join(root, f"realiad_{resolution}"), "Real-IAD's images at --resolution")
    elif len(images) == 1:
        image_dir = os.path.join(root, images[0])
    elif images:
        raise ConfigError(f"src={root}: holds {', '.join(images)}; pick one with --resolution="
                          f"{images[0].removeprefix('realiad_')}")
    else:
        raise ConfigError(f"src={root}: no image folder realiad_1024, realiad_256 ...; is this the extracted Real-IAD?")
    name = REAL_IAD_SPLITS[views]
    for folder in (os.path.join(root, name), os.path.join(root, "realiad_jsons", name)):  # realiad_jsons.zip may nest
        if os.path.isdir(folder) and any(f.endswith(".json") for f in os.listdir(folder)):
            return image_dir, folder
    raise ConfigError(f"src={root}: no {name}/ folder of <object>.json split files (nor in realiad_jsons/{name}/), "
                      f"needed for --views={views}")


def read_split_file(path):
    """(meta, train, test) of a Real-IAD split file, its structure checked."""
    try:
        with open(path) as f:
            info = json.load(f)
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(info, dict) or not all(isinstance(info.get(k), t) for k, t in (("meta", dict), ("train", list), ("test", list))):
        raise ConfigError(f"{path}: expected a Real-IAD split file, an object with meta {{prefix, normal_class}}, train [...] and test [...]")
    if not {"prefix", "normal_class"} <= set(info["meta"]):
        raise ConfigError(f"{path}: its meta lacks prefix or normal_class")
    for split in ("train", "test"):
        for i, entry in enumerate(info[split]):
            if not isinstance(entry, dict) or not {"anomaly_class", "image_path", "mask_path"} <= set(entry):
                raise ConfigError(f"{path}: {split}[{i}] lacks anomaly_class, image_path or mask_path")
    return info["meta"], info["train"], info["test"]


def plan_real_iad(root, args):
    if args.views not in REAL_IAD_SPLITS:
        raise ConfigError(f"--views={args.views}: must be all (every camera view, realiad_jsons) or single (C1, realiad_jsons_sv)")
    image_dir, split_dir = real_iad_folders(root, args.resolution, args.views)
    plans = []
    for name in sorted(f for f in os.listdir(split_dir) if f.endswith(".json")):
        split_file = os.path.join(split_dir, name)
        meta, train, test = read_split_file(split_file)
        base = os.path.join(image_dir, meta["prefix"] or "")

        def existing(relative, where, what):
            path = os.path.join(base, relative)
            if not os.path.isfile(path):
                raise ConfigError(f"{split_file}: {where}: no {what} {path}")
            return path

        plan = Plan(os.path.splitext(name)[0])
        for i, entry in enumerate(train):  # Real-IAD's loader reads every training entry as normal
            plan.image(existing(entry["image_path"], f"train[{i}]", "image"), "train", "good")
        for i, entry in enumerate(test):
            image = existing(entry["image_path"], f"test[{i}]", "image")
            if entry["mask_path"] is None or entry["anomaly_class"] == meta["normal_class"]:
                plan.image(image, "test", "good")
                if entry["anomaly_class"] != meta["normal_class"]:
                    plan.notes[NO_MASK_NOTE] = plan.notes.get(NO_MASK_NOTE, 0) + 1
            else:
                kind = str(entry["anomaly_class"])
                plan.image(image, "test", kind)
                plan.mask([existing(entry["mask_path"], f"test[{i}]", "mask")], kind, image)
        plans.append(plan)
    if not plans:
        raise ConfigError(f"{split_dir}: holds no <object>.json")
    return plans


FORMATS = {"visa": plan_visa, "mvtec_3d": plan_mvtec_3d, "mvtec_loco": plan_mvtec_loco, "btad": plan_btad,
           "mpdd": plan_mpdd, "mvtec_ad_2": plan_mvtec_ad_2, "real_iad": plan_real_iad}


def read_binary(path):
    """(H,W) bool: any non-zero value (a label index, 1, 255, any channel of a colour mask) is anomalous."""
    values = np.asarray(open_image(path))
    return (values[..., :3].max(axis=2) if values.ndim == 3 else values) != 0


def write_mask(sources, target):
    """The union of the source masks as a 0/255 PNG at target; True if it has an anomalous pixel."""
    masks = [read_binary(p) for p in sources]
    if any(m.shape != masks[0].shape for m in masks):
        raise ConfigError(f"{os.path.dirname(sources[0])}: its masks differ in size, cannot combine them")
    union = np.logical_or.reduce(masks)  # (H,W)
    atomic_write(target, lambda f: Image.fromarray(union.astype(np.uint8) * 255).save(f, format="PNG"))
    return bool(union.any())


def place_image(source, target, copy):
    """Hard-link source at target, or copy it (copy: --copy=1, or where linking fails); True if linked."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if not copy:
        try:
            os.link(source, target)
            return True
        except OSError:  # another file system, or one without hard links
            pass
    shutil.copyfile(source, target)
    return False


def check_category(folder, plan):
    """Counts per split of the written category, after checking it against the plan: every image there, every
    anomalous test image with its mask (as dataset.py looks for it), every mask 0/255."""
    counts = {}
    for split in ("train", "test", "validation"):
        for kind in sorted(os.listdir(os.path.join(folder, split))) if os.path.isdir(os.path.join(folder, split)) else []:
            paths = list_images(os.path.join(folder, split, kind))
            counts[f"{split}/{kind}"] = len(paths)
            for path in paths if split == "test" and kind != "good" else []:
                mask = mask_path_for(folder, kind, path)
                if not os.path.isfile(mask):
                    raise ConfigError(f"{path}: written without its mask {mask}")
                values = np.unique(np.asarray(Image.open(mask)))
                if not set(values.tolist()) <= {0, 255}:
                    raise ConfigError(f"{mask}: written with values {values.tolist()}, not 0/255")
    if sum(counts.values()) != len(plan.images):
        raise ConfigError(f"{folder}: {sum(counts.values())} images written, {len(plan.images)} planned")
    return counts


def check_destination(root, target, force):
    real_src, real_dst = os.path.realpath(root), os.path.realpath(target)
    if real_dst == real_src or real_dst.startswith(real_src + os.sep) or real_src.startswith(real_dst + os.sep):
        raise ConfigError(f"dst={target}: must be outside src={root} and not contain it (the source is never modified)")
    if os.path.exists(target) and not os.path.isdir(target):
        raise ConfigError(f"dst={target}: exists and is not a folder")
    if os.path.isdir(target) and os.listdir(target) and not force:
        raise ConfigError(f"dst={target}: not empty; pass --force=1 to replace it")


def main():
    apply_overrides(globals(), sys.argv[1:], config_keys)
    if format not in FORMATS:
        raise ConfigError(f"--format={format}: must be one of {', '.join(FORMATS)}")
    if not src or not dst:
        raise ConfigError("--src=DIR (the extracted dataset) and --dst=DIR (the folder to write) are required")
    if format != "real_iad" and (resolution or views != "all"):
        raise ConfigError(f"--{'resolution' if resolution else 'views'}: only used with --format=real_iad")
    need_dir(src, "the extracted dataset")
    check_destination(src, dst, force)
    partial = dst.rstrip(os.sep) + ".partial"  # written first, renamed to dst when complete
    check_outputs(f"dst={dst}", os.path.dirname(partial), folders=[os.path.basename(partial)])
    args = SimpleNamespace(**{k: globals()[k] for k in config_keys})
    plans = FORMATS[format](src, args)  # every missing file is found here, before anything is written
    for plan in plans:
        written = {}
        for source, relative in plan.images + [(sources[0], relative) for sources, relative in plan.masks]:
            if relative in written:
                raise ConfigError(f"{source}: would be written as {plan.category}/{relative}, as {written[relative]} is")
            written[relative] = source

    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
    n_linked = 0
    for plan in plans:
        folder = os.path.join(partial, plan.category)
        for source, relative in plan.images:
            n_linked += place_image(source, os.path.join(folder, relative), copy)
        n_empty = sum(not write_mask(sources, os.path.join(folder, relative)) for sources, relative in plan.masks)
        if n_empty:
            plan.notes[EMPTY_MASK_NOTE] = n_empty
    print(f"{format}: {src} -> {dst}")
    for plan in plans:
        counts = check_category(os.path.join(partial, plan.category), plan)
        left_out = "".join(f"; left out: {n} {what}" for what, n in plan.skipped.items() if n)
        notes = "".join(f"; {n} {what}" for what, n in plan.notes.items())
        print(f"  {plan.category}: " + ", ".join(f"{k} {n}" for k, n in counts.items()) + f", masks {len(plan.masks)}{left_out}{notes}")
    if os.path.isdir(dst):
        shutil.rmtree(dst)  # only reached when dst is empty or --force=1
    os.replace(partial, dst)
    n_images = sum(len(p.images) for p in plans)
    print(f"done: {len(plans)} categories, {n_images} images ({n_linked} hard-linked, {n_images - n_linked} copied), "
          f"{sum(len(p.masks) for p in plans)} masks written as 0/255 PNG; every anomalous test image has its mask")


if __name__ == "__main__":
    run_cli(main, lambda: debug)
