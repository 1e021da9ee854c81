"""
Tests for evaluation/metrics.py against independent, deliberately slow references.

sklearn for AUROC and AP, explicit Python loops over thresholds for F1-max, AUPRO (to FPR 0.3, and MVTec AD 2's to
0.05) and the RD4AD per-image PRO, sklearn's f1_score on the pooled pixels for MVTec AD 2's SegF1, plus hand-computed
tiny cases; ADer's pixel F1-max, IoU-max and mAD
against a transcription of its definitions (util/metric.py at ADER_COMMIT). The histogram path for large sets
against the sort path: equal on float16 maps, within HISTOGRAM_BOUND (measured) on float32 ones.
Run: python -m pytest -q tests/test_metrics.py
"""

import os
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, f1_score, precision_recall_curve, roc_auc_score, roc_curve

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluation.metrics  # noqa: E402
from conftest import EIGHT, ref_aupro  # noqa: E402
from evaluation.metrics import CURVE_POINTS, MAX_FPR, compute_metrics, metrics_and_curves, seg_f1  # noqa: E402

TOL = 1e-6
FOUR = ndimage.generate_binary_structure(2, 1)


# ----------------------------------------------------------------------------- references

def ref_f1_max(scores, labels):
    """Best F1 over every distinct threshold (score >= t), scanned from the top, and the
    highest threshold reaching it."""
    best, best_t = -1.0, None
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        tp = np.sum(pred & labels)
        fp = np.sum(pred & ~labels)
        fn = np.sum(~pred & labels)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f1 > best:
            best, best_t = f1, t
    return best, best_t


def ref_pro_paper(maps, masks):
    """Transcription of the official RD4AD compute_pro, called once per anomalous image."""
    values = []
    for amap, mask in zip(maps, masks):
        if not mask.any():
            continue
        lab, n = ndimage.label(mask, structure=EIGHT)
        lo, hi = float(amap.min()), float(amap.max())
        fprs, pros = [], []
        for th in np.arange(lo, hi, (hi - lo) / 200):
            binary = amap > th
            pros.append(np.mean([binary[lab == r].sum() / (lab == r).sum() for r in range(1, n + 1)]))
            fprs.append(np.logical_and(~mask, binary).sum() / (~mask).sum())
        fprs, pros = np.array(fprs), np.array(pros)
        keep = fprs < 0.3
        values.append(auc(fprs[keep] / fprs[keep].max(), pros[keep]))
    return float(np.mean(values))


# ADer, github.com/zhangzjn/ADer, util/metric.py (Evaluator.run, metrics 'mF1_max_px' and
# 'mIoU_max_px') and configs/benchmark/README.md (mAD), read at this commit:
ADER_COMMIT = "902937a7ed7fa7689674a4ac9b8fe9a72a40c402"
ADER_EPS = 1e-8  # ADer adds it to every denominator


def ref_ader_f1_iou_max(maps, masks):
    """ADer's pixel F1-max and IoU-max, transcribed: the maps min-max normalised over the whole
    set, thresholds np.arange(0, 1 + 1e-3, 0.05), predicted = normalised > threshold, the
    category's pixels pooled; precision, recall, F1 and IoU with ADER_EPS in each denominator;
    the maximum over thresholds. A constant map normalises to NaN (0/0), above no threshold."""
    maps = maps.astype(np.float64)
    with np.errstate(invalid="ignore"):
        normalised = (maps - maps.min()) / (maps.max() - maps.min())
    f1s, ious = [], []
    for threshold in np.arange(0.0, 1.0 + 1e-3, 0.05):
        predicted = normalised > threshold
        intersection = np.logical_and(masks, predicted).sum()
        union = np.logical_or(masks, predicted).sum()
        precision = intersection / (predicted.sum() + ADER_EPS)
        recall = intersection / (masks.sum() + ADER_EPS)
        f1s.append(2 * precision * recall / (precision + recall + ADER_EPS))
        ious.append(intersection / (union + ADER_EPS))
    return max(f1s), max(ious)


def ref_ader_image_f1(scores, labels):
    """ADer's image F1-max: 2PR / (P + R) along sklearn's precision_recall_curve, the finite maximum."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return np.max(f1[np.isfinite(f1)])


def ref_mad(scores, labels, maps, masks):
    """ADer's mAD: the mean of its seven columns I-AUROC, I-AP, I-F1-max, P-AUROC, P-AP,
    P-F1-max, AUPRO (ADer's pixel AUROC/AP/AUPRO are binned by ADEval; the exact ones here)."""
    pix, lab = maps.ravel(), masks.ravel()
    return np.mean([roc_auc_score(labels, scores), average_precision_score(labels, scores),
                    ref_ader_image_f1(scores, labels), roc_auc_score(lab, pix), average_precision_score(lab, pix),
                    ref_ader_f1_iou_max(maps, masks)[0], ref_aupro(maps, masks)])


# ----------------------------------------------------------------------------- data

def make_case(seed, n=6, size=32, levels=None):
    """Smooth maps with a bump on several rectangular regions per anomalous image; image 0
    is normal, regions touch the border, and image 1 has two pixels that touch only
    diagonally (one region under 8-connectivity). levels rounds scores to create ties."""
    rng = np.random.default_rng(seed)
    maps = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), (0, 2, 2))
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(1, n):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(-3, size - 2, size=2)
            h, w = rng.integers(2, 8, size=2)
            masks[i, max(y, 0):y + h, max(x, 0):x + w] = True
    masks[1, size - 6:, :8] = False
    masks[1, size - 4, 2] = masks[1, size - 3, 3] = True
    masks[2, 0, :5] = True
    maps = (maps + 0.4 * masks * rng.random((n, size, size))).astype(np.float32)
    if levels:
        maps = np.round(maps * levels) / levels
    scores = maps.reshape(n, -1).max(axis=1)
    if levels:
        scores = np.round(scores * 4) / 4
    return scores, masks.any(axis=(1, 2)), maps.astype(np.float32), masks


