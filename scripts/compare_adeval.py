"""
How far ADer's binned pixel metrics are from this project's exact ones. The ADer benchmark scores pixel AUROC, AP and
AUPRO with the ADEval package, from histograms of 50 strips between the category's map minimum and maximum; this
project computes them exactly (evaluation/metrics.py). This script scores the test maps of a sweep's checkpoints (the
demo's by default) both ways and prints, per category and averaged, each metric and the difference, and mAD both ways.

    $ bash scripts/demo.sh                                    # runs/demo/<category>/checkpoint.pth
    $ pip install --no-deps adeval opencv-python-headless     # for this measurement only, not a project dependency
    $ python scripts/compare_adeval.py                        # --out_dir=runs/demo --categories=a,b --device=cpu

ADEval is called as ADer's util/metric.py calls it (Evaluator.run with use_adeval, zhangzjn/ADer at commit 902937a):
an accumulator with nstrips=50 over [min, max] of the category's maps (and [min - 1e-7, max + 1e-7] of its image
scores, the map maxima), every map added with its 0/1 mask, then summary()'s p_auroc, p_aupr and p_aupro. ADer runs
ADEval's CUDA accumulator; without CUDA this uses ADEval's CPU accumulator, the same strips counted with numpy's
histogram (torch.histc on CUDA also counts the pixels equal to the maximum a second time, in the overflow strip:
one pixel or a few per category). ADEval 1.1.0 calls np.trapz, which numpy 2.4 removed; np.trapezoid, the same
function under its new name, stands in for it. ADer's image AUROC, AP and F1-max are sklearn's, as ours: no difference.
"""

import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dataset import load_test_set  # noqa: E402
from evaluation.metrics import MAD_PARTS, compute_metrics  # noqa: E402
from model.checkpoint import CHECKPOINT_SETTINGS, load_checkpoint, load_network, resolve_settings  # noqa: E402
from model.scoring import predict  # noqa: E402
from utils.config import ConfigError, apply_overrides, run_cli  # noqa: E402
from utils.runs import ckpt_path  # noqa: E402
from utils.seeding import resolve_device  # noqa: E402

# -----------------------------------------------------------------------------
out_dir = "runs/demo"  # a sweep's out_dir: <out_dir>/<category>/checkpoint.pth
categories = ""  # comma-separated; default: every folder of out_dir holding a checkpoint.pth
device = "auto"  # auto (cuda if available) | cpu | cuda ...; ADEval's CUDA accumulator runs where the maps are on CUDA
debug = False  # show Python tracebacks for user errors
# -----------------------------------------------------------------------------
config_keys = ["out_dir", "categories", "device", "debug"]

ADER_NSTRIPS = 50  # ADer's EvalAccumulatorCuda(..., nstrips=50)
ADER_SCORE_MARGIN = 1e-7  # ADer widens the image-score range by this (Evaluator.boundary)
COMPARED = (("pixel_auroc", "p_auroc"), ("pixel_ap", "p_aupr"), ("pixel_aupro", "p_aupro"))  # ours, ADEval's


def import_adeval():
    try:
        import adeval
    except ImportError as e:
        raise ConfigError(f"ADEval is not importable ({e}); for this measurement only: "
                          "pip install --no-deps adeval opencv-python-headless") from None
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # removed in numpy 2.4 under its old name; ADEval 1.1.0 still calls it
    return adeval


def category_maps(checkpoint, dev):
    """(scores (N,), labels (N,), maps (N,S,S) float32, masks (N,S,S) bool) of a checkpoint's test split, scored as
    test.py scores it with the checkpoint's own settings."""
    ckpt = load_checkpoint(checkpoint)
    settings = resolve_settings(ckpt, checkpoint, dict.fromkeys(CHECKPOINT_SETTINGS, ""))
    images, masks, labels, _ = load_test_set(settings["data_root"], settings["category"], settings["image_size"])
    if masks is None:
        raise ConfigError(f"{checkpoint}: its test set has no ground_truth masks, nothing to compare")
    maps, scores = predict(load_network(ckpt, settings, dev, checkpoint), images)
    return scores.numpy(), labels.numpy(), maps.numpy(), masks.numpy()


