"""
Exact and fast evaluation metrics for anomaly detection on MVTec AD.

compute_metrics(image_scores, image_labels, maps, masks) returns, as python floats:
  image_auroc, image_f1, image_ap, image_f1_threshold  from per-image scores vs labels
  pixel_auroc, pixel_f1, pixel_ap                      from every pixel of every map vs masks
  pixel_aupro      area under the PRO curve up to FPR 0.3, divided by 0.3 (Bergmann et al.)
  pixel_aupro_05   the same PRO curve's area up to FPR 0.05, divided by 0.05 (MVTec AD 2's AU-PRO_0.05,
                   Heckler-Kram et al., arXiv 2503.21622)
  pixel_pro_paper  the per-image PRO of the official RD4AD test script; a different,
                   non-standard number that is NOT comparable to pixel_aupro
and the ADer benchmark's (zhangzjn/ADer, util/metric.py at 902937a; its unified-setting tables):
  pixel_f1_21      pixel F1-max over 21 thresholds 0, 0.05, ..., 1 of the maps min-max
                   normalised over the whole test set, pixels pooled (ADer's P-F1 / mF1_max_px)
  pixel_iou_max    IoU-max over the same 21 thresholds (ADer's mIoU-max)
  mad              the mean of image_auroc, image_ap, image_f1, pixel_auroc, pixel_ap,
                   pixel_f1_21 and pixel_aupro (ADer's mAD)
plus `undefined`, which maps each metric that came back as None to the reason.
metrics_and_curves(...) also returns the curves these numbers are read off (ROC, precision-recall, PRO up to
FPR 0.3), image level in full and pixel level downsampled to CURVE_POINTS vertices, for plots (evaluation/report.py).

ADer's image metrics are sklearn's, as ours. Its pixel AUROC, AP and AUPRO come from the
ADEval package, binned into 50 strips between the maps' min and max: close to, not equal
to, the exact ones here (scripts/compare_adeval.py measures the difference), so `mad` is
ADer's formula over our exact metrics. A constant map (max = min) has no min-max
normalisation; ADer's 0/0 makes it NaN, above no threshold, so pixel_f1_21 and
pixel_iou_max are 0.0 there, as here.

AUROC and AP follow sklearn's roc_auc_score / average_precision_score exactly (ties
included); F1-max is the best F1 over all thresholds, predicting positive when
score >= threshold. The exact pixel metrics share one sort of the pixel scores and are read
off it with binary searches and cumulative sums; ADer's two count the pixels between its 21
thresholds in one chunked pass: no Python loop over thresholds or pixels.

Large sets. That sort holds every pixel at once: about 15 bytes a pixel beyond the maps for float32 maps, 22 for
float16 ones (widened to float64). So the rule: a set of at most SORT_MAX_PIXELS pixels (2**26, 1.0-1.5 GB) given
as one (N, H, W) stack, or a list of maps of one shape, takes that exact sort path, unchanged; a larger set, or a
list of maps of different sizes (native-size evaluation; the sort path needs one stack and rejects such a list),
takes the histogram path (pixel_path= forces either). The histogram path reads the maps image by image and
adds each pixel to histograms over bins of score (pixels, anomalous pixels, and the anomalous pixels' PRO weights
1 / the size of their region, its 8-connected regions labelled per image); every formula of the sort path then
runs over the bins, each bin a group of tied scores. Its memory beyond the maps is that of one image or a chunk
of ADER_CHUNK_PIXELS pixels plus a few 8 MB histograms (0.84 billion float16 pixels: 0.17 GB and 15 s on 2 cores,
docs/evaluation.md, "Metrics at scale"). The bins:
  float16 maps   one bin per float16 value: the metrics are exact, equal to the sort path's on the same maps
                 (within 1e-12: only the order of a floating-point sum differs, in AUPRO)
  other maps     the distance to the set's minimum with SIGNIFICANT_BITS = 15 significant bits (2**20 bins, each
                 2**-15 of its distance wide; a first pass finds the minimum and maximum): pixels closer than that
                 tie, and ADer's thresholds compare each bin's lowest value. Against the sort path, on smooth maps
                 of 2.6M pixels (8 sets, each shifted by 0, +2, -5 and +100), at most: AUROC 2.0e-8, AUPRO 1.9e-7,
                 AP 1.7e-5, F1-max 2.9e-5, pixel_f1_21 3.6e-5, pixel_iou_max 5.0e-5, mad 7.4e-6; tests/test_metrics.py
                 asserts 1e-7, 1e-6 and 1e-4 for the others. (Rounding to float16 instead gave AP 1e-4, 1.7e-3
                 shifted by +2.)
pixel_pro_paper is per image and is computed as on the sort path, from each map as given: identical.

Usage:
    from evaluation.metrics import compute_metrics, metrics_and_curves
    metrics = compute_metrics(image_scores, image_labels, maps, masks)  # numpy or torch
    metrics, curves = metrics_and_curves(image_scores, image_labels, maps, masks)
    f1 = seg_f1(maps, masks, threshold)  # MVTec AD 2's SegF1 at a threshold from the validation maps
Tests against slow references: python -m pytest -q tests/test_metrics.py
Timing against sklearn:        python scripts/bench_metrics.py
"""

