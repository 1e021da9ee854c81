"""
Evaluate a Reverse Distillation (RD or RD++) checkpoint on one category's test split.

    $ python test.py --checkpoint=runs/bottle/checkpoint.pth
    $ python test.py --checkpoint=wres50_bottle.pth --data_root=data/mvtec --category=bottle   # official checkpoint
    $ python test.py --checkpoint=rdpp_bottle.pth --data_root=data/mvtec --category=bottle     # official RD++ checkpoint
    $ python test.py --checkpoint=runs/bottle/checkpoint.pth --save_images=3   # + 3 picture strips per defect type
    $ python test.py --checkpoint=runs/bottle/checkpoint.pth --images=photos/  # score new images, no labels needed
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

Heatmaps are comparable across a category: the colormap spans the min..max of all the test set's anomaly
maps (saved as heatmap_range in results.json and reused by --images), not each image's own range.

Our checkpoints carry their training config; for an official one ({'bn', 'decoder'}, RD++ also 'proj') give
--data_root and --category, and --backbone/--image_size/--weights if not wide_resnet50_2/256/imagenet.
"""

import functools
import json
import os
import sys
import time

import torch

from dataset import IMAGE_EXTENSIONS, list_images, load_images, load_test_set
from model import OCBE, Decoder, MultiProjection, build_encoder, build_loaded
from report import start_importing_matplotlib, write_evaluation_report, write_prediction_report
from threshold import FILE_NAME, calibration_record, choose_threshold, load_calibration, min_images
from utils.anomaly_map import inference_network, predict
from utils.config import ConfigError, apply_overrides, run_cli
from utils.files import atomic_write_json, atomic_write_text, write_csv
from utils.io import load_checkpoint, run_dir
from utils.metrics import metrics_and_curves
from utils.seeding import describe_device, resolve_device
from utils.visualize import evaluation_strip, prediction_strip, save_png

# -----------------------------------------------------------------------------
checkpoint = ""  # path of a checkpoint written by train.py, or an official RD4AD one
data_root = ""  # default: the checkpoint's training data_root
category = ""  # default: the checkpoint's category
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

# what an official checkpoint, which carries no config, was trained with
OFFICIAL_CONFIG = {"backbone": "wide_resnet50_2", "image_size": 256, "weights": "imagenet", "seed": 0, "out_dir": "runs"}


def checkpoint_method(ckpt):
    """'rd++' for a checkpoint with RD++'s projection layer ('proj'), else 'rd'; the config, where there is one, must agree."""
    method = "rd++" if "proj" in ckpt else "rd"
    trained = ckpt.get("config", {}).get("method", method)
    if trained != method:
        raise ConfigError(f"checkpoint={checkpoint}: its config says method={trained}, but it {'has' if method == 'rd++' else 'lacks'} RD++'s projection layer 'proj'")
    return method


def resolve_settings(ckpt):
    """Command-line settings win where the checkpoint has none; where it has one, they must agree with it."""
    trained = ckpt.get("config", OFFICIAL_CONFIG)
    settings = {}
    for name in ("data_root", "category", "out_dir", "weights", "backbone", "image_size"):
        given, saved = globals()[name], trained.get(name)
        if name in ("backbone", "image_size") and given and "config" in ckpt and given != saved:
            raise ConfigError(f"--{name}={given}: {checkpoint} was trained with {name}={saved}")
        settings[name] = given or saved
        if not settings[name] and not (name == "data_root" and images):  # scoring a folder needs no data_root
            raise ConfigError(f"--{name} is required: {checkpoint} does not say which {name} it was trained on")
    settings["seed"] = trained.get("seed", 0)
    settings["method"] = checkpoint_method(ckpt)
    return settings


def load_network(ckpt, settings, dev):
    """The checkpoint's teacher + student as one network for scoring (utils.anomaly_map.inference_network);
    with RD++'s projection layer when the checkpoint has one ('proj'), loaded as strictly as the rest."""
    encoder = build_encoder(settings["backbone"], settings["weights"], settings["seed"])
    # official checkpoints of some categories carry extra 'memory' keys that no model uses
    bn_state = {k: v for k, v in ckpt["bn"].items() if "memory" not in k}
    try:  # built straight from the checkpoint's tensors, without a random initialisation first
        ocbe = build_loaded(functools.partial(OCBE, settings["backbone"]), bn_state)
        decoder = build_loaded(functools.partial(Decoder, settings["backbone"]), ckpt["decoder"])
        proj = build_loaded(functools.partial(MultiProjection, settings["backbone"]), ckpt["proj"]) if "proj" in ckpt else None
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line or "Missing" in line or "Unexpected" in line), "")
        raise ConfigError(f"checkpoint={checkpoint}: does not fit backbone={settings['backbone']} ({detail[:200]})") from None
    return inference_network(encoder, ocbe, decoder, proj).to(dev)