def adeval_pixel_metrics(adeval, maps, masks, on_cuda):
    """ADEval's {p_auroc, p_aupr, p_aupro} of one category's maps (N,S,S) and bool masks (N,S,S)."""
    scores, labels = maps.max(axis=(1, 2)), masks.max(axis=(1, 2)).astype(np.uint8)  # ADer's pr_sp_max, gt_sp
    bounds = (float(scores.min()) - ADER_SCORE_MARGIN, float(scores.max()) + ADER_SCORE_MARGIN,
              float(maps.min()), float(maps.max()))
    masks = masks.astype(np.uint8)
    if on_cuda:
        accumulator = adeval.EvalAccumulatorCuda(*bounds, skip_pixel_aupro=False, nstrips=ADER_NSTRIPS)
        accumulator.add_anomap_batch(torch.from_numpy(maps).cuda(), torch.from_numpy(masks).cuda())
        for score, label in zip(scores, labels):
            accumulator.add_image(torch.tensor(score), torch.tensor(label))
    else:
        accumulator = adeval.EvalAccumulator(*bounds, skip_pixel_aupro=False, nstrips=ADER_NSTRIPS)
        accumulator.add_anomap_batch(maps, masks)
        for score, label in zip(scores, labels):
            accumulator.add_image(score, label)
    with np.errstate(invalid="ignore"):  # its per-sample (multi-view) curve, never filled here, is 0/0
        return accumulator.summary()


def main():
    apply_overrides(globals(), sys.argv[1:], config_keys)
    adeval = import_adeval()
    names = categories.split(",") if categories else sorted(
        c for c in os.listdir(out_dir) if os.path.isfile(ckpt_path(out_dir, c))) if os.path.isdir(out_dir) else []
    if not names:
        raise ConfigError(f"out_dir={out_dir}: no <category>/checkpoint.pth; run bash scripts/demo.sh first")
    for name in names:
        if not os.path.isfile(ckpt_path(out_dir, name)):
            raise ConfigError(f"{ckpt_path(out_dir, name)}: missing")
    dev = torch.device(resolve_device(device))
    on_cuda = dev.type == "cuda"
    print(f"ADEval's {'CUDA' if on_cuda else 'CPU'} accumulator, {ADER_NSTRIPS} strips; ours exact (evaluation/metrics.py)")
    print(f"{'category':<16} {'metric':<12} {'ours':>8} {'ADEval':>8} {'ADEval - ours':>14}")
    rows = {}  # metric: [(ours, ADEval'), ...]
    for name in names:
        scores, labels, maps, masks = category_maps(ckpt_path(out_dir, name), dev)
        ours = compute_metrics(scores, labels, maps, masks)
        binned = adeval_pixel_metrics(adeval, maps, masks, on_cuda)
        pairs = {metric: (ours[metric], binned[key]) for metric, key in COMPARED}
        # mAD as ADer reports it: our exact metrics with ADEval's three in place of ours
        pairs["mad"] = (ours["mad"], float(np.mean([pairs[m][1] if m in pairs else ours[m] for m in MAD_PARTS])))
        for metric, (exact, approx) in pairs.items():
            rows.setdefault(metric, []).append((exact, approx))
            print(f"{name:<16} {metric:<12} {exact:8.4f} {approx:8.4f} {approx - exact:+14.4f}")
    for metric, values in rows.items():
        exact, approx = np.mean(values, axis=0)
        largest = max(abs(a - e) for e, a in values)
        print(f"{'mean':<16} {metric:<12} {exact:8.4f} {approx:8.4f} {approx - exact:+14.4f}   (largest |difference| of a category {largest:.4f})")


if __name__ == "__main__":
    run_cli(main, lambda: debug)