CASES = [dict(seed=0), dict(seed=1, levels=3), dict(seed=2, levels=20),
         dict(seed=3, n=30, size=12, levels=8), dict(seed=4, n=30, size=12)]


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("case", CASES)
def test_against_references(case):
    scores, labels, maps, masks = make_case(**case)
    m = compute_metrics(scores, labels, maps, masks)
    assert m["undefined"] == {}
    assert abs(m["image_auroc"] - roc_auc_score(labels, scores)) < TOL
    assert abs(m["image_ap"] - average_precision_score(labels, scores)) < TOL
    f1, threshold = ref_f1_max(scores, labels)
    assert abs(m["image_f1"] - f1) < TOL
    assert m["image_f1_threshold"] == threshold
    pix, lab = maps.ravel(), masks.ravel()
    assert abs(m["pixel_auroc"] - roc_auc_score(lab, pix)) < TOL
    assert abs(m["pixel_ap"] - average_precision_score(lab, pix)) < TOL
    assert abs(m["pixel_f1"] - ref_f1_max(pix, lab)[0]) < TOL
    assert abs(m["pixel_aupro"] - ref_aupro(maps, masks)) < TOL
    assert abs(m["pixel_aupro_05"] - ref_aupro(maps, masks, max_fpr=0.05)) < TOL
    assert abs(m["pixel_pro_paper"] - ref_pro_paper(maps, masks)) < TOL
    assert all(isinstance(m[k], float) for k in m if k != "undefined")


def test_f1_threshold_reproduces_f1():
    scores, labels, maps, masks = make_case(seed=3, n=30, size=12, levels=8)
    m = compute_metrics(scores, labels, maps, masks)
    pred = scores >= m["image_f1_threshold"]
    tp = np.sum(pred & labels)
    assert abs(2 * tp / (pred.sum() + labels.sum()) - m["image_f1"]) < TOL
    # F1 ties: score >= 4 gives 2*1/(1+2), score >= 1 gives 2*2/(4+2); the highest wins.
    masks = np.zeros((4, 2, 2), dtype=bool)
    masks[0, 0, 0] = True
    m = compute_metrics([4.0, 3.0, 2.0, 1.0], [1, 0, 0, 1], np.zeros((4, 2, 2)), masks)
    assert abs(m["image_f1"] - 2 / 3) < TOL and m["image_f1_threshold"] == 4.0


def test_torch_inputs_and_dtypes_agree():
    scores, labels, maps, masks = make_case(seed=5, levels=10)
    base = compute_metrics(scores, labels, maps, masks)
    variants = [
        (torch.from_numpy(scores), torch.from_numpy(labels).long(),
         torch.from_numpy(maps), torch.from_numpy(masks).float()),
        (scores.astype(np.float64), labels.astype(np.int64), maps.astype(np.float64),
         masks.astype(np.uint8)),
    ]
    for variant in variants:
        m = compute_metrics(*variant)
        for k in base:
            if k != "undefined":
                assert abs(m[k] - base[k]) < 1e-12, k


def test_negative_zero_ties_positive_zero():
    # -0.0 == 0.0, so a map mixing them must score like one with only +0.0.
    scores, labels, maps, masks = make_case(seed=6, levels=2)
    signed = maps.copy()
    signed[(maps == 0) & (np.arange(maps.size).reshape(maps.shape) % 2 == 1)] = -0.0
    assert np.signbit(signed[signed == 0]).any()
    a = compute_metrics(scores, labels, maps, masks)
    b = compute_metrics(scores, labels, signed, masks)
    for k in a:
        if k != "undefined":
            assert a[k] == b[k], k


def test_diagonal_pixels_form_one_region():
    # Regions {(0,0),(1,1)} and {(3,3)}: two regions under 8-connectivity, three under 4.
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 3, 3] = True
    maps = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 4, 4)[:, ::-1].copy()
    maps[0, 3, 3] = 0.95
    m = compute_metrics([0.5], [1], maps, masks)
    assert abs(m["pixel_aupro"] - ref_aupro(maps, masks, EIGHT)) < TOL
    assert abs(m["pixel_aupro"] - ref_aupro(maps, masks, FOUR)) > 1e-3