def save_test_strips(folder, test_images, masks, maps, scores, paths, heat_range, image_threshold):
    """images/<type>_<name>.png for the first save_images test images of each type; returns how many."""
    written = {}
    for i, (image, amap, score, path) in enumerate(zip(test_images, maps, scores.tolist(), paths)):
        defect = os.path.basename(os.path.dirname(path))  # path is 'test/<type>/<file>'
        if written.get(defect, 0) < save_images:
            name = f"{defect}_{os.path.splitext(os.path.basename(path))[0]}.png"
            # without masks (image labels only) the strip has no ground-truth panel
            strip = (prediction_strip(image, amap, score, heat_range, image_threshold) if masks is None
                     else evaluation_strip(image, masks[i], amap, score, heat_range, image_threshold))
            save_png(os.path.join(folder, "images", name), strip)
            written[defect] = written.get(defect, 0) + 1
    return sum(written.values())


def load_evaluation(folder, settings):
    """results.json of this checkpoint's evaluation at the current image_size and map_mode, or {} if none."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            saved = json.load(f)
    except ValueError:
        raise ConfigError(f"{path}: not valid JSON; evaluate again with python test.py --checkpoint={checkpoint}") from None
    same = (os.path.realpath(saved.get("checkpoint", "")) == os.path.realpath(checkpoint)
            and saved.get("image_size") == settings["image_size"] and saved.get("map_mode") == map_mode)
    return saved if same else {}


def image_folder(folder, setting):
    """The sorted image paths of a folder given as --<setting>=folder; a ConfigError if it has none."""
    if not os.path.isdir(folder):
        raise ConfigError(f"{setting}={folder}: no such folder")
    paths = list_images(folder)
    if not paths:
        raise ConfigError(f"{setting}={folder}: holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def score_folder(ckpt, settings, dev):
    """Score every image of the folder `images`, label it with the threshold, write predict/ (see the docstring)."""
    paths = image_folder(images, "images")
    folder = run_dir(settings["out_dir"], settings["category"])
    evaluation = load_evaluation(folder, settings)
    calibration, calibration_note = load_calibration(checkpoint, settings["image_size"], map_mode)
    if calibration_note and threshold is None:
        print(f"note: {calibration_note}")
    choice = choose_threshold(threshold, calibration, evaluation)
    if choice.value is None:
        results_path = os.path.join(folder, "results.json")
        problem = "does not exist" if not os.path.isfile(results_path) else (
            f"holds no image_f1_threshold of checkpoint={checkpoint} at image_size={settings['image_size']}, map_mode={map_mode}")
        raise ConfigError(f"no threshold: {results_path} {problem} and there is no {FILE_NAME} beside the checkpoint; evaluate first "
                          f"(python test.py --checkpoint={checkpoint}), calibrate with --good_images=DIR or pass --threshold=VALUE")
    network = load_network(ckpt, settings, dev)
    new_images = load_images(paths, settings["image_size"])  # (N,3,S,S) uint8
    maps, scores = predict(network, new_images, batch_size, map_mode, amp, compile)  # (N,S,S), (N,)
    # the evaluation's colour scale where there is one, so these strips compare with the test set's
    heat_range = evaluation.get("heatmap_range") or (float(maps.min()), float(maps.max()))
    labels = [int(score >= choice.value) for score in scores.tolist()]
    predict_folder = os.path.join(folder, "predict")
    strip_files = []
    for path, image, amap, score in zip(paths, new_images, maps, scores.tolist()):
        name = os.path.basename(path)
        strip_files.append(name if name.lower().endswith(".png") else name + ".png")
        save_png(os.path.join(predict_folder, strip_files[-1]), prediction_strip(image, amap, score, heat_range, choice.value))
    write_csv(os.path.join(predict_folder, "scores.csv"), ["path", "score", "label"],
              ((p, f"{score:.6f}", label) for p, score, label in zip(paths, scores.tolist(), labels)))
    print(f"{images}: {sum(labels)} of {len(paths)} images anomalous (score >= {choice.value:.6f}, {choice.source})")
    print(f"wrote {os.path.join(predict_folder, 'scores.csv')} and {len(paths)} strips")
    if report:
        t0 = time.time()
        path = write_prediction_report(predict_folder, images, paths, strip_files, scores, choice)
        print(f"wrote {path} in {time.time() - t0:.2f}s")


def calibrate_threshold(ckpt, settings, dev):
    """Score the folder `good_images` and write threshold.json beside the checkpoint (threshold.py's rule)."""
    paths = image_folder(good_images, "good_images")
    if len(paths) < min_images(false_alarm_rate):
        raise ConfigError(f"good_images={good_images}: {len(paths)} images cannot resolve --false_alarm_rate={false_alarm_rate}; "
                          f"at least {min_images(false_alarm_rate)} (1/rate) are needed: add images or raise the rate")
    network = load_network(ckpt, settings, dev)
    good = load_images(paths, settings["image_size"])  # (N,3,S,S) uint8
    _, scores = predict(network, good, batch_size, map_mode, amp, compile)  # (N,)
    record = calibration_record(scores.tolist(), false_alarm_rate, good_images, checkpoint, settings["image_size"], map_mode)
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), FILE_NAME)
    atomic_write_json(path, record)
    print(f"threshold {record['threshold']:.6f}: {round(record['calibration_false_alarm_rate'] * len(paths))} of {len(paths)} "
          f"good images score at or above it (rate {record['calibration_false_alarm_rate']:g}; asked {false_alarm_rate:g}, "
          f"resolvable with {len(paths)} images {record['resolved_false_alarm_rate']:g})")
    print(f"wrote {path}; test.py --images and export.py use it, and the evaluation's report shows it on the test set")


