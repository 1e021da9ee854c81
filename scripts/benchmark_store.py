"""
Training data larger than memory: train.py's peak memory with the images streamed from the store (in_memory=0)
against kept in memory (in_memory=1), and the store reader's speed against the training step's, on generated images.

    $ python scripts/benchmark_store.py                                     # 1,000 and 5,000 images of 256x256, CPU
    $ python scripts/benchmark_store.py --images=40,80 --image_size=64      # a quick check that it runs
    $ python scripts/benchmark_store.py --device=cuda --backbone=wide_resnet50_2 --images=5000

For each number of images N it writes N generated PNGs (smooth random colour fields, in a category folder of a
scratch data_root), then:
- decodes them into the store (utils/image_store.py, as train.py's first run does) and reports images/s;
- reads one epoch in shuffled batches through dataset.StreamedImages, as train.py's loop does with in_memory=0, on one
  thread: cold (the store's pages dropped from the page cache with posix_fadvise, so the disk serves them) and warm
  (the page cache serves them), in images/s per core;
- runs `train.py --epochs=1 --cache_teacher=0` twice, with --in_memory=0 and --in_memory=1, each in a fresh process,
  and reports its peak resident memory (getrusage ru_maxrss of that child) and its epoch's images/s (from the
  epoch line it prints). With in_memory=0 the peak should not grow with N (only the images' list and the shuffle
  order do, a few hundred bytes per image); with in_memory=1 it grows by 3 x S x S bytes per image.
The step's images/s and the reader's compare directly: the reader must be many times faster than the step, or the
loop would wait on it (train.py reads each batch just before its step, without a prefetch thread).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dataset import load_train_set  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--images", default="1000,5000", help="comma list of numbers of training images (default: 1000,5000)")
parser.add_argument("--image_size", type=int, default=256, help="default: 256")
parser.add_argument("--batch_size", type=int, default=16, help="default: 16")
parser.add_argument("--backbone", default="resnet18", help="train.py's teacher for the step's speed (default: resnet18, random weights)")
parser.add_argument("--device", default="cpu", help="train.py's device (default: cpu)")
parser.add_argument("--work_dir", default="", help="where the images and the store go (default: a temporary folder, removed)")
args = parser.parse_args()


def make_images(folder, n, size, seed=0):
    """n PNGs of smooth random colour fields, size x size, as a category's train/good."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # upsampled: compresses and decodes like a photo
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC).save(os.path.join(folder, f"{i:05d}.png"))


def read_epoch(images, batch_size, seed=0):
    """Seconds to read every image once in shuffled batches, as train.py's loop indexes them."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    for i in range(0, len(images), batch_size):
        images[order[i:i + batch_size]]
    return time.perf_counter() - t0


def train_run(data_root, cache_dir, out_dir, in_memory):
    """(peak RSS in bytes, images/s of the epoch) of a train.py process."""
    command = [sys.executable, os.path.join(ROOT, "train.py"), f"--data_root={data_root}", "--category=gen",
               f"--out_dir={out_dir}", "--overwrite=1", "--epochs=1", f"--batch_size={args.batch_size}",
               f"--image_size={args.image_size}", f"--backbone={args.backbone}", "--weights=none",
               f"--device={args.device}", f"--in_memory={in_memory}", "--cache_teacher=0", f"--cache_dir={cache_dir}",
               "--save_minutes=1000"]
    # a fresh process measures it: ru_maxrss of RUSAGE_CHILDREN is the largest child this one has waited for
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(r.stdout + r.stderr); print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    result = subprocess.run([sys.executable, "-c", measure, *command], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"train.py failed:\n{result.stdout}\n{result.stderr}")
    max_rss = int(re.search(r"MAXRSS (\d+)", result.stdout).group(1)) * 1024  # kB on Linux
    epoch = re.search(r"epoch 1/1 \| loss \S+ \| ([\d.]+)s", result.stdout)
    n_images = int(re.search(r": (\d+) images", result.stdout).group(1))
    return max_rss, n_images / float(epoch.group(1))  # every image once per epoch


def main():
    counts = [int(n) for n in args.images.split(",")]
    torch.set_num_threads(1)  # the reader's figure is per core
    print(f"{args.image_size}x{args.image_size} images, batch {args.batch_size}; train.py: {args.backbone} (random) on {args.device}, "
          f"epoch 1, cache_teacher=0 | torch {torch.__version__}, {os.cpu_count()} CPUs")
    header = ("images", "store GiB", "decode img/s", "read cold img/s/core", "read warm img/s/core",
              "peak RSS in_memory=0", "peak RSS in_memory=1", "step img/s in_memory=0", "step img/s in_memory=1")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work_dir or None) as work:
        for n in counts:
            data_root, cache_dir = os.path.join(work, f"data_{n}"), os.path.join(work, "cache")
            make_images(os.path.join(data_root, "gen", "train", "good"), n, args.image_size)
            t0 = time.perf_counter()
            images = load_train_set(data_root, ["gen"], args.image_size, in_memory="0", cache_dir=cache_dir, device=torch.device("cpu"), label="gen")
            decode = n / (time.perf_counter() - t0)
            os.posix_fadvise(images.store.fd, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache: the disk serves it
            cold = n / read_epoch(images, args.batch_size)
            warm = n / read_epoch(images, args.batch_size, seed=1)
            size = os.path.getsize(images.store.path)
            streamed_rss, streamed_speed = train_run(data_root, cache_dir, os.path.join(work, "runs"), 0)
            memory_rss, memory_speed = train_run(data_root, cache_dir, os.path.join(work, "runs"), 1)
            rows.append((f"{n}", f"{size / 2**30:.2f}", f"{decode:.0f}", f"{cold:.0f}", f"{warm:.0f}",
                         f"{streamed_rss / 2**20:.0f} MiB", f"{memory_rss / 2**20:.0f} MiB", f"{streamed_speed:.1f}", f"{memory_speed:.1f}"))
            images.store.close()
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