def test_pro_paper_by_hand():
    # One 4-pixel region; thresholds th_j = 0.005 j, j = 0..199 (map range [0, 1]).
    # Anomalous pixels 1, 1, 0.7025, 0.3025 -> PRO (fraction > th) = 1 for j <= 60,
    # 3/4 for 61..140, 1/2 for 141..199. Normal pixels: nine 0s, two 0.5025, one 0.8025
    # -> FPR = 3/12 for j <= 100, 1/12 for 101..160, 0 after; all < 0.3 so all kept.
    # Divided by the max 1/4: 1, 1/3, 0. Only two segments have width:
    # j=100->101: (1 - 1/3) * 3/4 = 1/2 and j=160->161: (1/3 - 0) * 1/2 = 1/6. Total 2/3.
    amap = np.array([[0.0, 0.0, 0.0, 0.5025],
                     [0.0, 1.0, 1.0, 0.0],
                     [0.0, 0.7025, 0.3025, 0.8025],
                     [0.0, 0.0, 0.5025, 0.0]], dtype=np.float32)[None]
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, 1:3, 1:3] = True
    m = compute_metrics([1.0], [1], amap, mask)
    assert abs(m["pixel_pro_paper"] - 2 / 3) < TOL
    assert abs(ref_pro_paper(amap, mask) - 2 / 3) < TOL


def test_pro_paper_scores_on_thresholds():
    # Integer maps spanning exactly [0, 200] put the thresholds on 0, 1, ..., 199, so many
    # pixels equal a threshold and the strict "map > th" matters for PRO and FPR alike.
    scores, labels, _, masks = make_case(seed=10, size=16)
    rng = np.random.default_rng(10)
    maps = rng.integers(0, 201, size=masks.shape).astype(np.float32)
    maps[:, 0, 0], maps[:, -1, -1] = 0, 200
    maps[masks] = np.minimum(maps[masks] + 60, 200)
    m = compute_metrics(scores, labels, maps, masks)
    assert abs(m["pixel_pro_paper"] - ref_pro_paper(maps, masks)) < TOL


def test_pro_paper_degenerate_images():
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, 1:3, 1:3] = True
    constant = np.ones((1, 4, 4), dtype=np.float32)
    assert compute_metrics([1.0], [1], constant, mask)["pixel_pro_paper"] == 0.0
    perfect = mask.astype(np.float32)  # every normal pixel at the minimum: FPR always 0
    assert compute_metrics([1.0], [1], perfect, mask)["pixel_pro_paper"] == 1.0
    perfect[0, 1, 1] = 0  # one anomalous pixel at the minimum is never "> th": PRO 3/4
    assert compute_metrics([1.0], [1], perfect, mask)["pixel_pro_paper"] == 0.75


def test_all_normal_test_set():
    scores, labels, maps, masks = make_case(seed=7)
    m = compute_metrics(scores, np.zeros_like(labels), maps, np.zeros_like(masks))
    names = ("image_auroc", "image_f1", "image_ap", "image_f1_threshold", "pixel_auroc",
             "pixel_f1", "pixel_ap", "pixel_aupro", "pixel_aupro_05", "pixel_pro_paper", "pixel_f1_21", "pixel_iou_max",
             "mad")
    assert all(m[k] is None for k in names)
    assert set(m["undefined"]) == set(names)
    assert m["undefined"]["image_auroc"] == "test set has no anomalous images"


def test_labelled_images_without_anomalous_pixels():
    scores, labels, maps, masks = make_case(seed=8)
    m = compute_metrics(scores, labels, maps, np.zeros_like(masks))
    assert m["image_auroc"] is not None
    assert {"pixel_auroc", "pixel_f1", "pixel_ap", "pixel_aupro", "pixel_aupro_05", "pixel_pro_paper", "pixel_f1_21",
            "pixel_iou_max", "mad"} == set(m["undefined"])
    m = compute_metrics(scores, np.ones_like(labels), maps, masks)
    assert m["image_auroc"] is None and m["undefined"]["image_f1"] == "test set has no normal images"
    assert m["pixel_auroc"] is not None


def test_soft_masks_rejected():
    scores, labels, maps, masks = make_case(seed=9)
    with pytest.raises(ValueError):
        compute_metrics(scores, labels, maps, masks * 0.5)


# ----------------------------------------------------------------------------- ADer's metrics

@pytest.mark.parametrize("case", CASES)
def test_ader_metrics_against_transcription(case):
    scores, labels, maps, masks = make_case(**case)
    m = compute_metrics(scores, labels, maps, masks)
    f1, iou = ref_ader_f1_iou_max(maps, masks)
    assert abs(m["pixel_f1_21"] - f1) < TOL and abs(m["pixel_iou_max"] - iou) < TOL
    assert abs(m["mad"] - ref_mad(scores, labels, maps, masks)) < TOL
    assert m["pixel_f1_21"] <= m["pixel_f1"] + TOL  # 21 thresholds cannot beat every threshold