def evaluation_threshold(results, scores, labels, settings):
    """The threshold the evaluation's report uses (threshold.py's Choice): threshold.json beside the checkpoint if
    any, printing what it does on the test set, else the F1-max threshold just computed."""
    calibration, note = load_calibration(checkpoint, settings["image_size"], map_mode)
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
    settings = resolve_settings(ckpt)
    if images:
        return score_folder(ckpt, settings, dev)
    if good_images:
        return calibrate_threshold(ckpt, settings, dev)
    if report:
        start_importing_matplotlib()  # while the test set is read and scored
    test_images, masks, labels, paths = load_test_set(settings["data_root"], settings["category"], settings["image_size"])
    if masks is None:
        print(f"{settings['category']}: no ground_truth folder: evaluated on image labels from the test folder names "
              "(good = normal, any other = anomalous); pixel metrics are not computed")
    network = load_network(ckpt, settings, dev)

    t0 = time.time()
    maps, scores = predict(network, test_images, batch_size, map_mode, amp, compile)  # (N,S,S), (N,)
    predict_seconds = time.time() - t0
    metrics, curves = metrics_and_curves(scores, labels, maps, masks)

    folder = run_dir(settings["out_dir"], settings["category"])
    results = {
        "category": settings["category"], **metrics, "n_images": len(labels), "n_anomalous": int(labels.sum()),
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
    shown = ("image_auroc", "pixel_auroc", "image_f1", "pixel_aupro")
    print(f"{settings['category']} ({settings['method']}): " + " | ".join(f"{k} {metrics[k]:.3f}" if metrics[k] is not None else f"{k} n/a" for k in shown))
    for name, reason in metrics["undefined"].items():
        if masks is not None or not name.startswith("pixel_"):  # without masks: said once when the test set was loaded
            print(f"  {name} undefined: {reason}")
    print(f"wrote {os.path.join(folder, 'results.json')} and scores.csv ({len(labels)} images, {predict_seconds / len(labels):.3f}s per image)")
    if save_images:
        n_strips = save_test_strips(folder, test_images, masks, maps, scores, paths, results["heatmap_range"], metrics["image_f1_threshold"])
        print(f"wrote {n_strips} picture strips to {os.path.join(folder, 'images')}")
    choice = evaluation_threshold(results, scores, labels, settings)
    if report:
        t0 = time.time()
        path = write_evaluation_report(folder, results, curves, test_images, masks, maps, paths, labels, scores, choice,
                                       os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "loss.csv"))
        print(f"wrote {path} in {time.time() - t0:.2f}s")


if __name__ == "__main__":
    run_cli(main, lambda: debug)
