"""
Score a folder of new images with a Reverse Distillation (RD or RD++) checkpoint: no labels needed.

    $ python predict.py --checkpoint=runs/bottle/checkpoint.pth --images=photos/
    $ python predict.py --checkpoint=runs/bottle/checkpoint.pth --images=photos/ --threshold=0.42
    $ python predict.py --checkpoint=runs/bottle+cable+screw/checkpoint.pth --images=photos/ --category=cable

Every image of --images is resized to the checkpoint's image size and scored as test.py scores a test image (the
anomaly map, its maximum the score). Writes <out_dir>/<category>/predict/scores.csv (path,score,label; label 1 =
score >= threshold), a strip predict/<file name>.png (input | heatmap) per image, and predict/report.html, their
gallery. The threshold is --threshold, else threshold.json beside the checkpoint (calibrate.py), else the F1-max
threshold (image_f1_threshold) of the evaluation of this checkpoint in results.json (evaluation/threshold.py). The
heatmaps share the colour scale of that evaluation's test set where there is one.

A unified checkpoint (a model of several categories) needs --category=X, whose threshold it takes (writing
<out_dir>/<run name>/<X>/predict/), or --threshold. For an official checkpoint give --category (and --backbone,
--image_size, --weights if not wide_resnet50_2/256/imagenet), as for test.py.
"""

import os
import sys
import time
from types import SimpleNamespace

import torch

from dataset import image_folder, load_images
from evaluation.report import write_prediction_report
from evaluation.results import find_evaluation
from evaluation.threshold import FILE_NAME, choose_threshold
from evaluation.visualize import save_prediction_strips
from model.checkpoint import CHECKPOINT_SETTINGS, load_checkpoint, load_network, resolve_settings
from model.scoring import check_scoring, predict
from utils.config import ConfigError, apply_overrides, run_cli, script_settings
from utils.files import check_outputs, write_csv
from utils.runs import category_folder
from utils.seeding import resolve_device

# -----------------------------------------------------------------------------
checkpoint = ""  # path of a checkpoint written by train.py, or an official RD4AD one
images = ""  # the folder of new images to score
threshold = None  # a score >= threshold is anomalous; None: threshold.json beside the checkpoint, else image_f1_threshold of results.json
category = ""  # default: the checkpoint's category; of a unified checkpoint: required unless --threshold is given
out_dir = ""  # writes <out_dir>/<category>/predict/; default: the checkpoint's out_dir ('runs' for official checkpoints)
weights = ""  # teacher weights, default: the checkpoint's ('imagenet' for official checkpoints)
backbone = ""  # default: the checkpoint's ('wide_resnet50_2' for official checkpoints)
image_size = 0  # default: the checkpoint's (256 for official checkpoints)
batch_size = 16  # scoring batch; does not change any score
map_mode = "add"  # add | mul: how the three per-tap maps are combined
device = "auto"  # auto (cuda if available) | cpu | cuda | cuda:1 ...
amp = False  # bf16 autocast for the networks; maps stay float32
compile = False  # torch.compile the scoring (weights frozen): faster per image after a one-off compile (~15 s on CPU)
report = True  # write predict/report.html (+ its pictures) beside predict/scores.csv
debug = False  # show Python tracebacks for user errors
# -----------------------------------------------------------------------------
config_keys = list(script_settings(__file__))  # the names of the settings above: what --name=value may set


def score_folder(args, ckpt, settings, paths, dev):
    """Score the images at `paths`, label each with the threshold chosen for the checkpoint, write predict/ (see the
    docstring), with its report.html when args.report."""
    run_folder = category_folder(settings, settings["category"])  # a unified model without --category: its run folder
    evaluation, problem = find_evaluation(run_folder, args.checkpoint, settings["image_size"], args.map_mode)
    choice = choose_threshold(args.threshold, args.checkpoint, settings["image_size"], args.map_mode, evaluation)
    if choice.value is None:
        raise ConfigError(f"no threshold: {problem} and there is no {FILE_NAME} beside the checkpoint; evaluate first "
                          f"(python test.py --checkpoint={args.checkpoint}), calibrate one (python calibrate.py "
                          f"--checkpoint={args.checkpoint} --good_images=DIR) or pass --threshold=VALUE")
    network = load_network(ckpt, settings, dev, args.checkpoint)
    new_images = load_images(paths, settings["image_size"])  # (N,3,S,S) uint8
    maps, scores = predict(network, new_images, args.batch_size, args.map_mode, args.amp, args.compile)  # (N,S,S), (N,)
    # the evaluation's colour scale where there is one, so these strips compare with the test set's
    heat_range = evaluation.get("heatmap_range") or (float(maps.min()), float(maps.max()))
    labels = [int(score >= choice.value) for score in scores.tolist()]
    predict_folder = os.path.join(run_folder, "predict")
    strip_files = save_prediction_strips(predict_folder, paths, new_images, maps, scores.tolist(), heat_range=heat_range, threshold=choice.value)
    write_csv(os.path.join(predict_folder, "scores.csv"), ["path", "score", "label"],
              ((p, f"{score:.6f}", label) for p, score, label in zip(paths, scores.tolist(), labels)))
    print(f"{args.images}: {sum(labels)} of {len(paths)} images anomalous (score >= {choice.value:.6f}, {choice.source})")
    print(f"wrote {os.path.join(predict_folder, 'scores.csv')} and {len(paths)} strips")
    if args.report:
        t0 = time.time()
        path = write_prediction_report(predict_folder, args.images, paths, strip_files, scores, choice)
        print(f"wrote {path} in {time.time() - t0:.2f}s")


def main():
    apply_overrides(globals(), sys.argv[1:], config_keys)
    args = SimpleNamespace(**{k: globals()[k] for k in config_keys})
    if not args.checkpoint:
        raise ConfigError("--checkpoint is required, e.g. --checkpoint=runs/bottle/checkpoint.pth")
    if not args.images:
        raise ConfigError("--images is required: the folder of images to score, e.g. --images=photos/")
    check_scoring(args.map_mode, args.batch_size)
    if args.threshold is not None and (isinstance(args.threshold, bool) or not isinstance(args.threshold, (int, float))):
        raise ConfigError(f"--threshold={args.threshold}: must be a number")
    paths = image_folder(args.images, "images")
    dev = torch.device(resolve_device(args.device))
    ckpt = load_checkpoint(args.checkpoint)
    given = {name: getattr(args, name, "") for name in CHECKPOINT_SETTINGS}  # no data_root: the images are the data
    settings = resolve_settings(ckpt, args.checkpoint, given, need_data_root=False)
    if len(settings["categories"]) > 1 and not settings["category"] and args.threshold is None:
        raise ConfigError(f"images={args.images}: {args.checkpoint} is a model of {', '.join(settings['categories'])}; pass "
                          "--category=<one of them> to use its threshold, or --threshold=VALUE")
    pages = (["report.html"], ["report"]) if args.report else ([], [])  # report.html and its pictures' folder
    folder = os.path.join(category_folder(settings, settings["category"]), "predict")  # checked before the networks are built
    check_outputs(f"out_dir={settings['out_dir']}", folder, ["scores.csv", *pages[0]], pages[1])
    score_folder(args, ckpt, settings, paths, dev)


if __name__ == "__main__":
    run_cli(main, lambda: debug)