def test_ader_thresholds_compare_as_ader_does():
    # Pixels exactly on ADer's float64 thresholds (0.15000000000000002 is not above the fourth
    # one, but above 3 / 20), on k / 20 and one ulp either side. With the map spanning exactly
    # [0, 1] normalising changes nothing, so each pixel falls as in ADer or the test fails.
    rng = np.random.default_rng(11)
    grid = np.arange(0.0, 1.0 + 1e-3, 0.05)
    values = np.concatenate([grid, np.arange(21) / 20, np.nextafter(grid, 2.0), np.nextafter(grid, -1.0)])
    maps = rng.choice(np.clip(values, 0.0, 1.0), size=(8, 12, 12))
    maps[0, 0, 0], maps[0, 0, 1] = 0.0, 1.0
    masks = rng.random((8, 12, 12)) < maps  # anomalous pixels score higher on the whole
    masks[0, 0, 0] = True  # an anomalous pixel at the minimum is never above a threshold
    scores, labels = maps.max(axis=(1, 2)), masks.any(axis=(1, 2))
    m = compute_metrics(scores, labels, maps, masks)
    f1, iou = ref_ader_f1_iou_max(maps, masks)
    assert abs(m["pixel_f1_21"] - f1) < TOL and abs(m["pixel_iou_max"] - iou) < TOL
    # the same maps in float32 are normalised in float64 as well
    maps32 = maps.astype(np.float32)
    m32 = compute_metrics(scores, labels, maps32, masks)
    f1, iou = ref_ader_f1_iou_max(maps32.astype(np.float64), masks)
    assert abs(m32["pixel_f1_21"] - f1) < TOL and abs(m32["pixel_iou_max"] - iou) < TOL


def test_ader_metrics_by_hand():
    # Normalised scores 0, 0.25, 0.5, 1 on four pixels, the top two anomalous. Above 0.25 (up
    # to 0.45) exactly the anomalous ones: F1 = IoU = 1. Above 0 (up to 0.2): three pixels,
    # F1 = 4/5, IoU = 2/3. Above 0.5: one, F1 = 2/3, IoU = 1/2.
    maps = np.array([[[2.0, 3.0], [4.0, 6.0]]])
    masks = np.array([[[False, False], [True, True]]])
    m = compute_metrics([6.0], [1], maps, masks)
    assert m["pixel_f1_21"] == 1.0 and m["pixel_iou_max"] == 1.0
    # 0.25 and 1 anomalous: above 0, 4/5 and 2/3; above 0.25, 2/3 and 1/3; above 0.5, 2/3 and 1/2
    masks = np.array([[[False, True], [False, True]]])
    m = compute_metrics([6.0], [1], maps, masks)
    assert abs(m["pixel_f1_21"] - 4 / 5) < TOL and abs(m["pixel_iou_max"] - 2 / 3) < TOL
    # ADer's fourth threshold is the float64 0.15000000000000002. An anomalous pixel right on it
    # is not above it, normal pixels at 0.15 are above 0.1: no threshold separates them, best
    # F1 2/3 and IoU 1/2 (above 0.1, or above 0.2). Thresholds k / 20 (0.15 exactly), or
    # ">=", would separate them and give 1.
    maps = np.array([[[0.0, 0.15, 0.15, 0.15000000000000002, 1.0]]])
    masks = np.array([[[False, False, False, True, True]]])
    m = compute_metrics([1.0], [1], maps, masks)
    assert abs(m["pixel_f1_21"] - 2 / 3) < TOL and abs(m["pixel_iou_max"] - 1 / 2) < TOL
    assert ref_ader_f1_iou_max(maps, masks) == pytest.approx((2 / 3, 1 / 2), abs=TOL)


def test_ader_metrics_in_chunks(monkeypatch):
    scores, labels, maps, masks = make_case(seed=12, n=9, size=16)
    whole = compute_metrics(scores, labels, maps, masks)
    monkeypatch.setattr(evaluation.metrics, "ADER_CHUNK_PIXELS", 3 * 16 * 16 - 1)  # two images at a time, the last alone
    chunked = compute_metrics(scores, labels, maps, masks)
    assert chunked["pixel_f1_21"] == whole["pixel_f1_21"] and chunked["pixel_iou_max"] == whole["pixel_iou_max"]


def test_ader_metrics_edge_cases():
    scores, labels, maps, masks = make_case(seed=13)
    # a constant map: ADer's normalisation is 0/0 = NaN, above no threshold: F1 and IoU 0, as here
    constant = np.full_like(maps, 0.25)
    m = compute_metrics(scores, labels, constant, masks)
    assert ref_ader_f1_iou_max(constant, masks) == (0.0, 0.0)
    assert m["pixel_f1_21"] == 0.0 and m["pixel_iou_max"] == 0.0 and m["mad"] is not None
    # every pixel anomalous: no pixel AUROC, but F1 and IoU are defined (the minimum is above no threshold)
    everything = np.ones_like(masks)
    m = compute_metrics(scores, np.ones_like(labels), maps, everything)
    f1, iou = ref_ader_f1_iou_max(maps, everything)
    assert abs(m["pixel_f1_21"] - f1) < TOL and abs(m["pixel_iou_max"] - iou) < TOL
    assert m["mad"] is None and m["undefined"]["mad"] == "image_auroc is undefined: test set has no normal images"
    # no anomalous pixel: ADer would report 0 (0 / eps); here undefined, like the other pixel metrics
    m = compute_metrics(scores, labels, maps, np.zeros_like(masks))
    assert ref_ader_f1_iou_max(maps, np.zeros_like(masks)) == (0.0, 0.0)
    assert m["pixel_f1_21"] is None and m["pixel_iou_max"] is None and m["mad"] is None
    assert m["undefined"]["pixel_iou_max"] == "masks have no anomalous pixels"
    assert m["undefined"]["mad"] == "pixel_auroc is undefined: masks have no anomalous pixels"
    # image labels only
    m = compute_metrics(scores, labels, maps, None)
    assert m["undefined"]["pixel_iou_max"] == "no ground truth masks: image labels only"
    assert m["undefined"]["mad"] == "pixel_auroc is undefined: no ground truth masks: image labels only"


