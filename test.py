"""
Evaluate a Reverse Distillation (RD or RD++) checkpoint on one category's test split, or a unified checkpoint (one
model of several categories, train.py --categories=...) on each of its categories' test splits.

    $ python test.py --checkpoint=runs/bottle/checkpoint.pth
    $ python test.py --checkpoint=wres50_bottle.pth --data_root=data/mvtec --category=bottle   # official checkpoint
    $ python test.py --checkpoint=rdpp_bottle.pth --data_root=data/mvtec --category=bottle     # official RD++ checkpoint
    $ python test.py --checkpoint=runs/bottle/checkpoint.pth --save_images=3   # + 3 picture strips per defect type
    $ python test.py --checkpoint=runs/bottle+cable+screw/checkpoint.pth                  # every category, then the mean
    $ python test.py --checkpoint=runs/bottle+cable+screw/checkpoint.pth --category=cable  # one of them
    $ python test.py --checkpoint=runs/specks/checkpoint.pth --eval_size=native   # pixel metrics at the masks' own size
    $ python test.py --checkpoint=runs/mvtec_ad_2/can/checkpoint.pth --protocol=mvtec_ad_2   # + SegF1, MVTec AD 2's way

Scoring a folder of new images is predict.py's job, a threshold from good images calibrate.py's.

The method is read from the checkpoint: one with RD++'s projection layer ('proj') is scored through it
(teacher -> projection -> OCBE -> decoder), compared with the teacher's own features as in RD.
For every test image: the teacher's and the student's three feature maps, per tap 1 - cosine similarity
along channels, upsampled (bilinear, align_corners=True) to the image size, summed ('add') or multiplied
('mul'), blurred with a sigma-4 Gaussian (scipy.ndimage.gaussian_filter semantics). Image score = map max.
The pixel metrics compare those maps with the masks resized to image_size (eval_size=image, RD4AD's protocol), or
each map resized to its mask's own size (eval_size=native: model.anomaly_map.resize_map, bilinear; MVTec AD's and
MVTec AD 2's evaluation); image scores are the same either way.

--protocol=mvtec_ad_2 (the default for a checkpoint trained with it) evaluates as MVTec AD 2 does: at native size,
and with SegF1 (evaluation.metrics.seg_f1), the pixel F1 at the threshold of the category's defect-free validation
images (CATEGORY/validation/good, which prepare_dataset.py --format=mvtec_ad_2 keeps): the mean + 3 standard deviations
of every pixel of their maps, at the size the test maps are compared at (evaluation.threshold.validation_threshold).
results.json then also holds seg_f1, seg_threshold and seg_threshold_source.
Writes <out_dir>/<category>/results.json (image/pixel AUROC, F1-max, AP, AUPRO, ...), scores.csv, curves.json
(the ROC, precision-recall and PRO curves, evaluation/metrics.py) and report.html with its pictures in report/ (evaluation/report.py:
metrics, curves, scores per defect type, the training loss and every test image), and
with --save_images=K images/<type>_<name>.png for the first K test images of each type (folder under test/):
input | ground-truth outline in red | anomaly heatmap with the image score (input | heatmap for a category without
a ground_truth folder, which is evaluated on its image labels alone: pixel metrics null, see results.json 'undefined').

A unified checkpoint writes each category's files to <out_dir>/<run name>/<category>/ and the mean over its
categories to <out_dir>/<run name>/results.json (results.write_mean); a category scores the same whether it is
evaluated alone (--category=X) or with the others.

Heatmaps are comparable across a category: the colormap spans the min..max of all the test set's anomaly
maps (saved as heatmap_range in results.json and reused by predict.py), not each image's own range.

Our checkpoints carry their training config; for an official one ({'bn', 'decoder'}, RD++ also 'proj') give
--data_root and --category, and --backbone/--image_size/--weights if not wide_resnet50_2/256/imagenet.
"""

import json
import os
import sys
import time
from types import SimpleNamespace

from evaluation.plots import Plotter

# The report's plots are drawn by a process of their own (evaluation/plots.py), started here, before the import of torch, which
# keeps one core busy for seconds: matplotlib loads on the other one meanwhile, instead of after the scoring.
plotter = Plotter() if __name__ == "__main__" else None

import torch  # noqa: E402

