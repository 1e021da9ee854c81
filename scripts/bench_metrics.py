"""
Benchmark evaluation/metrics.compute_metrics against sklearn's roc_auc_score on the same pixels.

Random smooth maps with several elliptical/rectangular anomalous regions per image (about
a third of the images normal), at MVTec-like test-set scale by default.
Run from the repo root: python scripts/bench_metrics.py [--n=100] [--size=256] [--seed=0] [--repeats=3]
"""

import argparse
import os
import sys
import time

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluation.metrics import compute_metrics  # noqa: E402


def best_time(fn, repeats):
    """Fastest of `repeats` calls: other processes sharing the cores only ever add time."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times[0], result


parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=100)
parser.add_argument("--size", type=int, default=256)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()

rng = np.random.default_rng(args.seed)
n, size = args.n, args.size
yy, xx = np.mgrid[:size, :size]
masks = np.zeros((n, size, size), dtype=bool)
for i in range(n):
    if rng.random() < 1 / 3:
        continue
    for _ in range(rng.integers(1, 5)):
        cy, cx = rng.integers(0, size, size=2)
        ry, rx = rng.integers(2, size // 8, size=2)
        if rng.random() < 0.5:
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            masks[i, max(cy - ry, 0):cy + ry, max(cx - rx, 0):cx + rx] = True
noise = rng.standard_normal((n, size, size)).astype(np.float32)
maps = ndimage.gaussian_filter(noise, (0, 4, 4)) + 0.3 * ndimage.gaussian_filter(masks.astype(np.float32), (0, 2, 2))
labels = masks.any(axis=(1, 2))
scores = maps.reshape(n, -1).max(axis=1)

# The first call in a process can also pay one-off costs (fresh memory pages, caches),
# so it is reported next to the best of a few calls.
t_ours, t_ours_first, metrics = best_time(lambda: compute_metrics(scores, labels, maps, masks), args.repeats)
t_sklearn, t_sklearn_first, sk_auroc = best_time(lambda: roc_auc_score(masks.ravel(), maps.ravel()), args.repeats)

print(f"{n} maps of {size}x{size} ({maps.size / 1e6:.1f}M pixels, {labels.sum()} anomalous images), "
      f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
print(f"compute_metrics (all metrics): {t_ours:.3f} s best of {args.repeats} (first call {t_ours_first:.3f} s)")
print(f"sklearn roc_auc_score alone:   {t_sklearn:.3f} s best of {args.repeats} (first call {t_sklearn_first:.3f} s)")
print(f"ratio ours / sklearn:          {t_ours / t_sklearn:.3f}")
print(f"pixel_auroc - sklearn:         {metrics['pixel_auroc'] - sk_auroc:.2e}")
for name, value in metrics.items():
    print(f"  {name:20s} {value}")
