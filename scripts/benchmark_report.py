"""
What an evaluation's report costs: the wall time of whole `python test.py` processes with --report=0 and
--report=1 on the same checkpoints, in alternating order.

    $ bash scripts/demo.sh                       # the demo's checkpoints, if they are not there yet
    $ python scripts/benchmark_report.py         # runs/demo/{disc,grid_gray,stripes}/checkpoint.pth, 5 rounds
    $ python scripts/benchmark_report.py --checkpoints=runs/bottle/checkpoint.pth --rounds=3

Every round runs, for each checkpoint, test.py without and with the report, the order swapped every other round
so that neither gains from coming second. Each run writes into a temporary --out_dir, never beside the
checkpoint. Prints every time, then per checkpoint the medians, what the report adds ((with - without) /
without) and the writer's own time (test.py's `wrote ... report.html in` line), and where it ran.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = [f"runs/demo/{name}/checkpoint.pth" for name in ("disc", "grid_gray", "stripes")]

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--checkpoints", nargs="+", default=DEMO, help="default: the demo's three")
parser.add_argument("--rounds", type=int, default=5, help="runs of each setting per checkpoint; medians are compared (default: 5)")
args = parser.parse_args()
for checkpoint in args.checkpoints:
    if not os.path.isfile(checkpoint):
        sys.exit(f"error: checkpoint={checkpoint}: no such file" + (" (bash scripts/demo.sh writes it)" if checkpoint in DEMO else ""))


def run(checkpoint, report, out_dir):
    """(seconds, the writer's own seconds or None, results.json) of one test.py run."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "test.py", f"--checkpoint={checkpoint}", f"--out_dir={out_dir}", f"--report={int(report)}"],
                            cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"error: test.py --checkpoint={checkpoint} --report={int(report)} exited {result.returncode}:\n{result.stderr}")
    writer = re.search(r"report\.html in ([0-9.]+)s", result.stdout)
    folder = next(root for root, _, files in os.walk(out_dir) if "results.json" in files)
    with open(os.path.join(folder, "results.json")) as f:
        return seconds, writer and float(writer.group(1)), json.load(f)


times = {(checkpoint, report): [] for checkpoint in args.checkpoints for report in (False, True)}
writers = {checkpoint: [] for checkpoint in args.checkpoints}
n_images = {}
for i in range(args.rounds):
    for checkpoint in args.checkpoints:
        for report in (False, True) if i % 2 == 0 else (True, False):
            with tempfile.TemporaryDirectory() as out_dir:
                seconds, writer, results = run(checkpoint, report, out_dir)
            times[checkpoint, report].append(seconds)
            n_images[checkpoint], device = results["n_images"], results["device"]
            if writer is not None:
                writers[checkpoint].append(writer)
            print(f"round {i + 1}: {checkpoint} --report={int(report)} {seconds:.2f} s", flush=True)

with open("/proc/cpuinfo") as f:
    flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
print(f"\n{device}; AVX512-BF16: {'yes' if 'avx512_bf16' in flags else 'no'}; {args.rounds} rounds, medians (min-max)")
print("| checkpoint | test images | --report=0 (s) | --report=1 (s) | the report adds | writer's own time (s) |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for checkpoint in args.checkpoints:
    without, with_report = (times[checkpoint, report] for report in (False, True))
    added = statistics.median(with_report) - statistics.median(without)
    print(f"| {checkpoint} | {n_images[checkpoint]} | "
          f"{statistics.median(without):.2f} ({min(without):.2f}-{max(without):.2f}) | "
          f"{statistics.median(with_report):.2f} ({min(with_report):.2f}-{max(with_report):.2f}) | "
          f"{added:.2f} s ({100 * added / statistics.median(without):.1f}%) | {statistics.median(writers[checkpoint]):.2f} |")