# ----------------------------------------------------------------------------- the curves kept for plots

def on_polyline(x, y, px, py, tol=1e-9):
    """Whether each point (px, py) lies on the polyline through the vertices (x, y), x non-decreasing."""
    return all(any(x0 - tol <= a <= x1 + tol and min(y0, y1) - tol <= b <= max(y0, y1) + tol
                   and abs((b - y0) * (x1 - x0) - (y1 - y0) * (a - x0)) <= tol
                   for x0, x1, y0, y1 in zip(x[:-1], x[1:], y[:-1], y[1:])) for a, b in zip(px, py))


@pytest.mark.parametrize("levels", [None, 4])  # with and without tied scores
def test_image_curves_are_the_metrics(levels):
    rng = np.random.default_rng(11)
    labels = np.r_[np.zeros(30, dtype=bool), np.ones(20, dtype=bool)]
    scores = rng.standard_normal(50) + labels
    if levels:
        scores = np.round(scores * levels) / levels
    maps, masks = np.zeros((50, 2, 2), np.float32), np.zeros((50, 2, 2), bool)
    metrics, curves = metrics_and_curves(scores, labels, maps, masks)
    fpr, tpr = np.array(curves["image_roc"]["fpr"]), np.array(curves["image_roc"]["tpr"])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert abs(np.trapezoid(tpr, fpr) - metrics["image_auroc"]) < 1e-12
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores)
    assert on_polyline(fpr, tpr, ref_fpr, ref_tpr)  # sklearn's ROC corners lie on ours
    recall, precision = np.array(curves["image_pr"]["recall"]), np.array(curves["image_pr"]["precision"])
    # AP, sklearn's step sum, read off the kept points
    assert abs(np.sum(np.diff(np.r_[0, recall]) * precision) - metrics["image_ap"]) < 1e-12
    # every kept point is one of sklearn's, which has one at every distinct score
    ref_precision, ref_recall, _ = precision_recall_curve(labels, scores)
    kept = set(zip(recall.round(12), precision.round(12)))
    assert kept <= set(zip(ref_recall.round(12), ref_precision.round(12)))


def test_pixel_curves_small_are_exact():
    scores, labels, maps, masks = make_case(seed=12, n=3, size=8)  # under CURVE_POINTS vertices: nothing dropped
    metrics, curves = metrics_and_curves(scores, labels, maps, masks)
    roc, pro = curves["pixel_roc"], curves["pixel_pro"]
    assert abs(np.trapezoid(roc["tpr"], roc["fpr"]) - metrics["pixel_auroc"]) < 1e-12
    assert pro["fpr"][0] == 0 and pro["fpr"][-1] == MAX_FPR and (np.diff(pro["fpr"]) >= 0).all()
    assert abs(np.trapezoid(pro["pro"], pro["fpr"]) / MAX_FPR - metrics["pixel_aupro"]) < 1e-12


def test_pixel_curves_downsampled():
    scores, labels, maps, masks = make_case(seed=13, n=8, size=64)
    metrics, curves = metrics_and_curves(scores, labels, maps, masks)
    ref_fpr, ref_tpr, _ = roc_curve(masks.ravel(), maps.ravel(), drop_intermediate=False)
    for name, x, y in (("pixel_roc", "fpr", "tpr"), ("pixel_pr", "recall", "precision"), ("pixel_pro", "fpr", "pro")):
        assert 100 < len(curves[name][x]) == len(curves[name][y]) <= CURVE_POINTS, name
    roc = curves["pixel_roc"]
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0, 0, 1, 1)
    # the vertices kept are points of the exact curve: on sklearn's full ROC polyline
    assert on_polyline(ref_fpr, ref_tpr, roc["fpr"][::10], roc["tpr"][::10])
    assert abs(np.trapezoid(roc["tpr"], roc["fpr"]) - metrics["pixel_auroc"]) < 2e-3
    pro = curves["pixel_pro"]
    assert pro["fpr"][0] == 0 and pro["fpr"][-1] == MAX_FPR
    assert abs(np.trapezoid(pro["pro"], pro["fpr"]) / MAX_FPR - metrics["pixel_aupro"]) < 2e-3


def test_curves_undefined_without_masks():
    scores, labels, maps, _ = make_case(seed=14)
    metrics, curves = metrics_and_curves(scores, labels, maps, None)
    assert curves["image_roc"] and curves["pixel_roc"] is curves["pixel_pr"] is curves["pixel_pro"] is None
    assert metrics == compute_metrics(scores, labels, maps, None)


def test_reference_rows_are_metrics_we_compute_with_their_definition():
    """Each published row's keys are metrics this project computes; ADer's P-F1-max, over 21 thresholds of the
    min-max normalised maps, sits under pixel_f1_21 (its definition), never under pixel_f1 (every threshold); the
    unified setting's ADer rows are the very rows among the datasets' references."""
    from utils.known_datasets import ADER_SOURCE, ADER_UNIFIED, DATASETS

    for dataset in DATASETS.values():
        for reference in dataset.references:
            assert set(reference.values) <= {*evaluation.metrics.METRIC_NAMES, *evaluation.metrics.SEGMENTATION_NAMES}, (dataset.name, reference.label)
            if reference.source.startswith(ADER_SOURCE):
                assert "pixel_f1_21" in reference.values and "pixel_f1" not in reference.values, reference.label
    assert len(ADER_UNIFIED) == 2 * sum(any(r.source.startswith(ADER_SOURCE) for r in d.references) for d in DATASETS.values())
    for (name, method), reference in ADER_UNIFIED.items():
        assert reference in DATASETS[name].references and reference.label.startswith({"rd": "RD,", "rd++": "RD++,"}[method])
        assert "pixel_f1" not in reference.values and reference.values["pixel_f1_21"] > 0