from dataset import image_folder, load_images, load_native_masks, load_test_set
from evaluation.metrics import metrics_and_curves, metrics_line, seg_f1
from evaluation.report import write_evaluation_report
from evaluation.results import write_mean
from evaluation.threshold import choose_threshold, validation_threshold
from evaluation.visualize import evaluation_strip, prediction_strip, save_png
from model.anomaly_map import NativeMaps, resize_map
from model.checkpoint import CHECKPOINT_SETTINGS, load_checkpoint, load_network, resolve_settings
from model.protocols import PROTOCOLS
from model.scoring import check_scoring, predict
from utils.config import ConfigError, apply_overrides, run_cli, script_settings
from utils.files import atomic_write_json, atomic_write_text, check_outputs, write_csv
from utils.images import native_size
from utils.runs import LOSS_CSV, category_folder, run_dir, run_name
from utils.seeding import describe_device, resolve_device

# -----------------------------------------------------------------------------
checkpoint = ""  # path of a checkpoint written by train.py, or an official RD4AD one
data_root = ""  # default: the checkpoint's training data_root
category = ""  # default: the checkpoint's category; of a unified checkpoint: every category it was trained on
out_dir = ""  # default: the checkpoint's out_dir ('runs' for official checkpoints)
weights = ""  # teacher weights, default: the checkpoint's ('imagenet' for official checkpoints)
backbone = ""  # default: the checkpoint's ('wide_resnet50_2' for official checkpoints)
image_size = 0  # default: the checkpoint's (256 for official checkpoints)
batch_size = 16  # test batch; does not change any score
map_mode = "add"  # add | mul: how the three per-tap maps are combined
eval_size = "image"  # image: masks resized to image_size (RD4AD's protocol) | native: each map upsampled to its mask's own size (MVTec AD's and MVTec AD 2's evaluation)
protocol = ""  # default: the checkpoint's (train.py --protocol), official for an official one | official, ader: the metrics above | mvtec_ad_2: also SegF1 at the validation images' threshold, eval_size native unless given
device = "auto"  # auto (cuda if available) | cpu | cuda | cuda:1 ...
amp = False  # bf16 autocast for the networks; maps stay float32
compile = False  # torch.compile the scoring (weights frozen): faster per image after a one-off compile (~15 s on CPU)
save_images = 0  # picture strips of up to this many test images per defect type in <out_dir>/<category>/images/
report = True  # write report.html (+ its pictures) beside results.json
debug = False  # show Python tracebacks for user errors
# -----------------------------------------------------------------------------
config_keys = list(script_settings(__file__))  # the names of the settings above: what --name=value may set
# test.py's settings that became commands of their own
MOVED = {name: f"scoring a folder of new images is a command of its own: python predict.py --checkpoint=CHECKPOINT --images=DIR"
         for name in ("images", "threshold")}
MOVED.update({name: f"calibrating a threshold on good images is a command of its own: python calibrate.py --checkpoint=CHECKPOINT "
              "--good_images=DIR --false_alarm_rate=0.01" for name in ("good_images", "false_alarm_rate")})


def save_test_strips(folder, per_type, test_set, maps, scores, *, heat_range, image_threshold):
    """images/<type>_<name>.png for the first per_type test images of each type (test_set: load_test_set's); returns how many."""
    test_images, masks, _, paths = test_set
    written = {}
    for i, (image, amap, score, path) in enumerate(zip(test_images, maps, scores.tolist(), paths)):
        defect = os.path.basename(os.path.dirname(path))  # path is 'test/<type>/<file>'
        if written.get(defect, 0) < per_type:
            name = f"{defect}_{os.path.splitext(os.path.basename(path))[0]}.png"
            # without masks (image labels only) the strip has no ground-truth panel
            strip = (prediction_strip(image, amap, score, heat_range, image_threshold) if masks is None
                     else evaluation_strip(image, masks[i], amap, score, heat_range, image_threshold))
            save_png(os.path.join(folder, "images", name), strip)
            written[defect] = written.get(defect, 0) + 1
    return sum(written.values())


def evaluation_threshold(args, settings, results, scores, labels):
    """The threshold the evaluation's report uses (evaluation/threshold.py's choose_threshold): threshold.json beside
    the checkpoint if any, printing what it does on the test set, else the F1-max threshold just computed."""
    choice = choose_threshold(None, args.checkpoint, settings["image_size"], args.map_mode, results)
    if choice.calibration:
        flagged, anomalous = scores.double() >= choice.value, labels.bool()  # float64: a float32 compare rounds the threshold
        print(f"calibrated threshold {choice.value:.6f} ({choice.calibration['path']}): false alarms on "
              f"{int((flagged & ~anomalous).sum())} of {int((~anomalous).sum())} good test images, "
              f"defects caught {int((flagged & anomalous).sum())} of {int(anomalous.sum())}")
    return choice


