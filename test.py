"""
Evaluate a Reverse Distillation (RD or RD++) checkpoint on one category's test split, or a unified checkpoint (one
model of several categories, train.py --categories=...) on each of its categories' test splits.

    $ python test.py --checkpoint=runs/bottle/checkpoint.pth
    $ python test.py --checkpoint=runs/bottle+cable+screw/checkpoint.pth                  # every category, then the mean
    $ python test.py --checkpoint=runs/bottle+cable+screw/checkpoint.pth --category=cable  # one of them
    $ python test.py --checkpoint=wres50_bottle.pth --data_root=data/mvtec --category=bottle   # official checkpoint
    $ python test.py --checkpoint=rdpp_bottle.pth --data_root=data/mvtec --category=bottle     # official RD++ checkpoint
    $ python test.py --checkpoint=runs/bottle/checkpoint.pth --save_images=3   # + 3 picture strips per defect type
    $ python test.py --checkpoint=runs/bottle/checkpoint.pth --images=photos/  # score new images, no labels needed

The method is read from the checkpoint: one with RD++'s projection layer ('proj') is scored through it
(teacher -> projection -> OCBE -> decoder), compared with the teacher's own features as in RD.
For every test image: the teacher's and the student's three feature maps, per tap 1 - cosine similarity
along channels, upsampled (bilinear, align_corners=True) to the image size, summed ('add') or multiplied
('mul'), blurred with a sigma-4 Gaussian (scipy.ndimage.gaussian_filter semantics). Image score = map max.
Writes <out_dir>/<category>/results.json (image/pixel AUROC, F1-max, AP, AUPRO, ...) and scores.csv, and
with --save_images=K images/<type>_<name>.png for the first K test images of each type (folder under test/):
input | ground-truth outline in red | anomaly heatmap with the image score (input | heatmap for a category without
a ground_truth folder, which is evaluated on its image labels alone: pixel metrics null, see results.json 'undefined').

With --images=DIR it scores every image of DIR instead (the test split is not loaded) and writes
<out_dir>/<category>/predict/scores.csv (path,score,label; label 1 = score >= threshold) and a strip
predict/<file name>.png (input | heatmap) per image. The threshold is --threshold, or the F1-max threshold
(image_f1_threshold) of the evaluation of this checkpoint in results.json: evaluate first.

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

import torch

from checkpoints import CHECKPOINT_SETTINGS, category_folder, load_checkpoint, load_network, resolve_settings, run_dir, run_name
from dataset import IMAGE_EXTENSIONS, list_images, load_images, load_test_set
from model.scoring import predict
from results import find_evaluation, write_mean
from utils.config import ConfigError, apply_overrides, run_cli
from utils.files import atomic_write_json, check_outputs, write_csv
from utils.metrics import compute_metrics, metrics_line
from utils.seeding import resolve_device
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
threshold = None  # --images: a score >= threshold is anomalous; None: image_f1_threshold from results.json
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


def score_folder(ckpt, settings, dev, folder, threshold, checkpoint, batch_size, map_mode, amp, compile):
    """Score every image of `folder`, label it with the threshold (None: the evaluation's), write predict/ (see the docstring)."""
    if not os.path.isdir(folder):
        raise ConfigError(f"images={folder}: no such folder")
    paths = list_images(folder)
    if not paths:
        raise ConfigError(f"images={folder}: holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    run_folder = category_folder(settings, settings["category"])  # a unified model without --category: its run folder
    evaluation, problem = find_evaluation(run_folder, checkpoint, settings["image_size"], map_mode)
    image_threshold = threshold if threshold is not None else evaluation.get("image_f1_threshold")
    if image_threshold is None:
        raise ConfigError(f"no threshold: {problem}; evaluate first (python test.py --checkpoint={checkpoint}) or pass --threshold=VALUE")
    network = load_network(ckpt, settings, dev, checkpoint)
    new_images = load_images(paths, settings["image_size"])  # (N,3,S,S) uint8
    maps, scores = predict(network, new_images, batch_size, map_mode, amp, compile)  # (N,S,S), (N,)
    # the evaluation's colour scale where there is one, so these strips compare with the test set's
    heat_range = evaluation.get("heatmap_range") or (float(maps.min()), float(maps.max()))
    labels = [int(score >= image_threshold) for score in scores.tolist()]
    predict_folder = os.path.join(run_folder, "predict")
    save_prediction_strips(predict_folder, paths, new_images, maps, scores.tolist(), heat_range, image_threshold)
    write_csv(os.path.join(predict_folder, "scores.csv"), ["path", "score", "label"],
              ((p, f"{score:.6f}", label) for p, score, label in zip(paths, scores.tolist(), labels)))
    source = "--threshold" if threshold is not None else "image_f1_threshold of results.json"
    print(f"{folder}: {sum(labels)} of {len(paths)} images anomalous (score >= {image_threshold:.6f}, {source})")
    print(f"wrote {os.path.join(predict_folder, 'scores.csv')} and {len(paths)} strips")


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
    dev = torch.device(resolve_device(device))
    ckpt = load_checkpoint(checkpoint)
    given = {name: globals()[name] for name in CHECKPOINT_SETTINGS}
    settings = resolve_settings(ckpt, checkpoint, given, need_data_root=not images)  # scoring a folder needs no data_root
    unified = len(settings["categories"]) > 1
    if images:
        if unified and not settings["category"] and threshold is None:
            raise ConfigError(f"images={images}: {checkpoint} is a model of {', '.join(settings['categories'])}; pass "
                              "--category=<one of them> to use its threshold, or --threshold=VALUE")
        folder = category_folder(settings, settings["category"])  # the outputs, checked before the data and networks
        check_outputs(f"out_dir={settings['out_dir']}", os.path.join(folder, "predict"), ["scores.csv"])
        return score_folder(ckpt, settings, dev, images, threshold, checkpoint, batch_size, map_mode, amp, compile)
    names = [settings["category"]] if settings["category"] else settings["categories"]
    run_folder = run_dir(settings["out_dir"], run_name(settings["categories"]))
    for name in names:  # the outputs, checked before the data and networks
        check_outputs(f"out_dir={settings['out_dir']}", category_folder(settings, name), ["results.json", "scores.csv"], ["images"] if save_images else [])
    if unified:
        check_outputs(f"out_dir={settings['out_dir']}", run_folder, ["results.json"])
    network = None  # built after the first test set is read: bad data fails before the teacher is built
    for name in names:
        test_set = load_test_set(settings["data_root"], name, settings["image_size"])
        if network is None:
            network = load_network(ckpt, settings, dev, checkpoint)
        evaluate(ckpt, settings, network, name, test_set, checkpoint, batch_size, map_mode, amp, compile, save_images)
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


def evaluate(ckpt, settings, network, name, test_set, checkpoint, batch_size, map_mode, amp, compile, save_images):
    """Score one category's test set (load_test_set's), write its results.json, scores.csv and picture strips (the first
    save_images of each defect type) in category_folder, print its metrics."""
    test_images, masks, labels, paths = test_set
    if masks is None:
        print(f"{name}: no ground_truth folder: evaluated on image labels from the test folder names "
              "(good = normal, any other = anomalous); pixel metrics are not computed")
    t0 = time.time()
    maps, scores = predict(network, test_images, batch_size, map_mode, amp, compile)  # (N,S,S), (N,)
    predict_seconds = time.time() - t0
    metrics = compute_metrics(scores, labels, maps, masks)

    folder = category_folder(settings, name)
    results = {
        "category": name, **metrics, "n_images": len(labels), "n_anomalous": int(labels.sum()),
        "checkpoint": checkpoint, "method": settings["method"], "backbone": settings["backbone"], "weights": settings["weights"],
        "image_size": settings["image_size"], "map_mode": map_mode, "seconds_per_image": predict_seconds / len(labels),
        "heatmap_range": [float(maps.min()), float(maps.max())],  # the heatmap colour scale of this category
        "train_config": ckpt.get("config"),  # None for official checkpoints
    }
    atomic_write_json(os.path.join(folder, "results.json"), results)
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


if __name__ == "__main__":
    run_cli(main, lambda: debug)
