"""
Calibrate a checkpoint's decision threshold on normal images alone: a folder of good images the model did not train
on, and the share of them that may be flagged.

    $ python calibrate.py --checkpoint=runs/bottle/checkpoint.pth --good_images=data/bottle_good --false_alarm_rate=0.01

Scores every image of --good_images as test.py scores a test image and writes threshold.json beside the checkpoint:
the threshold at which at most --false_alarm_rate of them score at or above it (the rule: evaluation/threshold.py).
predict.py and export.py then use it, and test.py's report shows what it does on the labelled test set. It needs at
least 1/false_alarm_rate images (100 for 0.01). For an official checkpoint give --category (and --backbone,
--image_size, --weights if not wide_resnet50_2/256/imagenet), as for test.py.
"""

import os
import sys
from types import SimpleNamespace

import torch

from dataset import image_folder, load_images
from evaluation.threshold import FILE_NAME, calibration_path, calibration_record, min_images
from model.checkpoint import CHECKPOINT_SETTINGS, load_checkpoint, load_network, resolve_settings
from model.scoring import check_scoring, predict
from utils.config import ConfigError, apply_overrides, run_cli, script_settings
from utils.files import atomic_write_json, check_outputs
from utils.seeding import resolve_device

# -----------------------------------------------------------------------------
checkpoint = ""  # path of a checkpoint written by train.py, or an official RD4AD one; threshold.json is written beside it
good_images = ""  # a folder of normal images the model did not train on
false_alarm_rate = 0.01  # at most this share of them scores at or above the threshold; needs >= 1/rate images
category = ""  # default: the checkpoint's category (official checkpoints: required)
weights = ""  # teacher weights, default: the checkpoint's ('imagenet' for official checkpoints)
backbone = ""  # default: the checkpoint's ('wide_resnet50_2' for official checkpoints)
image_size = 0  # default: the checkpoint's (256 for official checkpoints)
batch_size = 16  # scoring batch; does not change any score
map_mode = "add"  # add | mul: how the three per-tap maps are combined; the threshold holds for this mode only
device = "auto"  # auto (cuda if available) | cpu | cuda | cuda:1 ...
amp = False  # bf16 autocast for the networks; maps stay float32
compile = False  # torch.compile the scoring (weights frozen): faster per image after a one-off compile (~15 s on CPU)
debug = False  # show Python tracebacks for user errors
# -----------------------------------------------------------------------------
config_keys = list(script_settings(__file__))  # the names of the settings above: what --name=value may set


def main():
    apply_overrides(globals(), sys.argv[1:], config_keys)
    args = SimpleNamespace(**{k: globals()[k] for k in config_keys})
    if not args.checkpoint:
        raise ConfigError("--checkpoint is required, e.g. --checkpoint=runs/bottle/checkpoint.pth")
    if not args.good_images:
        raise ConfigError("--good_images is required: a folder of normal images the model did not train on")
    check_scoring(args.map_mode, args.batch_size)
    rate = args.false_alarm_rate
    if isinstance(rate, bool) or not 0 < rate < 1:
        raise ConfigError(f"--false_alarm_rate={rate}: must be in (0, 1), e.g. 0.01 for at most 1% of good images flagged")
    paths = image_folder(args.good_images, "good_images")
    if len(paths) < min_images(rate):
        raise ConfigError(f"good_images={args.good_images}: {len(paths)} images cannot resolve --false_alarm_rate={rate}; "
                          f"at least {min_images(rate)} (1/rate) are needed: add images or raise the rate")
    dev = torch.device(resolve_device(args.device))
    ckpt = load_checkpoint(args.checkpoint)
    given = {name: getattr(args, name, "") for name in CHECKPOINT_SETTINGS}  # no data_root: the good images are the data
    settings = resolve_settings(ckpt, args.checkpoint, given, need_data_root=False)
    path = calibration_path(args.checkpoint)
    check_outputs(f"checkpoint={args.checkpoint}", os.path.dirname(path), [FILE_NAME])
    network = load_network(ckpt, settings, dev, args.checkpoint)
    good = load_images(paths, settings["image_size"])  # (N,3,S,S) uint8
    _, scores = predict(network, good, args.batch_size, args.map_mode, args.amp, args.compile)  # (N,)
    record = calibration_record(scores.tolist(), rate, args.good_images, args.checkpoint, settings["image_size"], args.map_mode)
    atomic_write_json(path, record)
    print(f"threshold {record['threshold']:.6f}: {round(record['calibration_false_alarm_rate'] * len(paths))} of {len(paths)} "
          f"good images score at or above it (rate {record['calibration_false_alarm_rate']:g}; asked {rate:g}, "
          f"resolvable with {len(paths)} images {record['resolved_false_alarm_rate']:g})")
    print(f"wrote {path}; predict.py and export.py use it, and test.py's report shows it on the test set")


if __name__ == "__main__":
    run_cli(main, lambda: debug)