def test_mvtec_ad_2_rows_average_to_the_published_means():
    """The per-object rows of MVTec AD 2's RD and RD++ (utils/known_datasets.py) average to the means the paper
    publishes, as quoted: AU-PRO_0.05 on TEST_priv / TEST_priv,mix 26.4 / 25.0 (RD) and 27.1 / 25.2 (RD++), SegF1 on
    TEST_priv 18.1 (RD) and 19.2 (RD++), on TEST_priv,mix 16.7 for both; each row names its split."""
    from utils.known_datasets import MVTEC_AD_2

    published = {("RD", "TEST_priv", "pixel_aupro_05"): 26.4, ("RD", "TEST_priv,mix", "pixel_aupro_05"): 25.0,
                 ("RD++", "TEST_priv", "pixel_aupro_05"): 27.1, ("RD++", "TEST_priv,mix", "pixel_aupro_05"): 25.2,
                 ("RD", "TEST_priv", "seg_f1"): 18.1, ("RD++", "TEST_priv", "seg_f1"): 19.2,
                 ("RD", "TEST_priv,mix", "seg_f1"): 16.7, ("RD++", "TEST_priv,mix", "seg_f1"): 16.7}
    found = {}
    for reference in MVTEC_AD_2.references:
        method, split = reference.label.split(", ")[0], reference.label.split(", ")[2].split(" ")[0]
        for metric, values in reference.values.items():
            assert len(values) == len(MVTEC_AD_2.categories)
            found[method, split, metric] = round(100 * sum(values) / len(values), 1)
    assert found == published


# ----------------------------------------------------------------------------- large sets: the histogram path

HISTOGRAM_NAMES = ("pixel_auroc", "pixel_f1", "pixel_ap", "pixel_aupro", "pixel_aupro_05", "pixel_pro_paper",
                   "pixel_f1_21", "pixel_iou_max", "mad")
# Float32 maps, histogram path minus sort path, the largest |difference| over smooth_set seeds 0-7, each at offsets
# 0, +2, -5 and +100 (2.6M pixels each), measured 2026-12-07: pixel_auroc 2.0e-8, pixel_aupro 1.9e-7, pixel_ap
# 1.7e-5, pixel_f1 2.9e-5, pixel_f1_21 3.6e-5, pixel_iou_max 5.0e-5, mad 7.4e-6; pixel_pro_paper 0 (per image, the
# same computation); pixel_aupro_05 over seeds 0-3 at the same offsets, measured 2026-12-07: 2.9e-7. The bounds
# asserted, with margin:
HISTOGRAM_BOUND = {"pixel_auroc": 1e-7, "pixel_aupro": 1e-6, "pixel_aupro_05": 2e-6, "pixel_ap": 1e-4, "pixel_f1": 1e-4,
                   "pixel_f1_21": 1e-4, "pixel_iou_max": 1e-4, "mad": 1e-4, "pixel_pro_paper": 0.0}


