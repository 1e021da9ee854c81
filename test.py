"""
Evaluate a Reverse Distillation checkpoint on one category's test split.

    $ python test.py --checkpoint=runs/bottle/checkpoint.pth
    $ python test.py --checkpoint=wres50_bottle.pth --data_root=data/mvtec --category=bottle   # official checkpoint

For every test image: the teacher's and the student's three feature maps, per tap 1 - cosine similarity
along channels, upsampled (bilinear, align_corners=True) to the image size, summed ('add') or multiplied
('mul'), blurred with a sigma-4 Gaussian (scipy.ndimage.gaussian_filter semantics). Image score = map max.
Writes <out_dir>/<category>/results.json (image/pixel AUROC, F1-max, AP, AUPRO, ...) and scores.csv.

Our checkpoints carry their training config; for an official one ({'bn', 'decoder'} only) give
--data_root and --category, and --backbone/--image_size/--weights if not wide_resnet50_2/256/imagenet.
"""

import csv
import io
import os
import sys
import time

import torch

from dataset import load_test_set
from model import build_model
from utils.anomaly_map import predict
from utils.config import ConfigError, apply_overrides, run_cli
from utils.io import atomic_write, atomic_write_json, load_checkpoint, run_dir
from utils.metrics import compute_metrics
from utils.seeding import resolve_device

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
debug = False  # show Python tracebacks for user errors
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str, tuple))]

# what an official checkpoint, which carries no config, was trained with
OFFICIAL_CONFIG = {"backbone": "wide_resnet50_2", "image_size": 256, "weights": "imagenet", "seed": 0, "out_dir": "runs"}


def resolve_settings(ckpt):
    """Command-line settings win where the checkpoint has none; where it has one, they must agree with it."""
    trained = ckpt.get("config", OFFICIAL_CONFIG)
    settings = {}
    for name in ("data_root", "category", "out_dir", "weights", "backbone", "image_size"):
        given, saved = globals()[name], trained.get(name)
        if name in ("backbone", "image_size") and given and "config" in ckpt and given != saved:
            raise ConfigError(f"--{name}={given}: {checkpoint} was trained with {name}={saved}")
        settings[name] = given or saved
        if not settings[name]:
            raise ConfigError(f"--{name} is required: {checkpoint} does not say which {name} it was trained on")
    settings["seed"] = trained.get("seed", 0)
    return settings


def load_model(ckpt, settings, dev):
    encoder, ocbe, decoder = build_model(settings["backbone"], settings["weights"], settings["seed"])
    # official checkpoints of some categories carry extra 'memory' keys that no model uses
    bn_state = {k: v for k, v in ckpt["bn"].items() if "memory" not in k}
    try:
        ocbe.load_state_dict(bn_state)
        decoder.load_state_dict(ckpt["decoder"])
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line or "Missing" in line), "")
        raise ConfigError(f"checkpoint={checkpoint}: does not fit backbone={settings['backbone']} ({detail[:200]})") from None
    return encoder.to(dev), ocbe.to(dev), decoder.to(dev)


def write_scores_csv(path, paths, labels, scores):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label", "score"])
    writer.writerows((p, int(label), f"{score:.6f}") for p, label, score in zip(paths, labels, scores))
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def main():
    apply_overrides(globals(), sys.argv[1:], config_keys)
    if not checkpoint:
        raise ConfigError("--checkpoint is required, e.g. --checkpoint=runs/bottle/checkpoint.pth")
    if map_mode not in ("add", "mul"):
        raise ConfigError(f"--map_mode={map_mode}: must be add or mul")
    if batch_size < 1:
        raise ConfigError(f"--batch_size={batch_size}: must be at least 1")
    dev = torch.device(resolve_device(device))
    ckpt = load_checkpoint(checkpoint)
    settings = resolve_settings(ckpt)
    encoder, ocbe, decoder = load_model(ckpt, settings, dev)
    images, masks, labels, paths = load_test_set(settings["data_root"], settings["category"], settings["image_size"])

    t0 = time.time()
    maps, scores = predict(encoder, ocbe, decoder, images, batch_size, map_mode, amp)  # (N,S,S), (N,)
    predict_seconds = time.time() - t0
    metrics = compute_metrics(scores, labels, maps, masks)

    folder = run_dir(settings["out_dir"], settings["category"])
    results = {
        "category": settings["category"], **metrics, "n_images": len(labels), "n_anomalous": int(labels.sum()),
        "checkpoint": checkpoint, "backbone": settings["backbone"], "weights": settings["weights"],
        "image_size": settings["image_size"], "map_mode": map_mode, "seconds_per_image": predict_seconds / len(labels),
        "train_config": ckpt.get("config"),  # None for official checkpoints
    }
    atomic_write_json(os.path.join(folder, "results.json"), results)
    write_scores_csv(os.path.join(folder, "scores.csv"), paths, labels.tolist(), scores.tolist())
    shown = ("image_auroc", "pixel_auroc", "image_f1", "pixel_aupro")
    print(f"{settings['category']}: " + " | ".join(f"{k} {metrics[k]:.3f}" if metrics[k] is not None else f"{k} n/a" for k in shown))
    for name, reason in metrics["undefined"].items():
        print(f"  {name} undefined: {reason}")
    print(f"wrote {os.path.join(folder, 'results.json')} and scores.csv ({len(labels)} images, {predict_seconds / len(labels):.3f}s per image)")


if __name__ == "__main__":
    run_cli(main, lambda: debug)
