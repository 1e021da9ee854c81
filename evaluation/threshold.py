"""
The decision threshold on image scores (a score >= threshold is anomalous): calibrated on good images alone,
and which threshold a run uses.

    $ python calibrate.py --checkpoint=runs/bottle/checkpoint.pth --good_images=data/bottle_good --false_alarm_rate=0.01
    # -> runs/bottle/threshold.json beside the checkpoint; predict.py and export.py then use it

    from evaluation.threshold import false_alarm_threshold
    value, allowed = false_alarm_threshold(scores, rate=0.05)   # at most 5% of `scores` are >= value

The rule (false_alarm_threshold), for the scores of N good images the model did not train on and a false-alarm
rate r in (0, 1): k = floor(r * N) of them may score at or above the threshold. With the scores sorted from the
largest, s(1) >= s(2) >= ... >= s(N), the threshold lies midway between s(k+1) and the smallest score larger than
s(k+1). So the images at or above it are exactly those scoring above s(k+1): k of them, fewer where s(k) ties with
s(k+1); and no image sits on the threshold, so rescoring an image (another batch size, an exported model) does not
flip it. (Where no score is larger than s(k+1) the threshold is the next float above it, and no image is at or
above it.) N images resolve rates in steps of 1/N: the calibration needs N >= 1/r images (k >= 1), and the rate it
resolves is k/N <= r.

Pixel thresholds, for segmentation (a pixel whose map value is >= the threshold is anomalous), from the maps of
defect-free images, read one map at a time:
  validation_threshold(maps)             MVTec AD 2's baseline: mean + 3 standard deviations of every pixel score of
                                         the validation maps (its source in the function's docstring)
  pixel_false_alarm_threshold(maps, r)   false_alarm_threshold's rule over every pixel of the maps: at most a
                                         fraction r of the good pixels at or above it

Which threshold a run uses (choose_threshold): --threshold where given, else threshold.json beside the checkpoint
(when it was calibrated on this very checkpoint file, by its SHA-256, at the same image_size and map_mode), else
the image F1-max threshold of the checkpoint's evaluation (results.json), which was picked with the test labels.
"""

import hashlib
import json
import math
import os
from collections import namedtuple
from datetime import datetime

import numpy as np

from utils.config import ConfigError

FILE_NAME = "threshold.json"
RATE_SLACK = 1e-9  # rate * N is rounded down after adding this, so that 0.29 * 100 allows 29 images, not 28
METHOD = ("k = floor(false_alarm_rate * n_images) images may score at or above the threshold; it lies midway "
          "between the (k+1)-th largest score of the good images and the next larger distinct score, so exactly "
          "the images scoring above the (k+1)-th largest are at or above it (k, fewer on ties)")

# value: the threshold (None when there is none); source: where it comes from, in words; calibration: threshold.json's
# record (load_calibration) when the threshold is its, else None
Choice = namedtuple("Choice", "value source calibration")


def min_images(rate):
    """The fewest good images that resolve a false-alarm rate: floor(rate * N) >= 1."""
    return math.ceil((1 - RATE_SLACK) / rate)


def false_alarm_threshold(scores, rate):
    """(threshold, k) for the scores of good images: k = floor(rate * N) and at most k of the scores are >= the
    threshold (the rule in the module docstring). A ValueError for a rate outside (0, 1) or fewer than
    min_images(rate) scores."""
    check_rate(rate)
    return rule_threshold(np.array(scores, dtype=np.float64).ravel(), rate, "images")


def check_rate(rate):
    if not 0 < rate < 1:
        raise ValueError(f"false_alarm_rate={rate}: must be in (0, 1)")


def rule_threshold(values, rate, noun):
    """(threshold, k): the module docstring's rule for the flat float array values (reordered in place: the (k+1)-th
    largest is found by selection, not a full sort), a ValueError naming `noun` where there are too few of them.
    The threshold is a value of the array's dtype (float32 pixels: a float32 value), so the values at or above it are
    the same compared in that dtype or in float64. The midpoint, rounded to that dtype, can land on the (k+1)-th
    largest where the two are neighbouring floats; the next value above that is then the threshold, and the value
    just above it counts among the k."""
    k = math.floor(rate * values.size + RATE_SLACK)
    if k < 1:
        raise ValueError(f"{values.size} {noun} cannot resolve a false-alarm rate of {rate}: "
                         f"at least {min_images(rate)} are needed (1/rate)")
    values.partition(values.size - k - 1)  # ascending around it: the top k after it
    below = values[values.size - k - 1]  # the (k+1)-th largest: the largest that must fall below the threshold
    top = values[values.size - k:]
    larger = top[top > below]
    just_above = np.nextafter(below, values.dtype.type(np.inf))
    midpoint = values.dtype.type((float(below) + float(larger.min())) / 2) if larger.size else just_above
    return float(max(midpoint, just_above)), k


def _pixels(maps, what):
    """Each map of the sequence maps (numpy arrays or torch tensors) as a flat float numpy array, one at a time;
    ValueError for none, or a map with NaN."""
    if len(maps) == 0:
        raise ValueError(f"{what}: no maps")
    for amap in maps:
        values = amap.detach().cpu().numpy() if hasattr(amap, "detach") else np.asarray(amap)
        values = values.ravel() if values.dtype in (np.float32, np.float64) else values.ravel().astype(np.float64)
        if np.isnan(values).any():
            raise ValueError(f"{what}: a map contains NaN")
        yield values


