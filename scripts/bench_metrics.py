"""
Benchmark evaluation/metrics.compute_metrics: wall time, peak memory beyond the maps and masks, and (on sets small
enough) sklearn's roc_auc_score on the same pixels.

Two generators, both image by image (the set is never built twice in memory):
  --regions=several  (default) random smooth maps with 1-4 elliptical/rectangular anomalous regions per image, about
                     a third of the images normal, at MVTec-like test-set scale by default (100 maps of 256x256)
  --regions=disc     uniform random maps, one disc-shaped region per anomalous image (scored higher on average),
                     about a third of the images normal: the "High resolution" issue's measurement, e.g.
                     python scripts/bench_metrics.py --n=200 --size=2048 --regions=disc --dtype=float16 --repeats=1
--dtype: the maps' dtype (float32 or float16); masks are bool. Sets of more than SORT_MAX_PIXELS pixels take the
histogram path of evaluation/metrics.py, the others the exact sort path (printed). sklearn runs only up to
--sklearn_max_pixels pixels (it sorts every pixel in float64: about 40 bytes a pixel).
Memory: the resident set size before the call, and its peak during the call (the kernel's high-water mark, reset
just before through /proc/self/clear_refs; if that is not writable, ru_maxrss, which then also holds the generation).
Run from the repo root: python scripts/bench_metrics.py [--n=100] [--size=256] [--seed=0] [--repeats=3]
"""

import argparse
import os
import resource
import sys
import time

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluation.metrics import SORT_MAX_PIXELS, compute_metrics  # noqa: E402


def best_time(fn, repeats):
    """Fastest of `repeats` calls: other processes sharing the cores only ever add time."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times[0], result


def several_regions(rng, n, size, dtype):
    """Today's default set, drawn in the same order as before (the same maps and masks at the same seed)."""
    yy, xx = np.ogrid[:size, :size]
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
    maps = np.empty((n, size, size), dtype=dtype)
    for i in range(n):  # gaussian_filter with sigma 0 across images filters each image on its own
        noise = rng.standard_normal((size, size)).astype(np.float32)
        maps[i] = ndimage.gaussian_filter(noise, 4) + 0.3 * ndimage.gaussian_filter(masks[i].astype(np.float32), 2)
    return maps, masks


def one_disc(rng, n, size, dtype):
    yy, xx = np.ogrid[:size, :size]
    maps = np.empty((n, size, size), dtype=dtype)
    masks = np.empty((n, size, size), dtype=bool)  # every page written below, so resident before the call
    for i in range(n):
        amap = rng.random((size, size), dtype=np.float32)
        masks[i] = False
        if rng.random() >= 1 / 3:
            cy, cx = rng.integers(0, size, size=2)
            r = rng.integers(max(size // 32, 1), max(size // 8, 2))
            masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            amap[masks[i]] += 0.5 * rng.random(int(masks[i].sum()), dtype=np.float32)
        maps[i] = amap
    return maps, masks


def rss_bytes(field):
    """VmRSS or VmHWM of this process from /proc/self/status, in bytes (None where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak():
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS; False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_line():
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    simd = f"AVX512 ({', '.join(avx512)})" if avx512 else ("no AVX512, AVX2" if "avx2" in flags else "no AVX512")
    return f"{model}, {os.cpu_count()} cores, {simd}"


parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=100)
parser.add_argument("--size", type=int, default=256)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--regions", choices=("several", "disc"), default="several")
parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
parser.add_argument("--sklearn_max_pixels", type=int, default=50_000_000)
args = parser.parse_args()

rng = np.random.default_rng(args.seed)
n, size = args.n, args.size
maps, masks = (several_regions if args.regions == "several" else one_disc)(rng, n, size, np.dtype(args.dtype))
labels = masks.any(axis=(1, 2))
scores = np.array([float(m.max()) for m in maps])
path = "sort" if maps.size <= SORT_MAX_PIXELS else "histogram"

print(f"{n} maps of {size}x{size} ({maps.size / 1e6:.1f}M pixels, {labels.sum()} anomalous images, "
      f"{args.regions} regions, {args.dtype} maps: {maps.nbytes / 1e9:.2f} GB, bool masks: {masks.nbytes / 1e9:.2f} GB)"
      f" -> {path} path (SORT_MAX_PIXELS {SORT_MAX_PIXELS:,})")
print(f"CPU: {cpu_line()}")
print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

rss_before = rss_bytes("VmRSS")
exact_peak = reset_peak()
# The first call in a process can also pay one-off costs (fresh memory pages, caches),
# so it is reported next to the best of a few calls.
t_ours, t_ours_first, metrics = best_time(lambda: compute_metrics(scores, labels, maps, masks), args.repeats)
peak = rss_bytes("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(f"compute_metrics (all metrics): {t_ours:.3f} s best of {args.repeats} (first call {t_ours_first:.3f} s)")
if rss_before is not None and peak is not None:
    print(f"peak memory beyond the maps and masks: {(peak - rss_before) / 1e9:.3f} GB "
          f"(RSS {rss_before / 1e9:.2f} GB before the call, peak {peak / 1e9:.2f} GB during it"
          f"{'' if exact_peak else '; ru_maxrss: the peak includes the generation'})")
print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

if maps.size <= args.sklearn_max_pixels:
    from sklearn.metrics import roc_auc_score

    t_sklearn, t_sklearn_first, sk_auroc = best_time(lambda: roc_auc_score(masks.ravel(), maps.ravel()), args.repeats)
    print(f"sklearn roc_auc_score alone:   {t_sklearn:.3f} s best of {args.repeats} "
          f"(first call {t_sklearn_first:.3f} s)")
    print(f"ratio ours / sklearn:          {t_ours / t_sklearn:.3f}")
    print(f"pixel_auroc - sklearn:         {metrics['pixel_auroc'] - sk_auroc:.2e}")
else:
    print(f"sklearn skipped: {maps.size:,} pixels > --sklearn_max_pixels={args.sklearn_max_pixels:,}")
for name, value in metrics.items():
    print(f"  {name:20s} {value}")