def segmentation(args, settings, network, name, maps, masks):
    """MVTec AD 2's segmentation results of one category: its threshold from CATEGORY/validation/good (mean + 3 std of
    every pixel of their maps, at the size the test maps are compared at) and SegF1 at it, over the test maps and
    masks (maps, masks: those the pixel metrics were computed on)."""
    folder = os.path.join(settings["data_root"], name, "validation", "good")
    paths = image_folder(folder, "validation")
    validation, _ = predict(network, load_images(paths, settings["image_size"]), args.batch_size, args.map_mode, args.amp, args.compile)
    native = args.eval_size == "native"
    if native:  # each at its image's (H_i,W_i), one at a time
        validation = NativeMaps(validation, [native_size(path) for path in paths])
    threshold = validation_threshold(validation)
    found = {"seg_threshold": threshold, "seg_threshold_source": f"mean + 3 std of every pixel of the {len(paths)} validation maps of "
             f"{folder}, at {'their own size' if native else 'image_size'} (MVTec AD 2's rule)"}
    if masks is None:
        return {**found, "seg_f1": None}, {"seg_f1": "no ground_truth folder: no pixel labels"}
    try:
        return {**found, "seg_f1": seg_f1(maps, masks, threshold)}, {}
    except ValueError as e:  # no anomalous pixel in the masks
        return {**found, "seg_f1": None}, {"seg_f1": str(e)}


def evaluate(args, settings, network, name, test_set, plotter):
    """Score one category's test set (load_test_set's), write its results.json, scores.csv, curves.json, picture
    strips (the first args.save_images of each defect type) and, given a plots.Plotter, report.html in
    category_folder, print its metrics."""
    test_images, masks, labels, paths = test_set
    if masks is None:
        print(f"{name}: no ground_truth folder: evaluated on image labels from the test folder names "
              "(good = normal, any other = anomalous); pixel metrics are not computed")
    t0 = time.time()
    maps, scores = predict(network, test_images, args.batch_size, args.map_mode, args.amp, args.compile)  # (N,S,S), (N,)
    predict_seconds = time.time() - t0
    pixel_maps, pixel_masks = maps, masks
    if args.eval_size == "native" and masks is not None:
        pixel_masks = load_native_masks(settings["data_root"], name, paths)  # (H_i,W_i) each
        pixel_maps = [resize_map(amap, mask.shape) for amap, mask in zip(maps, pixel_masks)]
    metrics, curves = metrics_and_curves(scores, labels, pixel_maps, pixel_masks)
    segmented, seg_undefined = segmentation(args, settings, network, name, pixel_maps, pixel_masks) if args.protocol == "mvtec_ad_2" else ({}, {})
    metrics["undefined"].update(seg_undefined)
    del pixel_maps, pixel_masks  # native size: may be gigabytes

    folder = category_folder(settings, name)
    results = {
        "category": name, **metrics, **segmented, "n_images": len(labels), "n_anomalous": int(labels.sum()),
        "checkpoint": args.checkpoint, "method": settings["method"], "backbone": settings["backbone"], "weights": settings["weights"],
        "image_size": settings["image_size"], "map_mode": args.map_mode, "eval_size": args.eval_size, "protocol": args.protocol,
        "seconds_per_image": predict_seconds / len(labels),
        "heatmap_range": [float(maps.min()), float(maps.max())],  # the heatmap colour scale of this category
        "train_config": settings["train_config"],  # None for official checkpoints
        "device": describe_device(next(network.parameters()).device), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(os.path.join(folder, "results.json"), results)
    atomic_write_text(os.path.join(folder, "curves.json"), json.dumps(curves) + "\n")
    write_csv(os.path.join(folder, "scores.csv"), ["path", "label", "score"],
              ((p, label, f"{score:.6f}") for p, label, score in zip(paths, labels.tolist(), scores.tolist())))
    print(f"{name} ({settings['method']}): {metrics_line(metrics)}")
    if segmented:
        print(f"  MVTec AD 2: seg_f1 {'n/a' if segmented['seg_f1'] is None else format(segmented['seg_f1'], '.3f')} | "
              f"pixel_aupro_05 {'n/a' if metrics['pixel_aupro_05'] is None else format(metrics['pixel_aupro_05'], '.3f')} | "
              f"threshold {segmented['seg_threshold']:.6f}: {segmented['seg_threshold_source']}")
    for metric, reason in metrics["undefined"].items():
        if masks is not None or not metric.startswith("pixel_"):  # without masks: said once when the test set was loaded
            print(f"  {metric} undefined: {reason}")
    print(f"wrote {os.path.join(folder, 'results.json')} and scores.csv ({len(labels)} images, {predict_seconds / len(labels):.3f}s per image)")
    if args.save_images:
        n_strips = save_test_strips(folder, args.save_images, test_set, maps, scores, heat_range=results["heatmap_range"],
                                    image_threshold=metrics["image_f1_threshold"])
        print(f"wrote {n_strips} picture strips to {os.path.join(folder, 'images')}")
    choice = evaluation_threshold(args, settings, results, scores, labels)
    if plotter:
        t0 = time.time()
        path = write_evaluation_report(folder, results, curves, test_set, maps, scores, threshold=choice,
                                       loss_csv=os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), LOSS_CSV), plotter=plotter)
        print(f"wrote {path} in {time.time() - t0:.2f}s")


