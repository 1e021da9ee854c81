"""
Evaluate a Reverse Distillation (RD or RD++) checkpoint on one category's test split, or a unified checkpoint (one
model of several categories, train.py --categories=...) on each of its categories' test splits.

    $ python test.py --checkpoint=runs/bottle/checkpoint.pth
    $ python test.py --checkpoint=wres50_bottle.pth --data_root=data/mvtec --category=bottle   # official checkpoint
    $ python test.py --checkpoint=rdpp_bottle.pth --data_root=data/mvtec --category=bottle     # official RD++ checkpoint
    $ python test.py --checkpoint=runs/bottle/checkpoint.pth --save_images=3   # + 3 picture strips per defect type
    $ python test.py --checkpoint=runs/bottle/checkpoint.pth --images=photos/  # score new images, no labels needed
    $ python test.py --checkpoint=runs/bottle+cable+screw/checkpoint.pth                  # every category, then the mean
    $ python test.py --checkpoint=runs/bottle+cable+screw/checkpoint.pth --category=cable  # one of them
    $ python test.py --checkpoint=runs/bottle/checkpoint.pth --good_images=good/ --false_alarm_rate=0.01  # a threshold

The method is read from the checkpoint: one with RD++'s projection layer ('proj') is scored through it
(teacher -> projection -> OCBE -> decoder), compared with the teacher's own features as in RD.
For every test image: the teacher's and the student's three feature maps, per tap 1 - cosine similarity
along channels, upsampled (bilinear, align_corners=True) to the image size, summed ('add') or multiplied
('mul'), blurred with a sigma-4 Gaussian (scipy.ndimage.gaussian_filter semantics). Image score = map max.
Writes <out_dir>/<category>/results.json (image/pixel AUROC, F1-max, AP, AUPRO, ...), scores.csv, curves.json
(the ROC, precision-recall and PRO curves, utils/metrics.py) and report.html with its pictures in report/ (report.py:
metrics, curves, scores per defect type, the training loss and every test image), and
with --save_images=K images/<type>_<name>.png for the first K test images of each type (folder under test/):
input | ground-truth outline in red | anomaly heatmap with the image score (input | heatmap for a category without
a ground_truth folder, which is evaluated on its image labels alone: pixel metrics null, see results.json 'undefined').

With --images=DIR it scores every image of DIR instead (the test split is not loaded) and writes
<out_dir>/<category>/predict/scores.csv (path,score,label; label 1 = score >= threshold) and a strip
predict/<file name>.png (input | heatmap) per image, and predict/report.html, their gallery. The threshold is
--threshold, else threshold.json beside the checkpoint, else the F1-max threshold (image_f1_threshold) of the
evaluation of this checkpoint in results.json (threshold.py).

With --good_images=DIR it scores a folder of normal images the model did not train on and writes threshold.json
beside the checkpoint: the threshold at which at most --false_alarm_rate of them score at or above it (the rule:
threshold.py). The evaluation's report then shows what that threshold does on the test set.

A unified checkpoint writes each category's files to <out_dir>/<run name>/<category>/ and the mean over its
categories to <out_dir>/<run name>/results.json (results.write_mean); a category scores the same whether it is
evaluated alone (--category=X) or with the others. With --images=DIR it needs --category=X (whose threshold it
takes, writing <run name>/<X>/predict/) or --threshold.

Heatmaps are comparable across a category: the colormap spans the min..max of all the test set's anomaly
maps (saved as heatmap_range in results.json and reused by --images), not each image's own range.

Our checkpoints carry their training config; for an official one ({'bn', 'decoder'}, RD++ also 'proj') give
--data_root and --category, and --backbone/--image_size/--weights if not wide_resnet50_2/256/imagenet.
"""

import json
import os
import sys
import time

from plots import Plotter

# The report's plots are drawn by a process of their own (plots.py), started here, before the import of torch, which
# keeps one core busy for seconds: matplotlib loads on the other one meanwhile, instead of after the scoring.
plotter = Plotter() if __name__ == "__main__" else None

import torch  # noqa: E402