def smooth_set(seed, n=40, size=256):
    """Smooth random float32 maps (N, H, W) with 1-3 elliptical regions on two images of three, scored higher
    there: a few million pixels, where the sort path fits."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        if i % 3 == 0:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, size=2)
            ry, rx = rng.integers(3, size // 8, size=2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    maps = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), (0, 4, 4))
    maps = (maps + 0.3 * ndimage.gaussian_filter(masks.astype(np.float64), (0, 2, 2))).astype(np.float32)
    return maps.reshape(n, -1).max(axis=1), masks.any(axis=(1, 2)), maps, masks


def assert_same(a, b, tol=1e-12, curves=None):
    """Metric dicts a and b (and, given (curves_a, curves_b), their curves) agree within tol."""
    assert a["undefined"] == b["undefined"]
    for k in a:
        if k != "undefined":
            assert (a[k] is None) == (b[k] is None) and (a[k] is None or abs(a[k] - b[k]) <= tol), (k, a[k], b[k])
    for name, curve in (curves[0].items() if curves else ()):
        assert (curve is None) == (curves[1][name] is None), name
        for axis in curve or ():
            assert np.allclose(curve[axis], curves[1][name][axis], rtol=0, atol=tol), (name, axis)


@pytest.mark.parametrize("offset", [0.0, 2.0])
def test_histogram_path_close_to_sort_path(offset):
    scores, labels, maps, masks = smooth_set(seed=0)
    maps = maps + np.float32(offset)  # float16 would lose 8x the precision at +2; these bins do not
    exact = compute_metrics(scores, labels, maps, masks, pixel_path="sort")
    binned = compute_metrics(scores, labels, maps, masks, pixel_path="histogram")
    assert exact["undefined"] == binned["undefined"] == {}
    for name in HISTOGRAM_NAMES:
        assert abs(binned[name] - exact[name]) <= HISTOGRAM_BOUND[name], (name, binned[name] - exact[name])
    for name in ("image_auroc", "image_ap", "image_f1", "image_f1_threshold"):
        assert binned[name] == exact[name]


def test_histogram_path_exact_on_float16_maps():
    """One bin per float16 value: the same metrics and curves as the sort path on the same float16 maps, which
    proves the histogram arithmetic exact (only AUPRO's sum runs in another order)."""
    scores, labels, maps, masks = smooth_set(seed=1)
    half = maps.astype(np.float16)
    exact = metrics_and_curves(scores, labels, half, masks, pixel_path="sort")
    binned = metrics_and_curves(scores, labels, half, masks, pixel_path="histogram")
    assert_same(exact[0], binned[0], curves=(exact[1], binned[1]))
    assert 100 < len(binned[1]["pixel_roc"]["fpr"]) <= CURVE_POINTS and binned[1]["pixel_pro"]["fpr"][-1] == MAX_FPR


@pytest.mark.parametrize("case", CASES)
def test_histogram_path_exact_on_float16_cases(case):
    # ties (levels), negative scores, diagonal regions, regions on the border
    scores, labels, maps, masks = make_case(**case)
    half = maps.astype(np.float16)
    exact = metrics_and_curves(scores, labels, half, masks, pixel_path="sort")
    binned = metrics_and_curves(scores, labels, half, masks, pixel_path="histogram")
    assert_same(exact[0], binned[0], curves=(exact[1], binned[1]))


def test_histogram_path_corner_cases():
    scores, labels, maps, masks = make_case(seed=13)
    for dtype in (np.float16, np.float32):
        cases = [
            (scores, labels, np.full_like(maps, 0.25, dtype=dtype), masks),  # a constant map
            (scores, labels, maps.astype(dtype), np.zeros_like(masks)),  # no anomalous pixel
            (scores, np.ones_like(labels), maps.astype(dtype), np.ones_like(masks)),  # every pixel anomalous
            (scores, labels, maps.astype(dtype), None),  # image labels only
            (scores, np.zeros_like(labels), maps.astype(dtype), np.zeros_like(masks)),  # all normal
        ]
        for case in cases:
            exact = metrics_and_curves(*case, pixel_path="sort")
            binned = metrics_and_curves(*case, pixel_path="histogram")
            # float32: one bin per distinct value in these small maps except for the every-pixel-anomalous ADer
            # metrics, which compare a bin's lowest value: within the bound
            assert_same(exact[0], binned[0], tol=1e-12 if dtype == np.float16 else HISTOGRAM_BOUND["pixel_f1_21"],
                        curves=(exact[1], binned[1]))
    constant = compute_metrics(scores, labels, np.full_like(maps, 0.25), masks, pixel_path="histogram")
    assert constant["pixel_auroc"] == 0.5 and constant["pixel_f1_21"] == 0.0 and constant["pixel_iou_max"] == 0.0


def test_histogram_path_signed_zero_and_nan():
    scores, labels, maps, masks = make_case(seed=6, levels=2)
    half = maps.astype(np.float16)
    signed = half.copy()
    signed[(half == 0) & (np.arange(half.size).reshape(half.shape) % 2 == 1)] = -0.0
    assert np.signbit(signed[signed == 0]).any()
    a = compute_metrics(scores, labels, half, masks, pixel_path="histogram")
    b = compute_metrics(scores, labels, signed, masks, pixel_path="histogram")
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    for dtype in (np.float16, np.float32):
        broken = maps.astype(dtype)
        broken[0, 3, 3] = np.nan  # image 0 is normal: caught by the histogram (float16) or the first pass
        with pytest.raises(ValueError, match="NaN"):
            compute_metrics(scores, labels, broken, masks, pixel_path="histogram")


def test_histogram_path_any_magnitude():
    """Float32 maps are binned by their distance to the set's minimum, scaled by a power of two: scaling the maps by
    one changes nothing, and values far outside float16's range (65504) or its precision stay apart."""
    scores, labels, maps, masks = smooth_set(seed=2, n=12, size=128)
    base = compute_metrics(scores, labels, maps, masks, pixel_path="histogram")
    for factor in (2.0 ** 40, 2.0 ** -60):
        scaled = (maps * np.float32(factor)).astype(np.float32)
        m = compute_metrics(scores * factor, labels, scaled, masks, pixel_path="histogram")
        assert m["undefined"] == {} and all(abs(m[k] - base[k]) <= 1e-12 for k in HISTOGRAM_NAMES)
    shifted = maps * np.float32(1e3) + np.float32(1e6)  # float16 could not hold one of these
    exact = compute_metrics(scores, labels, shifted, masks, pixel_path="sort")
    binned = compute_metrics(scores, labels, shifted, masks, pixel_path="histogram")
    for name in HISTOGRAM_NAMES:
        assert abs(binned[name] - exact[name]) <= HISTOGRAM_BOUND[name], name


def test_histogram_path_maps_of_different_sizes():
    """Native-size evaluation: a list of maps of different shapes takes the histogram path. Transposing an image keeps
    its pixels and its 8-connected regions, so a set with some images transposed has the stack's metrics."""
    scores, labels, maps, masks = make_case(seed=0, n=6, size=32)
    maps, masks = maps[:, :, 5:], masks[:, :, 5:]  # 32 x 27
    half = maps.astype(np.float16)
    exact = compute_metrics(scores, labels, half, masks, pixel_path="sort")
    ragged_maps = [m.T if i % 2 else m for i, m in enumerate(half)]
    ragged_masks = [torch.from_numpy(np.ascontiguousarray(k.T if i % 2 else k)) for i, k in enumerate(masks)]
    assert_same(exact, compute_metrics(scores, labels, ragged_maps, ragged_masks))  # picked: different shapes
    with pytest.raises(ValueError):
        compute_metrics(scores, labels, ragged_maps, ragged_masks, pixel_path="sort")  # the sort path needs one stack
    with pytest.raises(ValueError, match="must both be"):
        compute_metrics(scores, labels, ragged_maps, list(masks))  # a mask of another shape than its map


def test_path_picked_by_size(monkeypatch):
    scores, labels, maps, masks = make_case(seed=4, n=30, size=12)
    sort = compute_metrics(scores, labels, maps, masks, pixel_path="sort")
    histogram = compute_metrics(scores, labels, maps, masks, pixel_path="histogram")
    assert any(sort[k] != histogram[k] for k in HISTOGRAM_NAMES)  # float32: the paths tell apart
    assert compute_metrics(scores, labels, maps, masks) == sort  # far below the limit
    monkeypatch.setattr(evaluation.metrics, "SORT_MAX_PIXELS", maps.size)
    assert compute_metrics(scores, labels, torch.from_numpy(maps), masks) == sort
    assert compute_metrics(scores, labels, list(maps), list(masks)) == sort  # a list of one shape is stacked
    monkeypatch.setattr(evaluation.metrics, "SORT_MAX_PIXELS", maps.size - 1)
    assert compute_metrics(scores, labels, maps, masks) == histogram
    assert compute_metrics(scores, labels, torch.from_numpy(maps), torch.from_numpy(masks).float()) == histogram
    with pytest.raises(ValueError):
        compute_metrics(scores, labels, maps, masks, pixel_path="bins")


@pytest.mark.parametrize("case", CASES)
def test_aupro_05_on_the_histogram_path_against_its_definition(case):
    scores, labels, maps, masks = make_case(**case)
    half = maps.astype(np.float16)
    binned = compute_metrics(scores, labels, half, masks, pixel_path="histogram")
    assert abs(binned["pixel_aupro_05"] - ref_aupro(half.astype(np.float64), masks, max_fpr=0.05)) < TOL


# ----------------------------------------------------------------------------- MVTec AD 2's SegF1

def ref_seg_f1(maps, masks, threshold):
    """sklearn's F1 of every pixel of every image pooled, a pixel predicted anomalous when its score >= threshold."""
    pixels = np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps])
    labels = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in masks])
    return f1_score(labels, pixels >= threshold)