def validation_threshold(maps):
    """MVTec AD 2's segmentation threshold from the anomaly maps of its defect-free validation images:
    mean + 3 * std of all their pixel scores pooled (std: numpy's np.std, the population standard deviation).

    Source: MVTec's submission checker, MVTecAD2_public_code_utils/check_and_prepare_data_for_upload.py (read in the
    copy of github denisonus/mvtec_research at commit 0f1357483f3d96e0a08f274c239888c8e2d7f604), which, where the
    thresholded maps are missing, suggests binarising the anomaly images with "segmentation_threshold =
    np.mean(anomaly_scores_val) + 3 * np.std(anomaly_scores_val)". The threshold binarises pixels, so the scores are
    the validation maps' pixel scores, not image scores (the checker names no image score; the MVTec AD 2 paper's
    own wording was not available to check). maps: a sequence of (H_i, W_i) maps, sizes that may differ, read one
    at a time; the mean and variance are merged image by image (Chan et al.'s pairwise update), which keeps float64
    accuracy where a sum of squares would cancel."""
    count, mean, m2 = 0, 0.0, 0.0  # pixels so far, their mean, their sum of squared deviations from it
    for values in _pixels(maps, "validation maps"):
        n = values.size
        if not n:
            continue
        image_mean = float(np.mean(values, dtype=np.float64))
        image_m2 = float(np.sum(np.square(values.astype(np.float64) - image_mean)))
        delta = image_mean - mean
        total = count + n
        mean += delta * n / total
        m2 += image_m2 + delta * delta * count * n / total
        count = total
    if not count:
        raise ValueError("validation maps: no pixels")
    return mean + 3.0 * math.sqrt(m2 / count)


def pixel_false_alarm_threshold(maps, rate):
    """(threshold, k) for the pixel scores of defect-free maps: false_alarm_threshold's rule (module docstring) with
    every pixel of every map as one score: k = floor(rate * n_pixels) and at most k pixels are >= the threshold.
    maps: a sequence of (H_i, W_i) maps; their pixels are gathered into one array (4 bytes a pixel for float32 maps).
    The threshold is a value of the maps' dtype (rule_threshold): float32 maps compare with a Python float as float32
    (NumPy 2), where a float64 just above a float32 score would round back onto it. A ValueError for a rate outside
    (0, 1) or fewer than min_images(rate) pixels."""
    check_rate(rate)
    return rule_threshold(np.concatenate(list(_pixels(maps, "good maps"))), rate, "pixels")


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def calibration_record(scores, rate, good_images, checkpoint, image_size, map_mode):
    """threshold.json's content for the scores (N,) of the good images in the folder good_images."""
    value, k = false_alarm_threshold(scores, rate)
    n = len(scores)
    return {
        "threshold": value,
        "false_alarm_rate": rate,  # asked for
        "resolved_false_alarm_rate": k / n,  # the largest multiple of 1/n_images not above the rate asked for
        "calibration_false_alarm_rate": int(np.sum(np.asarray(scores) >= value)) / n,  # on these images: k/n, less on ties
        "n_images": n,
        "method": METHOD,
        "good_images": good_images,
        "date": datetime.now().isoformat(timespec="seconds"),
        "checkpoint": checkpoint,
        "checkpoint_sha256": file_sha256(checkpoint),
        "image_size": image_size,
        "map_mode": map_mode,
        "score_range": [float(np.min(scores)), float(np.max(scores))],
    }


def calibration_path(checkpoint):
    """threshold.json beside the checkpoint."""
    return os.path.join(os.path.dirname(checkpoint), FILE_NAME)


def load_calibration(checkpoint, image_size, map_mode):
    """(threshold.json beside the checkpoint as a dict, or None; a note saying why none applies, or '')."""
    path = calibration_path(checkpoint)
    if not os.path.isfile(path):
        return None, ""
    try:
        with open(path) as f:
            record = json.load(f)
        value = float(record["threshold"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: not a threshold file written by calibrate.py; delete it or calibrate again") from None
    if record.get("image_size") != image_size or record.get("map_mode") != map_mode:
        return None, (f"{path} was calibrated at image_size={record.get('image_size')}, map_mode={record.get('map_mode')}, "
                      f"not {image_size}, {map_mode}")
    if record.get("checkpoint_sha256") != file_sha256(checkpoint):
        return None, f"{path} was calibrated on another version of {checkpoint} (its SHA-256 differs); calibrate again"
    record["threshold"], record["path"] = value, path
    return record, ""


def describe_calibration(record):
    return (f"{record['path']}: calibrated on {record['n_images']} good images of {record['good_images']} for a "
            f"false-alarm rate of {record['false_alarm_rate']:g} (resolved: {record['resolved_false_alarm_rate']:g}), "
            f"{record['date']}")


def choose_threshold(given, checkpoint, image_size, map_mode, evaluation):
    """The Choice of threshold for scoring with `checkpoint` at image_size and map_mode: `given` (--threshold) if not
    None, else threshold.json beside the checkpoint where it applies (printing a note where one exists but does not),
    else the image_f1_threshold of `evaluation` (results.json as a dict, {} for none), else Choice(None, why there is
    none, None). test.py, predict.py and export.py all choose with it."""
    if given is not None:
        return Choice(float(given), "--threshold", None)
    calibration, note = load_calibration(checkpoint, image_size, map_mode)
    if note:
        print(f"note: {note}")
    if calibration:
        return Choice(calibration["threshold"], describe_calibration(calibration), calibration)
    if evaluation.get("image_f1_threshold") is not None:
        return Choice(evaluation["image_f1_threshold"], "image_f1_threshold of results.json: the F1-max threshold of the "
                      "labelled test set (picked with its labels, so optimistic; calibrate one with calibrate.py)", None)
    return Choice(None, "no --threshold, no threshold.json and no image_f1_threshold in results.json", None)