from checkpoints import CHECKPOINT_SETTINGS, LOSS_CSV, category_folder, load_checkpoint, load_network, resolve_settings, run_dir, run_name
from dataset import IMAGE_EXTENSIONS, list_images, load_images, load_test_set
from model.scoring import predict
from report import write_evaluation_report, write_prediction_report
from results import find_evaluation, write_mean
from threshold import FILE_NAME, calibration_path, calibration_record, choose_threshold, load_calibration, min_images
from utils.config import ConfigError, apply_overrides, run_cli
from utils.files import atomic_write_json, atomic_write_text, check_outputs, write_csv
from utils.metrics import metrics_and_curves, metrics_line
from utils.seeding import describe_device, resolve_device
from utils.visualize import evaluation_strip, prediction_strip, save_png, save_prediction_strips

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
device = "auto"  # auto (cuda if available) | cpu | cuda | cuda:1 ...
amp = False  # bf16 autocast for the networks; maps stay float32
compile = False  # torch.compile the scoring (weights frozen): faster per image after a one-off compile (~15 s on CPU)
save_images = 0  # picture strips of up to this many test images per defect type in <out_dir>/<category>/images/
images = ""  # a folder of new images to score instead of evaluating; writes <out_dir>/<category>/predict/
threshold = None  # --images: a score >= threshold is anomalous; None: threshold.json, else image_f1_threshold of results.json
good_images = ""  # a folder of normal images not trained on: calibrate a threshold, write threshold.json beside the checkpoint
false_alarm_rate = 0.01  # --good_images: at most this share of them scores at or above the threshold; needs >= 1/rate images
report = True  # write report.html (+ its pictures) beside results.json, or beside predict/scores.csv with --images
debug = False  # show Python tracebacks for user errors
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith("_") and k.islower() and isinstance(v, (int, float, bool, str, tuple, type(None)))]

def save_test_strips(folder, per_type, test_images, masks, maps, scores, paths, heat_range, image_threshold):
    """images/<type>_<name>.png for the first per_type test images of each type; returns how many."""
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