@pytest.mark.parametrize("case", CASES)
def test_seg_f1_against_sklearn(case):
    _, _, maps, masks = make_case(**case)
    # thresholds on pixel values (ties fall on the anomalous side), between them, and beyond the range
    for threshold in (*np.quantile(maps, [0.5, 0.9, 0.99]), float(maps[1].max()), float(maps.max()) + 1, float(maps.min())):
        assert abs(seg_f1(maps, masks, threshold) - ref_seg_f1(maps, masks, threshold)) < 1e-12


def test_seg_f1_maps_of_different_sizes_and_torch():
    _, _, maps, masks = make_case(seed=5)
    small = [maps[i, : 20 + i, : 30 - i] for i in range(len(maps))]  # sizes differ, as at native size
    small_masks = [masks[i, : 20 + i, : 30 - i] for i in range(len(maps))]
    threshold = float(np.quantile(maps, 0.95))
    expected = ref_seg_f1(small, small_masks, threshold)
    assert abs(seg_f1(small, small_masks, threshold) - expected) < 1e-12
    tensors = [torch.from_numpy(m) for m in small], [torch.from_numpy(m.astype(np.uint8)) for m in small_masks]
    assert abs(seg_f1(*tensors, threshold) - expected) < 1e-12


def test_seg_f1_by_hand_and_refusals():
    amap = np.array([[0.1, 0.5], [0.5, 0.9]], np.float32)
    mask = np.array([[0, 0], [1, 1]], np.uint8)
    assert seg_f1([amap], [mask], 0.5) == 2 * 2 / (2 * 2 + 1 + 0)  # 0.5 itself is anomalous: TP 2, FP 1, FN 0
    assert seg_f1([amap], [mask], 0.6) == 2 * 1 / (2 * 1 + 0 + 1)
    assert seg_f1([amap], [mask], 1.0) == 0.0
    with pytest.raises(ValueError, match="masks have no anomalous pixels"):
        seg_f1([amap], [np.zeros_like(mask)], 0.5)
    with pytest.raises(ValueError, match="contains NaN"):
        seg_f1([np.full((2, 2), np.nan, np.float32)], [mask], 0.5)
    with pytest.raises(ValueError, match="must contain only 0 and 1"):
        seg_f1([amap], [mask * 255], 0.5)
    with pytest.raises(ValueError, match="threshold nan"):
        seg_f1([amap], [mask], float("nan"))
