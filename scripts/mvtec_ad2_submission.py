"""
An MVTec AD 2 submission for its evaluation server: the anomaly maps of test_private and test_private_mixed, and
those maps binarised at MVTec AD 2's segmentation threshold, with one checkpoint (train.py's) per object.

    $ python scripts/mvtec_ad2_submission.py --data_root=downloads/mvtec_ad_2 --runs=runs/mvtec_ad_2 --out=submission
    $ python MVTecAD2_public_code_utils/check_and_prepare_data_for_upload.py submission   # MVTec's checker, before upload

data_root is MVTec AD 2 as MVTec distributes it: <data_root>/<object>/{validation/good,test_private,test_private_mixed}
(not prepare_dataset.py's conversion, which leaves the private splits out). Each object's checkpoint is
<runs>/<object>/checkpoint.pth, train.py's run folder. Writes <out>/:

    anomaly_images/<object>/test_private/<stem>.tiff              2-D float16 TIFF (tifffile), the source's size
    anomaly_images/<object>/test_private_mixed/<stem>.tiff
    anomaly_images_thresholded/<object>/<split>/<stem>.png        2-D uint8 PNG, 255 = anomalous (map >= threshold), else 0

for every source image <data_root>/<object>/<split>/<stem>.png. Each map is scored as predict.py scores an image (the
image resized to the checkpoint's image size, model.scoring.predict), then resized to the source image's own size
with bilinear interpolation (torch's, align_corners=False); the PNG binarises that float32 map, before the TIFF's
float16 rounding. The threshold of an object is evaluation.threshold.validation_threshold (mean + 3 std of every
pixel) of its validation/good maps, scored and resized the same way; the thresholds are printed and written to
<out>.thresholds.json beside the folder, not in it: MVTec's checker refuses any file or folder it does not expect.

The checker (check_and_prepare_data_for_upload.py of MVTecAD2_public_code_utils) wants exactly the 8 objects, each
with both splits, CHECKER_COUNTS files in each, named NNN_regular and NNN_mixed. --objects=a,b writes some of them
(a partial submission, which the checker refuses). Everything is checked before any scoring; the submission is
written to a temporary folder beside <out> and renamed to it when complete, so a failure leaves none half written.
"""

import os
import shutil
import sys
import tempfile
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset import image_folder, load_images  # noqa: E402
from evaluation.threshold import validation_threshold  # noqa: E402
from model.anomaly_map import NativeMaps  # noqa: E402
from model.checkpoint import CHECKPOINT_SETTINGS, load_checkpoint, load_network, resolve_settings  # noqa: E402
from model.scoring import check_scoring, predict  # noqa: E402
from utils.config import ConfigError, apply_overrides, run_cli, script_settings  # noqa: E402
from utils.files import UMASK, atomic_write_json, check_outputs  # noqa: E402
from utils.images import native_size  # noqa: E402
from utils.known_datasets import DATASETS  # noqa: E402
from utils.seeding import resolve_device  # noqa: E402

# -----------------------------------------------------------------------------
data_root = ""  # MVTec AD 2 as distributed: <data_root>/<object>/{validation/good,test_private,test_private_mixed}
runs = "runs"  # the checkpoints: <runs>/<object>/checkpoint.pth (train.py's run folders)
out = ""  # the submission folder to write; the thresholds go to <out>.thresholds.json beside it
objects = ""  # comma-separated objects to write; "" (default): all 8, as the checker requires
overwrite = False  # replace an existing submission folder instead of refusing
batch_size = 16  # scoring batch; does not change any score
map_mode = "add"  # add | mul: how the three per-tap maps are combined
device = "auto"  # auto (cuda if available) | cpu | cuda | cuda:1 ...
amp = False  # bf16 autocast for the networks; maps stay float32
debug = False  # show Python tracebacks for user errors
# -----------------------------------------------------------------------------
config_keys = list(script_settings(__file__))  # the names of the settings above: what --name=value may set

# MVTec's checker (MVTecAD2_public_code_utils/utils.py, OBJECT_FILE_COUNTER): files per object in each private split
CHECKER_COUNTS = {"can": 321, "fabric": 314, "fruit_jelly": 255, "rice": 277, "sheet_metal": 142, "vial": 276,
                  "wallplugs": 232, "walnuts": 228}
SPLITS = {"test_private": "regular", "test_private_mixed": "mixed"}  # split: the suffix of its file names
MAPS, BINARY = "anomaly_images", "anomaly_images_thresholded"


def source_images(folder, split):
    """The image paths of an object's private split, named NNN_<suffix>.png for NNN = 000 .. N-1, as MVTec ships them and
    the checker expects them back; a ConfigError otherwise."""
    paths = image_folder(folder, "data_root")
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    expected = [f"{i:03d}_{SPLITS[split]}" for i in range(len(paths))]
    if stems != expected:
        wrong = next(s for s, e in zip(stems, expected) if s != e)
        raise ConfigError(f"data_root: {folder} holds {wrong}, where MVTec AD 2 names its images 000_{SPLITS[split]}.png "
                          f"to {len(paths) - 1:03d}_{SPLITS[split]}.png")
    return paths


