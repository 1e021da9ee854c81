"""
Measure what high resolution buys and costs, on the high-resolution demo category (specks, 768 x 1024, defects of
6-24 pixels; utils/demo_data.py): the figures of docs/high_resolution.md.

    $ python scripts/bench_high_resolution.py                          # all three parts, a few minutes on 2 cores
    $ python scripts/bench_high_resolution.py --parts=memory --sizes=512,1024,2048
    $ python scripts/bench_high_resolution.py --parts=scoring --scoring_size=2048 --scoring_backbone=wide_resnet50_2

Parts:
  table    train.py twice on the same images, squeezed (--image_size=256) and on crops at the images' own size
           (--image_size=768,1024 --crop_size=256), then test.py --eval_size=native on each: pixel AUROC, AUPRO up to
           FPR 0.3 and 0.05, image AUROC, training seconds per epoch (loss.csv) and peak memory of the training
           process, inference seconds per image (results.json). Then the crop model's maps blurred with sigma 4 (the
           rule) and with sigma 4 x 768/256 = 12 (sigma scaled with the size), scored the same way.
  memory   training peak memory at image sizes --sizes (squares) with --crop_size 256, two epochs each: it must stay
           flat. The images are streamed from the store (--in_memory=0), so that memory holds no image set.
  scoring  one image of --scoring_size squared scored whole, in one pass, by --scoring_backbone: the peak memory of
           the scoring beyond the loaded networks, and its seconds.
Peak memory is the resident-set high-water mark of a child Python that runs the command (VmHWM of /proc/self/status,
read as it ends: ru_maxrss would carry over the peak of this process, which the child is started from).
The teacher is resnet18 with random weights (--weights=none, as the demo: nothing to download); say so with the
figures, and the CPU (printed first).
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from utils.seeding import describe_device  # noqa: E402

# a child Python that runs a script and prints its peak resident memory when it ends, however it ends
PEAK = ("import runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nfinally:\n"
        "    kb = next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
        "    print(f'peak_rss_bytes={int(kb) * 1024}', flush=True)")
TRAIN = ["--category=specks", "--backbone=resnet18", "--weights=none", "--batch_size=8", "--seed=0", "--device=cpu"]


def run_peak(script, *args):
    """Run python <script> <args> from the repo root; (peak resident bytes, stdout)."""
    result = subprocess.run([sys.executable, "-c", PEAK, script, *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    peak = next(int(line.split("=", 1)[1]) for line in result.stdout.splitlines() if line.startswith("peak_rss_bytes="))
    return peak, result.stdout


def seconds_per_epoch(run_folder):
    """The mean of loss.csv's seconds after the first epoch (which also builds the store)."""
    with open(os.path.join(run_folder, "loss.csv")) as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    return sum(seconds[1:]) / max(len(seconds) - 1, 1)


def blur_comparison(checkpoint, data_root, sigmas):
    """{sigma: metrics} of the checkpoint's test maps blurred with each sigma, at the masks' own size."""
    import torch

    from dataset import load_native_masks, load_test_set
    from evaluation.metrics import compute_metrics
    from model.anomaly_map import anomaly_map, resize_map
    from model.checkpoint import load_checkpoint, load_network, resolve_settings
    from model.encoder import normalize

    ckpt = load_checkpoint(checkpoint)
    settings = resolve_settings(ckpt, checkpoint, {"data_root": data_root})
    network = load_network(ckpt, settings, torch.device("cpu"), checkpoint)
    images, _, labels, paths = load_test_set(data_root, "specks", settings["image_size"])
    masks = load_native_masks(data_root, "specks", paths)
    found = {}
    with torch.inference_mode():
        features = [network(normalize(images[i:i + 4])) for i in range(0, len(images), 4)]
        for sigma in sigmas:
            maps = torch.cat([anomaly_map(t, s, tuple(images.shape[-2:]), sigma=sigma) for t, s in features])  # (N,H,W)
            native = [resize_map(m, mask.shape) for m, mask in zip(maps, masks)]
            found[sigma] = compute_metrics(maps.flatten(1).amax(1), labels, native, masks)
    return found