def main():
    apply_overrides(globals(), sys.argv[1:], config_keys, MOVED)
    args = SimpleNamespace(**{k: globals()[k] for k in config_keys})
    if not args.checkpoint:
        raise ConfigError("--checkpoint is required, e.g. --checkpoint=runs/bottle/checkpoint.pth")
    check_scoring(args.map_mode, args.batch_size)
    if args.eval_size not in ("image", "native"):
        raise ConfigError(f"--eval_size={args.eval_size}: must be image or native")
    if not isinstance(args.save_images, int) or args.save_images < 0:
        raise ConfigError(f"--save_images={args.save_images}: must be a number of images per defect type, 0 for none")
    dev = torch.device(resolve_device(args.device))
    ckpt = load_checkpoint(args.checkpoint)
    settings = resolve_settings(ckpt, args.checkpoint, {name: getattr(args, name) for name in CHECKPOINT_SETTINGS})
    unified = len(settings["categories"]) > 1
    names = [settings["category"]] if settings["category"] else settings["categories"]
    args.protocol = args.protocol or (settings["train_config"] or {}).get("protocol", "official")
    if args.protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol={args.protocol}: must be {', '.join(PROTOCOLS)}")
    if args.protocol == "mvtec_ad_2":
        if not any(arg.startswith("--eval_size=") for arg in sys.argv[1:]):
            args.eval_size = "native"  # MVTec AD 2 evaluates at the images' own size
        for name in names:  # its threshold needs the validation images: checked before any work
            folder = os.path.join(settings["data_root"], name, "validation", "good")
            if not os.path.isdir(folder):
                raise ConfigError(f"--protocol=mvtec_ad_2: no folder {folder}; MVTec AD 2's segmentation threshold comes from its "
                                  "defect-free validation images (prepare_dataset.py --format=mvtec_ad_2 keeps them)")
    run_folder = run_dir(settings["out_dir"], run_name(settings["categories"]))
    pages = (["report.html"], ["report"]) if args.report else ([], [])  # report.html and its pictures' folder
    for name in names:  # the outputs, checked before the data and networks
        check_outputs(f"out_dir={settings['out_dir']}", category_folder(settings, name), ["results.json", "scores.csv", "curves.json", *pages[0]],
                      (["images"] if args.save_images else []) + pages[1])
    if unified:
        check_outputs(f"out_dir={settings['out_dir']}", run_folder, ["results.json"])
    network = None  # built after the first test set is read: bad data fails before the teacher is built
    for name in names:
        test_set = load_test_set(settings["data_root"], name, settings["image_size"])
        if network is None:
            network = load_network(ckpt, settings, dev, args.checkpoint)
        evaluate(args, settings, network, name, test_set, plotter if args.report else None)
    if unified:
        trained_with = json.loads(json.dumps(settings["train_config"]))  # as results.json holds it (tuples become lists)

        def same(saved):  # a category's results.json of this checkpoint, evaluated as now
            return (os.path.realpath(saved.get("checkpoint", "")) == os.path.realpath(args.checkpoint) and saved.get("train_config") == trained_with
                    and saved.get("image_size") == settings["image_size"] and saved.get("map_mode") == args.map_mode
                    and saved.get("eval_size", "image") == args.eval_size and saved.get("protocol", "official") == args.protocol)

        mean = write_mean(run_folder, settings["categories"], same,
                          {"checkpoint": args.checkpoint, "method": settings["method"], "backbone": settings["backbone"],
                           "image_size": settings["image_size"], "map_mode": args.map_mode, "eval_size": args.eval_size,
                           "train_config": settings["train_config"]})
        print(f"mean over {len(mean['evaluated'])} of {len(mean['categories'])} categories" + (f" (missing: {', '.join(mean['missing'])})" if mean["missing"] else "")
              + f": {metrics_line(mean)}")
        print(f"wrote {os.path.join(run_folder, 'results.json')}")


if __name__ == "__main__":
    try:
        run_cli(main, lambda: debug)
    finally:
        plotter.close()