from collections import namedtuple

import numpy as np
import torch
from scipy import ndimage

MAX_FPR = 0.3  # AUPRO integration limit, as in the MVTec AD benchmark and the RD4AD script
MAX_FPR_AD2 = 0.05  # pixel_aupro_05's limit: MVTec AD 2's AU-PRO_0.05
PAPER_NUM_TH = 200  # thresholds per image in the RD4AD script
CURVE_POINTS = 300  # vertices kept of each pixel-level curve: enough to draw it, a few kB to store
# 8-connectivity inside each image and none across images, so labelling the whole
# (N, H, W) stack at once gives every region of the test set its own id.
_STACK_8_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_STACK_8_CONNECTED[1] = True

# ADer's pixel thresholds, built as ADer builds them (np.arange), so that each one is the
# same float64 (0.15000000000000002, not 3 / 20 = 0.15) and a pixel on a threshold falls the same side.
ADER_THRESHOLDS = np.arange(0.0, 1.0 + 1e-3, 0.05)  # (21,)
ADER_CHUNK_PIXELS = 1 << 22  # pixels normalised at a time: 64 MB of float64 temporaries
# Sets of at most this many pixels, as one (N, H, W) stack, take the exact sort path (about 15 bytes a pixel beyond
# the maps for float32 maps, 22 for float16 ones, which it widens: under 1.5 GB here); larger ones, and maps of
# different sizes, the histogram path (module docstring, "Large sets").
SORT_MAX_PIXELS = 1 << 26  # 67,108,864: e.g. 256 maps of 512x512

PIXEL_NAMES = ("pixel_auroc", "pixel_f1", "pixel_ap", "pixel_aupro", "pixel_aupro_05", "pixel_pro_paper",
               "pixel_f1_21", "pixel_iou_max")
# the pixel metrics read off one ranking of all pixels: undefined together (no normal or no anomalous pixel)
RANKED_PIXEL_NAMES = ("pixel_auroc", "pixel_f1", "pixel_ap", "pixel_aupro", "pixel_aupro_05")
METRIC_NAMES = ("image_auroc", "image_f1", "image_ap", "image_f1_threshold", *PIXEL_NAMES, "mad")
SEGMENTATION_NAMES = ("seg_f1",)  # at a threshold chosen without the test set: test.py --protocol=mvtec_ad_2
MAD_PARTS = ("image_auroc", "image_ap", "image_f1", "pixel_auroc", "pixel_ap", "pixel_f1_21", "pixel_aupro")
# printed after a run; results.md tabulates these and ADer's pixel_iou_max and mad (results.TABLES)
HEADLINE = ("image_auroc", "pixel_auroc", "image_f1", "pixel_aupro")


def metrics_line(metrics, digits=3):
    """'image_auroc 0.991 | pixel_auroc 0.973 | image_f1 0.965 | pixel_aupro n/a': the HEADLINE metrics of a
    compute_metrics (or results.json) dict, as test.py, export.py and the sweep print them."""
    return " | ".join(f"{k} {metrics[k]:.{digits}f}" if metrics.get(k) is not None else f"{k} n/a" for k in HEADLINE)


def _numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_scores(x, name):
    x = _numpy(x)
    # float32 stays float32 (half the memory traffic of the sort); anything else widens
    # to float64, which holds every float16/float32/int32 value exactly, so no two
    # distinct scores collapse into one.
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if np.isnan(x).any():
        raise ValueError(f"{name} contains NaN")
    return x