def check_inputs(args, names):
    """{object: (checkpoint path, {split: image paths}, validation image paths)}, every input checked before any scoring."""
    found = {}
    for name in names:
        folders = {split: os.path.join(args.data_root, name, split) for split in SPLITS}
        for folder in [*folders.values(), os.path.join(args.data_root, name, "validation", "good")]:
            if not os.path.isdir(folder):
                raise ConfigError(f"data_root={args.data_root}: no folder {folder} (MVTec AD 2 as distributed: "
                                  "<object>/{validation/good,test_private,test_private_mixed}; --objects=a,b for some objects)")
        checkpoint = os.path.join(args.runs, name, "checkpoint.pth")
        if not os.path.isfile(checkpoint):
            raise ConfigError(f"runs={args.runs}: no checkpoint {checkpoint} for {name} (train one: python train.py "
                              f"--data_root=data/mvtec_ad_2 --category={name} --out_dir={args.runs})")
        splits = {split: source_images(folder, split) for split, folder in folders.items()}
        counts = {len(paths) for paths in splits.values()}
        if len(counts) > 1:
            raise ConfigError(f"data_root={args.data_root}: {name}'s test_private and test_private_mixed hold "
                              f"{' and '.join(str(len(p)) for p in splits.values())} images; MVTec AD 2 has as many in each")
        if name in CHECKER_COUNTS and counts != {CHECKER_COUNTS[name]}:
            print(f"warning: {name}: {counts.pop()} images per private split; MVTec's checker expects {CHECKER_COUNTS[name]}")
        validation = image_folder(os.path.join(args.data_root, name, "validation", "good"), "data_root")
        found[name] = (checkpoint, splits, validation)
    return found


def score_native(network, settings, paths, args):
    """The maps of the images at paths as NativeMaps: scored at the checkpoint's image size, resized to each image's own."""
    maps, _ = predict(network, load_images(paths, settings["image_size"]), args.batch_size, args.map_mode, args.amp)
    return NativeMaps(maps, [native_size(p) for p in paths])


def write_object(args, name, inputs, folder, dev):
    """Score one object, write its maps and binary maps under folder; its threshold."""
    import tifffile  # only here: the one command that writes float16 TIFFs

    checkpoint, splits, validation = inputs
    ckpt = load_checkpoint(checkpoint)
    given = {key: "" for key in CHECKPOINT_SETTINGS}
    settings = resolve_settings(ckpt, checkpoint, given, need_data_root=False)
    network = load_network(ckpt, settings, dev, checkpoint)
    threshold = validation_threshold(score_native(network, settings, validation, args))
    print(f"{name}: threshold {threshold:.6f} (mean + 3 std of {len(validation)} validation/good maps at their own size; "
          f"{checkpoint}, image_size={settings['image_size']})")
    for split, paths in splits.items():
        for kind in (MAPS, BINARY):
            os.makedirs(os.path.join(folder, kind, name, split))
        flagged = 0
        for path, amap in zip(paths, score_native(network, settings, paths, args)):
            stem = os.path.splitext(os.path.basename(path))[0]
            tifffile.imwrite(os.path.join(folder, MAPS, name, split, stem + ".tiff"), amap.astype(np.float16))
            binary = np.where(amap >= threshold, 255, 0).astype(np.uint8)
            flagged += int(binary.any())
            Image.fromarray(binary, mode="L").save(os.path.join(folder, BINARY, name, split, stem + ".png"))
        print(f"{name}/{split}: {len(paths)} maps, {flagged} with anomalous pixels")
    return threshold


def main():
    apply_overrides(globals(), sys.argv[1:], config_keys)
    args = SimpleNamespace(**{k: globals()[k] for k in config_keys})
    if not args.data_root:
        raise ConfigError("--data_root is required: MVTec AD 2 as distributed, e.g. --data_root=downloads/mvtec_ad_2")
    if not args.out:
        raise ConfigError("--out is required: the submission folder to write, e.g. --out=submission")
    check_scoring(args.map_mode, args.batch_size)
    all_objects = DATASETS["mvtec_ad_2"].categories
    names = [n for n in args.objects.split(",") if n] if args.objects else list(all_objects)
    unknown = [n for n in names if n not in all_objects]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"--objects={args.objects}: must be distinct objects of MVTec AD 2 ({', '.join(all_objects)})")
    target = os.path.abspath(args.out.rstrip(os.sep))
    thresholds_file = target + ".thresholds.json"
    for path in (target, thresholds_file):
        if os.path.lexists(path) and not args.overwrite:
            raise ConfigError(f"out={args.out}: {path} exists; pass --overwrite=1 to replace it")
    check_outputs(f"out={args.out}", os.path.dirname(target), [os.path.basename(thresholds_file)])
    inputs = check_inputs(args, names)
    if len(names) < len(all_objects):
        print(f"note: {len(names)} of the {len(all_objects)} objects: a partial submission, which MVTec's checker refuses")
    dev = torch.device(resolve_device(args.device))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    building = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.partial-")
    os.chmod(building, 0o777 & ~UMASK)  # mkdtemp's is 0o700; the submission's folder is an ordinary one
    try:
        thresholds = {name: write_object(args, name, inputs[name], building, dev) for name in names}
        if os.path.lexists(target):  # --overwrite=1: the old one goes only once the new one is complete
            old = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.old-")
            os.rename(target, os.path.join(old, "submission"))
            os.rename(building, target)
            shutil.rmtree(old)
        else:
            os.rename(building, target)
    finally:
        if os.path.isdir(building):
            shutil.rmtree(building)
    atomic_write_json(thresholds_file, {"rule": "mean + 3 std of the validation/good maps' pixels at their own size",
                                        "map_mode": args.map_mode, "thresholds": thresholds})
    print(f"wrote {target} ({', '.join(names)}) and {thresholds_file}; run MVTec's check_and_prepare_data_for_upload.py "
          "on it before uploading")


if __name__ == "__main__":
    run_cli(main, lambda: debug)