def table(args, work):
    from utils.demo_data import make_category

    data_root = os.path.join(work, "data")
    make_category(data_root, "specks", n_train=args.n_train, seed=0)
    rows = {}
    for name, sizes in (("squeezed, image_size=256", ["--image_size=256"]),
                        ("crops, image_size=768,1024 crop_size=256", ["--image_size=768,1024", "--crop_size=256"])):
        out_dir = os.path.join(work, name.split(",")[0])
        peak, _ = run_peak("train.py", f"--data_root={data_root}", f"--out_dir={out_dir}", f"--cache_dir={work}/cache",
                           f"--epochs={args.epochs}", *TRAIN, *sizes)
        checkpoint = os.path.join(out_dir, "specks", "checkpoint.pth")
        run_peak("test.py", f"--checkpoint={checkpoint}", "--eval_size=native", "--report=0", "--batch_size=4")
        with open(os.path.join(out_dir, "specks", "results.json")) as f:
            results = json.load(f)
        rows[name] = results, seconds_per_epoch(os.path.join(out_dir, "specks")), peak
    print(f"\n{args.n_train} training images, {args.epochs} epochs, batch 8; evaluated at the masks' own size (768 x 1024)")
    print("| model | pixel AUROC | AUPRO (0.3) | AUPRO (0.05) | image AUROC | train s/epoch | train peak GB | inference s/image |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (r, epoch_seconds, peak) in rows.items():
        print(f"| {name} | {r['pixel_auroc']:.3f} | {r['pixel_aupro']:.3f} | {r['pixel_aupro_05']:.3f} | {r['image_auroc']:.3f} "
              f"| {epoch_seconds:.1f} | {peak / 1e9:.2f} | {r['seconds_per_image']:.3f} |")
    sigmas = (4.0, 4.0 * 768 / 256)
    blurred = blur_comparison(os.path.join(work, "crops", "specks", "checkpoint.pth"), data_root, sigmas)
    print("\nthe crop model's maps blurred with each sigma, evaluated the same way")
    print("| sigma | pixel AUROC | AUPRO (0.3) | AUPRO (0.05) | image AUROC |")
    print("|---|---|---|---|---|")
    for sigma, m in blurred.items():
        print(f"| {sigma:g} | {m['pixel_auroc']:.3f} | {m['pixel_aupro']:.3f} | {m['pixel_aupro_05']:.3f} | {m['image_auroc']:.3f} |")


def memory(args, work):
    from utils.demo_data import make_category

    print(f"\ntraining peak memory, crop_size=256, two epochs of {args.memory_images} images streamed from the store (in_memory=0); s/epoch: the second's")
    print("| image_size | train peak GB | s/epoch |")
    print("|---|---|---|")
    for size in args.sizes:
        data_root = os.path.join(work, f"memory_{size}")
        make_category(data_root, "specks", size=size, n_train=args.memory_images, n_test_good=1, n_test_defect=1, seed=0)
        out_dir = os.path.join(work, f"memory_runs_{size}")
        peak, _ = run_peak("train.py", f"--data_root={data_root}", f"--out_dir={out_dir}", f"--cache_dir={work}/cache", "--epochs=2",
                           "--in_memory=0", f"--image_size={size}", "--crop_size=256", *TRAIN)
        print(f"| {size} | {peak / 1e9:.2f} | {seconds_per_epoch(os.path.join(out_dir, 'specks')):.1f} |")


SCORING = """
import sys, time
import torch
from model import OCBE, Decoder, build_encoder
from model.scoring import inference_network, predict
backbone, size = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
network = inference_network(build_encoder(backbone, "none", 0), OCBE(backbone), Decoder(backbone))
image = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
status = lambda key: 1024 * int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(key)))
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the high-water mark starts again from the resident set now
t0 = time.perf_counter()
maps, scores = predict(network, image, batch_size=1)
seconds = time.perf_counter() - t0
peak = status("VmHWM:")
print(f"| {backbone} | {size} x {size} | {(peak - before) / 1e9:.2f} | {peak / 1e9:.2f} | {seconds:.1f} |")
"""


def scoring(args):
    print(f"\none {args.scoring_size} x {args.scoring_size} image scored whole, in one pass (random weights)")
    print("| backbone | image | scoring peak beyond the networks GB | resident peak while scoring GB | seconds |")
    print("|---|---|---|---|---|")
    result = subprocess.run([sys.executable, "-c", SCORING, args.scoring_backbone, str(args.scoring_size)], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    print(result.stdout.strip())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--parts", default="table,memory,scoring", help="comma-separated: table, memory, scoring")
    p.add_argument("--n_train", type=int, default=40, help="table: training images")
    p.add_argument("--epochs", type=int, default=10, help="table: epochs of each model")
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[512, 1024, 2048], help="memory: image sizes")
    p.add_argument("--memory_images", type=int, default=16, help="memory: training images")
    p.add_argument("--scoring_size", type=int, default=2048, help="scoring: the image side")
    p.add_argument("--scoring_backbone", default="wide_resnet50_2", help="scoring: the teacher")
    args = p.parse_args()
    parts = args.parts.split(",")
    print(f"{describe_device('cpu')}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory() as work:
        if "table" in parts:
            table(args, work)
        if "memory" in parts:
            memory(args, work)
    if "scoring" in parts:
        scoring(args)


if __name__ == "__main__":
    main()