def image_folder(folder, setting):
    """The sorted image paths of a folder given as --<setting>=folder; a ConfigError if it has none."""
    if not os.path.isdir(folder):
        raise ConfigError(f"{setting}={folder}: no such folder")
    paths = list_images(folder)
    if not paths:
        raise ConfigError(f"{setting}={folder}: holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def score_folder(ckpt, settings, dev, folder, threshold, checkpoint, batch_size, map_mode, amp, compile, report):
    """Score every image of `folder`, label it with the threshold (None: threshold.json's, else the evaluation's),
    write predict/ (see the docstring), with its report.html when `report`."""
    paths = image_folder(folder, "images")
    run_folder = category_folder(settings, settings["category"])  # a unified model without --category: its run folder
    evaluation, problem = find_evaluation(run_folder, checkpoint, settings["image_size"], map_mode)
    calibration, calibration_note = load_calibration(checkpoint, settings["image_size"], map_mode)
    if calibration_note and threshold is None:
        print(f"note: {calibration_note}")
    choice = choose_threshold(threshold, calibration, evaluation)
    if choice.value is None:
        raise ConfigError(f"no threshold: {problem} and there is no {FILE_NAME} beside the checkpoint; evaluate first "
                          f"(python test.py --checkpoint={checkpoint}), calibrate with --good_images=DIR or pass --threshold=VALUE")
    network = load_network(ckpt, settings, dev, checkpoint)
    new_images = load_images(paths, settings["image_size"])  # (N,3,S,S) uint8
    maps, scores = predict(network, new_images, batch_size, map_mode, amp, compile)  # (N,S,S), (N,)
    # the evaluation's colour scale where there is one, so these strips compare with the test set's
    heat_range = evaluation.get("heatmap_range") or (float(maps.min()), float(maps.max()))
    labels = [int(score >= choice.value) for score in scores.tolist()]
    predict_folder = os.path.join(run_folder, "predict")
    strip_files = save_prediction_strips(predict_folder, paths, new_images, maps, scores.tolist(), heat_range, choice.value)
    write_csv(os.path.join(predict_folder, "scores.csv"), ["path", "score", "label"],
              ((p, f"{score:.6f}", label) for p, score, label in zip(paths, scores.tolist(), labels)))
    print(f"{folder}: {sum(labels)} of {len(paths)} images anomalous (score >= {choice.value:.6f}, {choice.source})")
    print(f"wrote {os.path.join(predict_folder, 'scores.csv')} and {len(paths)} strips")
    if report:
        t0 = time.time()
        path = write_prediction_report(predict_folder, folder, paths, strip_files, scores, choice)
        print(f"wrote {path} in {time.time() - t0:.2f}s")


def calibrate_threshold(ckpt, settings, dev, folder, rate, checkpoint, batch_size, map_mode, amp, compile):
    """Score the good images of `folder` and write threshold.json beside the checkpoint (threshold.py's rule)."""
    paths = image_folder(folder, "good_images")
    if len(paths) < min_images(rate):
        raise ConfigError(f"good_images={folder}: {len(paths)} images cannot resolve --false_alarm_rate={rate}; "
                          f"at least {min_images(rate)} (1/rate) are needed: add images or raise the rate")
    network = load_network(ckpt, settings, dev, checkpoint)
    good = load_images(paths, settings["image_size"])  # (N,3,S,S) uint8
    _, scores = predict(network, good, batch_size, map_mode, amp, compile)  # (N,)
    record = calibration_record(scores.tolist(), rate, folder, checkpoint, settings["image_size"], map_mode)
    path = calibration_path(checkpoint)
    atomic_write_json(path, record)
    print(f"threshold {record['threshold']:.6f}: {round(record['calibration_false_alarm_rate'] * len(paths))} of {len(paths)} "
          f"good images score at or above it (rate {record['calibration_false_alarm_rate']:g}; asked {rate:g}, "
          f"resolvable with {len(paths)} images {record['resolved_false_alarm_rate']:g})")
    print(f"wrote {path}; test.py --images and export.py use it, and the evaluation's report shows it on the test set")


def evaluation_threshold(results, scores, labels, checkpoint, image_size, map_mode):
    """The threshold the evaluation's report uses (threshold.py's Choice): threshold.json beside the checkpoint if
    any, printing what it does on the test set, else the F1-max threshold just computed."""
    calibration, note = load_calibration(checkpoint, image_size, map_mode)
    if note:
        print(f"note: {note}")
    choice = choose_threshold(None, calibration, results)
    if calibration:
        flagged, anomalous = scores >= choice.value, labels.bool()
        print(f"calibrated threshold {choice.value:.6f} ({calibration['path']}): false alarms on "
              f"{int((flagged & ~anomalous).sum())} of {int((~anomalous).sum())} good test images, "
              f"defects caught {int((flagged & anomalous).sum())} of {int(anomalous.sum())}")
    return choice


def main():
    apply_overrides(globals(), sys.argv[1:], config_keys)
    if not checkpoint:
        raise ConfigError("--checkpoint is required, e.g. --checkpoint=runs/bottle/checkpoint.pth")
    if map_mode not in ("add", "mul"):
        raise ConfigError(f"--map_mode={map_mode}: must be add or mul")
    if batch_size < 1:
        raise ConfigError(f"--batch_size={batch_size}: must be at least 1")
    if not isinstance(save_images, int) or save_images < 0:
        raise ConfigError(f"--save_images={save_images}: must be a number of images per defect type, 0 for none")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise ConfigError(f"--threshold={threshold}: must be a number")
    if threshold is not None and not images:
        raise ConfigError(f"--threshold={threshold}: only used with --images=DIR")
    if save_images and images:
        raise ConfigError(f"--save_images={save_images}: only used by the evaluation; --images=DIR draws a strip for every image")
    if good_images and (images or save_images or threshold is not None):
        raise ConfigError(f"--good_images={good_images}: calibrates a threshold and does nothing else; run --images, --save_images "
                          "or --threshold separately")
    if isinstance(false_alarm_rate, bool) or not 0 < false_alarm_rate < 1:
        raise ConfigError(f"--false_alarm_rate={false_alarm_rate}: must be in (0, 1), e.g. 0.01 for at most 1% of good images flagged")
    dev = torch.device(resolve_device(device))
    ckpt = load_checkpoint(checkpoint)
    given = {name: globals()[name] for name in CHECKPOINT_SETTINGS}
    settings = resolve_settings(ckpt, checkpoint, given, need_data_root=not images)  # scoring a folder needs no data_root
    unified = len(settings["categories"]) > 1
    pages = (["report.html"], ["report"]) if report else ([], [])  # report.html and its pictures' folder
    if images:
        if unified and not settings["category"] and threshold is None:
            raise ConfigError(f"images={images}: {checkpoint} is a model of {', '.join(settings['categories'])}; pass "
                              "--category=<one of them> to use its threshold, or --threshold=VALUE")
        folder = category_folder(settings, settings["category"])  # the outputs, checked before the data and networks
        check_outputs(f"out_dir={settings['out_dir']}", os.path.join(folder, "predict"), ["scores.csv", *pages[0]], pages[1])
        return score_folder(ckpt, settings, dev, images, threshold, checkpoint, batch_size, map_mode, amp, compile, report)
    if good_images:
        check_outputs(f"checkpoint={checkpoint}", os.path.dirname(checkpoint), [FILE_NAME])
        return calibrate_threshold(ckpt, settings, dev, good_images, false_alarm_rate, checkpoint, batch_size, map_mode, amp, compile)
    names = [settings["category"]] if settings["category"] else settings["categories"]
    run_folder = run_dir(settings["out_dir"], run_name(settings["categories"]))
    for name in names:  # the outputs, checked before the data and networks
        check_outputs(f"out_dir={settings['out_dir']}", category_folder(settings, name), ["results.json", "scores.csv", "curves.json", *pages[0]],
                      (["images"] if save_images else []) + pages[1])
    if unified:
        check_outputs(f"out_dir={settings['out_dir']}", run_folder, ["results.json"])
    network = None  # built after the first test set is read: bad data fails before the teacher is built
    for name in names:
        test_set = load_test_set(settings["data_root"], name, settings["image_size"])
        if network is None:
            network = load_network(ckpt, settings, dev, checkpoint)
        evaluate(ckpt, settings, network, name, test_set, dev, checkpoint, batch_size, map_mode, amp, compile, save_images,
                 plotter if report else None)
    if unified:
        trained_with = json.loads(json.dumps(ckpt.get("config")))  # as results.json holds it (tuples become lists)

        def same(saved):  # a category's results.json of this checkpoint, evaluated as now
            return (os.path.realpath(saved.get("checkpoint", "")) == os.path.realpath(checkpoint) and saved.get("train_config") == trained_with
                    and saved.get("image_size") == settings["image_size"] and saved.get("map_mode") == map_mode)

        mean = write_mean(run_folder, settings["categories"], same,
                          {"checkpoint": checkpoint, "method": settings["method"], "backbone": settings["backbone"], "image_size": settings["image_size"],
                           "map_mode": map_mode, "train_config": ckpt.get("config")})
        print(f"mean over {len(mean['evaluated'])} of {len(mean['categories'])} categories" + (f" (missing: {', '.join(mean['missing'])})" if mean["missing"] else "")
              + f": {metrics_line(mean)}")
        print(f"wrote {os.path.join(run_folder, 'results.json')}")


def evaluate(ckpt, settings, network, name, test_set, dev, checkpoint, batch_size, map_mode, amp, compile, save_images, plotter):
    """Score one category's test set (load_test_set's), write its results.json, scores.csv, curves.json, picture
    strips (the first save_images of each defect type) and, given a plots.Plotter, report.html in category_folder,
    print its metrics."""
    test_images, masks, labels, paths = test_set
    if masks is None:
        print(f"{name}: no ground_truth folder: evaluated on image labels from the test folder names "
              "(good = normal, any other = anomalous); pixel metrics are not computed")
    t0 = time.time()
    maps, scores = predict(network, test_images, batch_size, map_mode, amp, compile)  # (N,S,S), (N,)
    predict_seconds = time.time() - t0
    metrics, curves = metrics_and_curves(scores, labels, maps, masks)

    folder = category_folder(settings, name)
    results = {
        "category": name, **metrics, "n_images": len(labels), "n_anomalous": int(labels.sum()),
        "checkpoint": checkpoint, "method": settings["method"], "backbone": settings["backbone"], "weights": settings["weights"],
        "image_size": settings["image_size"], "map_mode": map_mode, "seconds_per_image": predict_seconds / len(labels),
        "heatmap_range": [float(maps.min()), float(maps.max())],  # the heatmap colour scale of this category
        "train_config": ckpt.get("config"),  # None for official checkpoints
        "device": describe_device(dev), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(os.path.join(folder, "results.json"), results)
    atomic_write_text(os.path.join(folder, "curves.json"), json.dumps(curves) + "\n")
    write_csv(os.path.join(folder, "scores.csv"), ["path", "label", "score"],
              ((p, label, f"{score:.6f}") for p, label, score in zip(paths, labels.tolist(), scores.tolist())))
    print(f"{name} ({settings['method']}): {metrics_line(metrics)}")
    for metric, reason in metrics["undefined"].items():
        if masks is not None or not metric.startswith("pixel_"):  # without masks: said once when the test set was loaded
            print(f"  {metric} undefined: {reason}")
    print(f"wrote {os.path.join(folder, 'results.json')} and scores.csv ({len(labels)} images, {predict_seconds / len(labels):.3f}s per image)")
    if save_images:
        n_strips = save_test_strips(folder, save_images, test_images, masks, maps, scores, paths, results["heatmap_range"], metrics["image_f1_threshold"])
        print(f"wrote {n_strips} picture strips to {os.path.join(folder, 'images')}")
    choice = evaluation_threshold(results, scores, labels, checkpoint, settings["image_size"], map_mode)
    if plotter:
        t0 = time.time()
        path = write_evaluation_report(folder, results, curves, test_images, masks, maps, paths, labels, scores, choice,
                                       os.path.join(os.path.dirname(os.path.abspath(checkpoint)), LOSS_CSV), plotter)
        print(f"wrote {path} in {time.time() - t0:.2f}s")


if __name__ == "__main__":
    try:
        run_cli(main, lambda: debug)
    finally:
        plotter.close()