def _as_binary(x, name):
    x = _numpy(x)
    if x.dtype == np.bool_:
        return x
    # Soft masks (e.g. bilinearly resized ones) would silently grow the regions if
    # thresholded here, so insist on 0/1.
    if not ((x == 0) | (x == 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1")
    return x != 0


# Confusion counts of a score ranking, one entry per group of tied scores that holds a
# positive, in descending score order: the group's score, the positives down to its end
# and strictly above it, the negatives strictly above it and down to its end. n_neg is
# the number of negatives, ids the ids of all positives in descending score order.
Curve = namedtuple("Curve", "thresholds tps tps_above fps_above fps n_neg ids")


def _curve(scores, ids):
    """The Curve of 1-D scores against ids: 0 for negatives, a positive id (e.g. a region
    id) for positives.

    Between two groups that hold positives only negatives cross the threshold, so ROC, PR
    and PRO curves run flat there and these groups fix the curves exactly; for the same
    reason F1 peaks at one of them. Sorting the negative and the positive scores apart
    amounts to one sort of all scores, and the negatives at or above a positive score are
    then a binary search away. Sorting bare float values is SIMD-accelerated in numpy and
    needs no index array: on 6.5M pixels (scripts/bench_metrics.py, 2 cores) this ran about
    3x faster than one argsort of all pixels followed by cumulative sums, and about 2x
    faster than torch's parallel radix sort of score and id packed into int64 keys. Only
    the negative scores get copied.
    """
    positive = ids != 0
    negatives = scores[~positive]
    negatives.sort()
    positives = scores[positive]
    order = np.argsort(positives)[::-1]  # the order among ties is irrelevant
    ranked = positives[order]
    is_last = np.append(ranked[1:] != ranked[:-1], True)  # last positive of its group
    thresholds = ranked[is_last]
    tps = np.flatnonzero(is_last) + 1
    tps_above = np.concatenate(([0], tps[:-1]))
    fps_above = negatives.size - np.searchsorted(negatives, thresholds, side="right")
    fps = negatives.size - np.searchsorted(negatives, thresholds, side="left")
    return Curve(thresholds, tps, tps_above, fps_above, fps, negatives.size, ids[positive][order])


def _auroc(c):
    # Each positive beats the negatives below its group and ties, counting one half, with
    # the negatives inside it; doubled so the sum stays an exact int64.
    twice_wins = np.sum((c.tps - c.tps_above) * (2 * c.n_neg - c.fps - c.fps_above))
    return float(twice_wins) / (2.0 * float(c.tps[-1]) * float(c.n_neg))


def _average_precision(c):
    # sklearn's step sum: each recall increase weighted by the precision reached there.
    return float(np.sum((c.tps - c.tps_above) * (c.tps / (c.tps + c.fps)))) / float(c.tps[-1])


def _f1_max(c):
    """Best F1 and the score threshold reaching it (the highest one on ties)."""
    # 2PR / (P + R) = 2 TP / (predicted positives + actual positives).
    f1 = 2.0 * c.tps / (c.tps + c.fps + c.tps[-1])
    best = int(np.argmax(f1))
    return float(f1[best]), float(c.thresholds[best])


def _pro_levels(c, region_sizes):
    """(PRO just above each group of c, PRO down to its end, PRO with every anomalous pixel): _pro_area's input.

    PRO is the mean over all regions of the fraction of each region detected. Giving each
    anomalous pixel the weight 1 / (number of regions * size of its region) makes PRO at
    a threshold the sum of the weights of the pixels above it: a cumulative sum.
    region_sizes[r] is the pixel count of region r; entry 0 (background) is ignored.
    """
    weight = np.zeros(region_sizes.size)
    weight[1:] = 1.0 / ((region_sizes.size - 1) * region_sizes[1:].astype(np.float64))
    detected = np.concatenate(([0.0], np.cumsum(weight[c.ids])))
    return detected[c.tps_above], detected[c.tps], detected[-1]


def _pro_area(c, pro_above, pro_at, pro_end, max_fpr):
    """(normalised area under the PRO curve for FPR in [0, max_fpr], the curve's fpr, the curve's pro): the curve
    from (0, 0) up to and including its point at FPR = max_fpr, the part that is integrated; from the PRO just above
    each group of c (pro_above), down to its end (pro_at), and with every anomalous pixel (pro_end)."""
    # The curve from (0, 0): each group enters at (its fps_above, PRO so far) and leaves
    # at (its fps, PRO with it), joined by flat runs; it ends at (1, 1).
    fpr = np.empty(2 * c.tps.size + 2)
    pro = np.empty(2 * c.tps.size + 2)
    fpr[0], pro[0], fpr[-1], pro[-1] = 0.0, 0.0, 1.0, pro_end
    fpr[1:-1:2], pro[1:-1:2] = c.fps_above / c.n_neg, pro_above
    fpr[2:-1:2], pro[2:-1:2] = c.fps / c.n_neg, pro_at
    # Cut the first segment that crosses max_fpr at exactly max_fpr.
    cut = int(np.searchsorted(fpr, max_fpr, side="right"))
    f0, f1, p0, p1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
    p_cut = p0 + (p1 - p0) * (max_fpr - f0) / (f1 - f0)
    area = np.trapezoid(pro[:cut], fpr[:cut]) + (max_fpr - f0) * (p0 + p_cut) / 2.0
    return float(area) / max_fpr, np.append(fpr[:cut], max_fpr), np.append(pro[:cut], p_cut)


def _roc(c):
    """(fpr, tpr) vertices of the ROC curve from (0, 0) to (1, 1): each group of tied scores enters at its
    (fps_above, tps_above) and leaves at (fps, tps); its trapezoid area is _auroc's."""
    fpr = np.concatenate(([0.0], np.stack([c.fps_above, c.fps], 1).ravel() / c.n_neg, [1.0]))
    tpr = np.concatenate(([0.0], np.stack([c.tps_above, c.tps], 1).ravel() / c.tps[-1], [1.0]))
    return fpr, tpr


def _precision_recall(c):
    """(recall, precision) at each group of tied scores that holds a positive, and just above it (where only the
    negatives ranked above it have been added: the saw tooth between groups)."""
    above = c.tps_above > 0  # at the top, before the first positive, precision is undefined
    recall = np.stack([c.tps_above, c.tps], 1) / c.tps[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.stack([c.tps_above / (c.tps_above + c.fps_above), c.tps / (c.tps + c.fps)], 1)
    keep = np.stack([above, np.ones_like(above)], 1)
    return recall[keep], precision[keep]


def downsample(x, y, n=CURVE_POINTS):
    """At most n of the vertices of the polyline (x, y), the first and the last among them, spread evenly along its
    length (steps in x and y, each axis scaled to its span): the vertices kept are exact points of the curve."""
    if x.size <= n:
        return x, y
    step = np.abs(np.diff(x)) / max(np.ptp(x), 1e-300) + np.abs(np.diff(y)) / max(np.ptp(y), 1e-300)
    length = np.concatenate(([0.0], np.cumsum(step)))
    keep = np.unique(np.searchsorted(length, np.linspace(0.0, length[-1], n)).clip(0, x.size - 1))
    return x[keep], y[keep]


def _curve_dict(names, arrays):
    return {name: a.tolist() for name, a in zip(names, arrays)}


def _pro_paper_image(amap, mask, regions):
    """Per-image PRO exactly as the official RD4AD test script computes it.

    200 thresholds evenly spaced over this image's own score range (in float64, as the
    script's float64 maps give), a pixel detected when its score is strictly above one, points with FPR >= 0.3 dropped, FPR divided
    by its largest kept value, then the trapezoid area. Where the script would divide by
    zero or crash this returns:
      constant map                      -> 0.0 (no threshold separates anything)
      no threshold with FPR < 0.3       -> 0.0 (the curve never enters the range)
      every kept FPR is 0 (every normal pixel sits at the map minimum, or the image has
      no normal pixel)                  -> PRO at the lowest threshold (1.0 for a perfect map)
    A single kept point with FPR > 0 has zero trapezoid area, as sklearn's auc would give
    if it accepted one point.
    """
    lo, hi = float(amap.min()), float(amap.max())
    if hi == lo:
        return 0.0
    thresholds = np.arange(lo, hi, (hi - lo) / PAPER_NUM_TH)
    # Weighted so that PRO at a threshold is the sum of the weights of the pixels above it.
    _, region_of_pixel, sizes = np.unique(regions[mask], return_inverse=True, return_counts=True)
    weight = 1.0 / (sizes.size * sizes[region_of_pixel].astype(np.float64))
    scores = amap[mask]
    order = np.argsort(scores)
    scores = scores[order]
    weight_above = np.append(np.cumsum(weight[order][::-1])[::-1], 0.0)
    pro = weight_above[np.searchsorted(scores, thresholds, side="right")]
    normal = np.sort(amap[~mask])
    if normal.size:
        fpr = (normal.size - np.searchsorted(normal, thresholds, side="right")) / normal.size
    else:
        fpr = np.zeros_like(thresholds)
    keep = fpr < MAX_FPR
    fpr, pro = fpr[keep], pro[keep]
    if fpr.size == 0:
        return 0.0
    if fpr.max() == 0:
        return float(pro[0])
    # FPR falls as the threshold rises; sklearn's auc flips the sign for that.
    return float(-np.trapezoid(pro, fpr / fpr.max()))


def _ader_f1_iou_max(maps, masks):
    """(pixel_f1_21, pixel_iou_max): ADer's F1-max and IoU-max over ADER_THRESHOLDS.

    The maps are min-max normalised over the whole set in float64 (as ADer's float64 maps);
    a pixel is predicted anomalous at threshold t when its normalised score is > t. Each
    pixel's level, the number of thresholds strictly below it, is one binary search, and
    counting pixels per level (all, and anomalous) gives every threshold's confusion counts
    at once: one pass over the pixels in chunks, no (21, N, H, W) temporary.
    """
    lo, hi = float(maps.min()), float(maps.max())
    n_levels = ADER_THRESHOLDS.size + 1
    predicted, hits = np.zeros(n_levels, np.int64), np.zeros(n_levels, np.int64)
    step = max(1, ADER_CHUNK_PIXELS // (maps[0].size or 1))
    for start in range(0, len(maps), step):
        chunk = maps[start:start + step].astype(np.float64).ravel()
        # A constant map has no normalisation; ADer's 0/0 = NaN is above no threshold, as 0 here.
        normalised = (chunk - lo) / (hi - lo) if hi > lo else np.zeros_like(chunk)
        level = np.searchsorted(ADER_THRESHOLDS, normalised, side="left")  # (pixels,) in 0..21
        predicted += np.bincount(level, minlength=n_levels)
        hits += np.bincount(level[masks[start:start + step].ravel()], minlength=n_levels)
    return _ader_from_levels(predicted, hits)


def _ader_from_levels(predicted, hits):
    """_ader_f1_iou_max's result from the pixel counts per level (all pixels, anomalous pixels), int64 (22,)."""
    # pixels above threshold k are those of level > k: suffix sums from level k + 1
    predicted_above = np.cumsum(predicted[::-1])[::-1][1:]  # (21,)
    hits_above = np.cumsum(hits[::-1])[::-1][1:]
    n_anomalous = hits.sum()
    f1 = 2.0 * hits_above / (predicted_above + n_anomalous)
    iou = hits_above / (predicted_above + n_anomalous - hits_above)
    return float(f1.max()), float(iou.max())


def compute_metrics(image_scores, image_labels, maps, masks, pixel_path=None):
    """All image- and pixel-level metrics; see the module docstring and metrics_and_curves."""
    return metrics_and_curves(image_scores, image_labels, maps, masks, pixel_path)[0]


def metrics_and_curves(image_scores, image_labels, maps, masks, pixel_path=None):
    """(metrics, curves): all image- and pixel-level metrics, and the curves they are read off.

    image_scores (N,) and image_labels (N,) in {0, 1}; maps (N, H, W) anomaly maps and
    masks (N, H, W) in {0, 1}; numpy arrays or torch tensors. Pass float32 maps for speed.
    maps and masks may also be lists of N (H_i, W_i) arrays or tensors, of sizes that may differ.
    masks=None (data with image labels only): the pixel metrics are None, with that reason.
    pixel_path: None picks by size (the module docstring's "Large sets": "sort" up to SORT_MAX_PIXELS pixels in
    one (N, H, W) stack, "histogram" beyond or for maps of different sizes); "sort" or "histogram" forces one.
    metrics: a dict of python floats, None for metrics the data cannot define, and
    `undefined`: {metric name: reason} for those Nones (empty when all are defined).
    curves: {"image_roc": {"fpr", "tpr"}, "image_pr": {"recall", "precision"}, "pixel_roc", "pixel_pr",
    "pixel_pro": {"fpr", "pro"}}, lists of floats, None where the metric is undefined. Image curves
    hold every vertex (their trapezoid area is image_auroc); pixel curves at most CURVE_POINTS vertices
    (evaluation.metrics.downsample), so their areas are close to, not equal to, the metrics: those are computed exactly.
    pixel_pro runs from FPR 0 to MAX_FPR, the part of the curve pixel_aupro integrates.
    """
    image_scores = _as_scores(image_scores, "image_scores").ravel()
    image_labels = _as_binary(image_labels, "image_labels").ravel()
    labels_only = masks is None
    if _takes_sort_path(maps, pixel_path):
        pixel_metrics = _pixel_metrics
        maps = _as_scores(maps, "maps")
        masks = np.zeros(maps.shape, dtype=bool) if labels_only else _as_binary(masks, "masks")
        if image_scores.shape != image_labels.shape:
            raise ValueError(f"image_scores {image_scores.shape} vs image_labels {image_labels.shape}")
        if maps.ndim != 3 or maps.shape != masks.shape or maps.shape[0] != image_scores.size:
            raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be (N, H, W) "
                             f"with N = {image_scores.size} images")
    else:
        pixel_metrics = _pixel_metrics_histogram
        if image_scores.shape != image_labels.shape:
            raise ValueError(f"image_scores {image_scores.shape} vs image_labels {image_labels.shape}")
        maps, masks = _per_image(maps, masks, image_scores.size)
    out = dict.fromkeys(METRIC_NAMES)
    curves = dict.fromkeys(("image_roc", "image_pr", "pixel_roc", "pixel_pr", "pixel_pro"))
    undefined = {}

    n_anomalous = int(image_labels.sum())
    if 0 < n_anomalous < image_labels.size:
        curve = _curve(image_scores, image_labels.astype(np.int64))
        out["image_auroc"] = _auroc(curve)
        out["image_ap"] = _average_precision(curve)
        out["image_f1"], out["image_f1_threshold"] = _f1_max(curve)
        curves["image_roc"] = _curve_dict(("fpr", "tpr"), _roc(curve))
        curves["image_pr"] = _curve_dict(("recall", "precision"), _precision_recall(curve))
    else:
        reason = "test set has no normal images" if n_anomalous else "test set has no anomalous images"
        for name in ("image_auroc", "image_f1", "image_ap", "image_f1_threshold"):
            undefined[name] = reason

    if labels_only:
        for name in PIXEL_NAMES:
            undefined[name] = "no ground truth masks: image labels only"
    else:
        pixel_metrics(maps, masks, out, undefined, curves)

    missing = [name for name in MAD_PARTS if out[name] is None]
    if missing:
        undefined["mad"] = f"{missing[0]} is undefined: {undefined[missing[0]]}"
    else:
        out["mad"] = float(np.mean([out[name] for name in MAD_PARTS]))
    out["undefined"] = undefined
    return out, curves


def _ranked_pixel_metrics(curve, pro_levels, out, curves):
    """The pixel metrics read off the ranking of the pixels (AUROC, AP, F1-max, both AU-PROs) into out, and their
    curves into curves: from the sort path's _curve or the histogram path's, and the PRO at each of its groups
    (_pro_levels' (above, at, end))."""
    out["pixel_auroc"] = _auroc(curve)
    out["pixel_ap"] = _average_precision(curve)
    out["pixel_f1"], _ = _f1_max(curve)
    out["pixel_aupro"], pro_fpr, pro = _pro_area(curve, *pro_levels, MAX_FPR)
    out["pixel_aupro_05"] = _pro_area(curve, *pro_levels, MAX_FPR_AD2)[0]
    curves["pixel_roc"] = _curve_dict(("fpr", "tpr"), downsample(*_roc(curve)))
    curves["pixel_pr"] = _curve_dict(("recall", "precision"), downsample(*_precision_recall(curve)))
    curves["pixel_pro"] = _curve_dict(("fpr", "pro"), downsample(pro_fpr, pro))


def _pixel_metrics(maps, masks, out, undefined, curves):
    """Fill `out` with the pixel metrics of maps (N, H, W) against bool masks (N, H, W), `undefined` with the
    reasons of those the masks cannot define, and `curves` with the pixel curves (metrics_and_curves)."""
    regions, n_regions = ndimage.label(masks, structure=_STACK_8_CONNECTED)
    n_pixels_anomalous = int(np.count_nonzero(regions))
    if 0 < n_pixels_anomalous < regions.size:
        curve = _curve(maps.ravel(), regions.ravel())
        _ranked_pixel_metrics(curve, _pro_levels(curve, np.bincount(curve.ids, minlength=n_regions + 1)), out, curves)
    else:
        reason = "masks have no normal pixels" if n_pixels_anomalous else "masks have no anomalous pixels"
        for name in RANKED_PIXEL_NAMES:
            undefined[name] = reason

    # F1 and IoU need anomalous pixels only; masks without any normal pixel still define them.
    if n_pixels_anomalous:
        out["pixel_f1_21"], out["pixel_iou_max"] = _ader_f1_iou_max(maps, masks)
    else:
        for name in ("pixel_f1_21", "pixel_iou_max"):
            undefined[name] = "masks have no anomalous pixels"

    per_image = [_pro_paper_image(amap, mask, region)
                 for amap, mask, region in zip(maps, masks, regions) if mask.any()]
    if per_image:
        out["pixel_pro_paper"] = float(np.mean(per_image))
    else:
        undefined["pixel_pro_paper"] = "no image has anomalous pixels"


# ----------------------------------------------------------------------------- large sets: the histogram path

_EIGHT_CONNECTED = _STACK_8_CONNECTED[1]  # 8-connectivity inside one image
# Float16 maps: one bin per float16 bit pattern, its uint16 key ordered like the values (_half_keys): a non-negative
# value's bits with the top bit set, a negative value's bits inverted. -0.0 and +0.0 get neighbouring keys (merged:
# they tie); NaNs fall below -inf and above +inf.
_KEY_MINUS_ZERO, _KEY_ZERO = 0x7FFF, 0x8000
_KEY_MINUS_INF, _KEY_INF = 0x03FF, 0xFC00
# Other maps: a pixel's distance to the set's minimum, scaled by a power of two into [0, 2), as a float32 cut to
# its top SIGNIFICANT_BITS significant bits over the BINADES binades below 2 (a 20-bit float: bins 2**-15 of their
# value wide; the lowest bin also holds everything closer than 2**-31 of the range to the minimum).
SIGNIFICANT_BITS = 15
BINADES = 32
_RANGE_BASE = (127 - BINADES + 1) << 23  # float32 bits of 2**-31, the lowest bin's edge
_RANGE_SHIFT = 23 - SIGNIFICANT_BITS
_RANGE_BOTTOM, _RANGE_TOP = np.float32(2.0 ** (1 - BINADES)), np.nextafter(np.float32(2.0), np.float32(0.0))


def _takes_sort_path(maps, pixel_path):
    """Whether metrics_and_curves takes the sort path: pixel_path if given, else one (N, H, W) stack (or a list of
    maps of one shape) of at most SORT_MAX_PIXELS pixels."""
    if pixel_path not in (None, "sort", "histogram"):
        raise ValueError(f"pixel_path {pixel_path!r} must be None, 'sort' or 'histogram'")
    if pixel_path is not None:
        return pixel_path == "sort"
    if isinstance(maps, (list, tuple)):
        shapes = [tuple(np.shape(m)) for m in maps]
        return len(set(shapes)) <= 1 and sum(int(np.prod(shape)) for shape in shapes) <= SORT_MAX_PIXELS
    return int(np.prod(np.shape(maps))) <= SORT_MAX_PIXELS


def _per_image(maps, masks, n):
    """maps and masks (None: labels only) as sequences of n (H_i, W_i) maps and masks, converted one at a time later
    (no copy of the whole set here); ValueError unless each map and its mask are 2-D of one shape."""
    maps = maps if isinstance(maps, (list, tuple, np.ndarray, torch.Tensor)) else np.asarray(maps)
    if masks is not None:
        masks = masks if isinstance(masks, (list, tuple, np.ndarray, torch.Tensor)) else np.asarray(masks)
    if len(maps) != n or (masks is not None and len(masks) != n):
        raise ValueError(f"{len(maps)} maps and {'no' if masks is None else len(masks)} masks "
                         f"for N = {n} images")
    for i in range(n if masks is not None else 0):
        map_shape, mask_shape = tuple(np.shape(maps[i])), tuple(np.shape(masks[i]))
        if len(map_shape) != 2 or map_shape != mask_shape:
            raise ValueError(f"map {i} {map_shape} and its mask {mask_shape} must both be (H, W)")
    return maps, masks


def _is_half(x):
    return x.dtype == torch.float16 if isinstance(x, torch.Tensor) else np.asarray(x).dtype == np.float16


def _half_keys(half):
    """uint16 keys of the float16 array half, ordered like its values."""
    bits = half.view(np.uint16)
    keys = (bits.view(np.int16) >> 15).view(np.uint16)  # 0xFFFF where negative, else 0
    keys |= 0x8000
    return np.bitwise_xor(bits, keys, out=keys)


class _HalfBins:
    """Float16 maps, binned as they are: one bin per value, so the histogram path is exact."""
    n = 1 << 16

    def keys(self, amap):
        return _half_keys(amap)

    def values(self, total):
        """(n,) float64, ascending: each bin's value (NaN bins read as -inf, +inf); merges -0.0 into +0.0 in the
        histograms of the dict total, ValueError if a NaN was binned."""
        for histogram in total.values():
            histogram[_KEY_ZERO] += histogram[_KEY_MINUS_ZERO]
            histogram[_KEY_MINUS_ZERO] = 0
        if total["pixels"][:_KEY_MINUS_INF].any() or total["pixels"][_KEY_INF + 1:].any():
            raise ValueError("maps contains NaN")
        keys = np.arange(self.n).astype(np.uint16)
        values = np.where(keys >= 0x8000, keys ^ 0x8000, ~keys).astype(np.uint16).view(np.float16).astype(np.float64)
        values[:_KEY_MINUS_INF], values[_KEY_INF + 1:] = -np.inf, np.inf
        return values


class _RangeBins:
    """Other maps, binned by their distance to the set's minimum (SIGNIFICANT_BITS, BINADES); a first pass finds the
    set's finite minimum and maximum and rejects NaN. +-inf fall in the top and bottom bins."""
    n = BINADES << SIGNIFICANT_BITS

    def __init__(self, maps):
        lo, hi = np.inf, -np.inf
        for amap in maps:
            amap = _numpy(amap)
            a, b = amap.min(), amap.max()  # a NaN propagates
            if np.isnan(a) or np.isnan(b):
                raise ValueError("maps contains NaN")
            if not (np.isfinite(a) and np.isfinite(b)):
                finite = amap[np.isfinite(amap)]
                a, b = (finite.min(), finite.max()) if finite.size else (np.inf, -np.inf)
            lo, hi = min(lo, float(a)), max(hi, float(b))
        self.lo, self.hi = (lo, hi) if lo <= hi else (0.0, 0.0)
        # 2**exp times the range lies in [1, 2); clipped to keep 2**exp a normal float32
        self.exp = int(np.clip(1 - np.frexp(self.hi - self.lo)[1], -126, 127)) if hi > lo else 0

    def keys(self, amap):
        if amap.dtype not in (np.float32, np.float64):
            amap = amap.astype(np.float32 if amap.dtype == np.float16 else np.float64)
        distance = np.subtract(amap, amap.dtype.type(self.lo))
        distance *= amap.dtype.type(2.0 ** self.exp)
        distance = distance.astype(np.float32, copy=False)  # rounded, in order
        np.clip(distance, _RANGE_BOTTOM, _RANGE_TOP, out=distance)
        keys = distance.view(np.uint32)
        keys -= _RANGE_BASE
        keys >>= _RANGE_SHIFT
        return keys

    def values(self, total):
        """(n,) float64, ascending: each bin's lowest value, the lowest bin's the set's minimum."""
        edges = ((np.arange(self.n, dtype=np.uint32) << _RANGE_SHIFT) + _RANGE_BASE).view(np.float32)
        values = self.lo + edges.astype(np.float64) / 2.0 ** self.exp
        values[0] = self.lo
        return values


def _histogram_curve(values, total, positive):
    """(Curve with ids None, the groups' bins in descending order) of pixels binned by value: total[k] pixels of
    value values[k] (ascending), positive[k] of them anomalous. Each bin is a group of tied scores."""
    pos, neg = positive[::-1], (total - positive)[::-1]
    group = np.flatnonzero(pos)
    tps, fps = np.cumsum(pos)[group], np.cumsum(neg)[group]
    return Curve(values[::-1][group], tps, tps - pos[group], fps - neg[group], fps, int(neg.sum()), None), group


class _Histograms:
    """Per bin: pixels, anomalous pixels, and the sum over the anomalous pixels of 1 / the size of their region;
    images are added a chunk of about ADER_CHUNK_PIXELS pixels at a time (a bincount per chunk, not per image)."""

    def __init__(self, n_bins):
        self.n_bins = n_bins
        self.total = {"pixels": np.zeros(n_bins, np.int64), "positive": np.zeros(n_bins, np.int64),
                      "detected": np.zeros(n_bins)}
        self.pending, self.n_pending = ([], [], []), 0

    def add(self, keys, anomalous, weights):
        for pending, x in zip(self.pending, (keys, anomalous, weights)):
            pending.append(x.ravel())
        self.n_pending += keys.size
        if self.n_pending >= ADER_CHUNK_PIXELS:
            self.flush()

    def flush(self):
        keys, anomalous, weights = (p[0] if len(p) == 1 else np.concatenate(p) if p else np.zeros(0, np.int64)
                                    for p in self.pending)
        self.total["pixels"] += np.bincount(keys, minlength=self.n_bins)
        self.total["positive"] += np.bincount(anomalous, minlength=self.n_bins)
        self.total["detected"] += np.bincount(anomalous, weights=weights, minlength=self.n_bins)
        self.pending, self.n_pending = ([], [], []), 0
        return self.total


def _pixel_metrics_histogram(maps, masks, out, undefined, curves):
    """_pixel_metrics for sequences of maps (H_i, W_i) and bool masks, in memory bounded by one image: each image
    adds its pixels to histograms over bins of value (_HalfBins for float16 maps, else _RangeBins) and _pixel_metrics'
    formulas run over the bins, each a group of tied scores. pixel_pro_paper is per image, from the maps as given."""
    all_half = _is_half(maps) if not isinstance(maps, (list, tuple)) else all(_is_half(m) for m in maps)
    bins = _HalfBins() if all_half else _RangeBins(maps)
    histograms = _Histograms(bins.n)
    n_regions, per_image = 0, []
    for amap, mask in zip(maps, masks):
        amap, mask = _numpy(amap), _as_binary(mask, "masks")
        keys = bins.keys(amap)
        if not mask.any():
            histograms.add(keys, keys[:0], np.zeros(0))
            continue
        regions, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        ids = regions[mask]
        histograms.add(keys, keys[mask], 1.0 / np.bincount(ids)[ids])
        n_regions += count
        per_image.append(_pro_paper_image(_as_scores(amap, "maps"), mask, regions))
    total = histograms.flush()
    values = bins.values(total)
    pixels, positive = total["pixels"], total["positive"]

    n_pixels_anomalous = int(positive.sum())
    if 0 < n_pixels_anomalous < int(pixels.sum()):
        curve, group = _histogram_curve(values, pixels, positive)
        pro_at = np.cumsum(total["detected"][::-1][group]) / n_regions
        _ranked_pixel_metrics(curve, (np.append(0.0, pro_at[:-1]), pro_at, pro_at[-1]), out, curves)
    else:
        reason = "masks have no normal pixels" if n_pixels_anomalous else "masks have no anomalous pixels"
        for name in RANKED_PIXEL_NAMES:
            undefined[name] = reason

    if n_pixels_anomalous:
        # _ader_f1_iou_max's float64 arithmetic once per occupied bin, on its value
        occupied = np.flatnonzero(pixels)
        lo, hi = (float(values[occupied[0]]), float(values[occupied[-1]])) if all_half else (bins.lo, bins.hi)
        scores = values[occupied]
        normalised = (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)
        level = np.searchsorted(ADER_THRESHOLDS, normalised, side="left")
        predicted, hits = np.zeros(ADER_THRESHOLDS.size + 1, np.int64), np.zeros(ADER_THRESHOLDS.size + 1, np.int64)
        np.add.at(predicted, level, pixels[occupied])
        np.add.at(hits, level, positive[occupied])
        out["pixel_f1_21"], out["pixel_iou_max"] = _ader_from_levels(predicted, hits)
    else:
        for name in ("pixel_f1_21", "pixel_iou_max"):
            undefined[name] = "masks have no anomalous pixels"

    if per_image:
        out["pixel_pro_paper"] = float(np.mean(per_image))
    else:
        undefined["pixel_pro_paper"] = "no image has anomalous pixels"


# ----------------------------------------------------------------------------- MVTec AD 2's SegF1

def seg_f1(maps, masks, threshold):
    """MVTec AD 2's SegF1 (Heckler-Kram et al., arXiv 2503.21622): the F1 of the pixels predicted anomalous
    (map >= threshold) against the masks, all pixels of all images pooled: 2 TP / (2 TP + FP + FN).

    maps, masks: sequences (a list, an (N, H, W) array or tensor) of N (H_i, W_i) maps and 0/1 masks, sizes that may
    differ; read one image at a time, so memory is that of one image (native size). threshold: one float for every
    image, chosen without the test defects (evaluation.threshold.validation_threshold). A ValueError where the masks
    hold no anomalous pixel (SegF1 is then 0 or 0/0) or a map holds NaN.

    What the public sources fix, and what they leave open: MVTec's submission checker (MVTecAD2_public_code_utils,
    utils.py and check_and_prepare_data_for_upload.py, read in the copy of github denisonus/mvtec_research at commit
    0f1357483f3d96e0a08f274c239888c8e2d7f604) takes the binarised maps as 0/255 PNGs and scores them on MVTec's
    server, whose code is not public: the side a pixel equal to the threshold falls on is the submitter's choice
    (here >=, as this module's F1-max and evaluation/threshold.py), and pooling every pixel of a test set, rather
    than averaging per image, is this function's reading of the paper's pixel F1, not checked against the server.
    """
    if not np.isfinite(float(threshold)):
        raise ValueError(f"threshold {threshold}: must be a finite number")
    maps, masks = _per_image(maps, masks, len(maps))
    tp = fp = n_anomalous = 0
    for amap, mask in zip(maps, masks):
        amap, mask = _numpy(amap), _as_binary(mask, "masks")
        if np.isnan(amap).any():
            raise ValueError("maps contains NaN")
        predicted = amap >= threshold
        tp += int(np.count_nonzero(predicted & mask))
        fp += int(np.count_nonzero(predicted & ~mask))
        n_anomalous += int(np.count_nonzero(mask))
    if not n_anomalous:
        raise ValueError("masks have no anomalous pixels: SegF1 is undefined")
    return 2.0 * tp / (tp + fp + n_anomalous)
