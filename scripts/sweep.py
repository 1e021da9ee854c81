"""
Train and test Reverse Distillation (RD, or RD++ with --method=rd++) on every category of a dataset (MVTec AD, VisA,
...), then tabulate the results.

    $ bash scripts/run_all_mvtec.sh                                        # the 15 categories under data/mvtec
    $ python scripts/sweep.py --categories=bottle,screw --epochs=50        # any train.py / test.py --name=value
    $ python scripts/sweep.py --gpus=0,1 --force=1                         # two GPUs; retrain what is finished
    $ python scripts/sweep.py --table_only=1 --out_dir=runs --epochs=50    # rebuild runs/results.md, run nothing
    $ python scripts/sweep.py --method=rd++ --official_epochs=1 --out_dir=runs_rdpp   # RD++ with its official epochs

Per category C: `python train.py --category=C --resume=1 ...`, then `python test.py --checkpoint=<out_dir>/C/checkpoint.pth
...`, both logged to <out_dir>/C/log.txt. A category whose results.json was trained with the requested settings is
skipped; an interrupted one resumes from its checkpoint; one that fails is reported and the others go on. With several
GPUs one category runs per GPU at a time. <out_dir>/results.md is rebuilt from the per-category files after every
category. Exit status: 0 all done, 1 some category failed, 2 bad settings, 128+signal when interrupted (Ctrl-C).
"""

import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import test as test_script  # noqa: E402  (importing either script only defines its settings; nothing runs)
import train as train_script  # noqa: E402
from known_datasets import dataset_for  # noqa: E402  (scripts/, this script's folder)
from report import write_sweep_report  # noqa: E402
from utils.config import ConfigError, apply_overrides, run_cli  # noqa: E402
from utils.files import atomic_write_json, atomic_write_text  # noqa: E402
from utils.io import ckpt_path, run_dir  # noqa: E402
from utils.rdpp import OFFICIAL_EPOCHS  # noqa: E402

# -----------------------------------------------------------------------------
categories = ""  # comma-separated folder names under data_root; default: the known dataset's categories found there
gpus = ""  # comma-separated GPU ids, one category per id at a time (an id may repeat); default: every visible GPU
force = False  # retrain categories that have results (train.py --overwrite=1) instead of skipping or resuming them
table_only = False  # only rebuild <out_dir>/results.md from the finished categories; run nothing
# -----------------------------------------------------------------------------
sweep_keys = ["categories", "gpus", "force", "table_only"]
# settings the sweep gives each run itself
SET_BY_SWEEP = {
    "category": "pick categories with --categories=a,b",
    "checkpoint": "the sweep tests <out_dir>/<category>/checkpoint.pth",
    "resume": "the sweep always resumes an interrupted category; --force=1 retrains from scratch",
    "overwrite": "the sweep always resumes an interrupted category; --force=1 retrains from scratch",
}
# a results.json counts as done when its training config has the requested values of these
COMPARED_KEYS = train_script.resume_keys + ["epochs", "method"]
METHOD_LABELS = {"rd": "RD", "rd++": "RD++"}

# The seed's order. Reference numbers are from SPEC.md section 6 (MVTec AD, wide_resnet50_2).
MVTEC = ("carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut", "metal_nut",
         "pill", "screw", "toothbrush", "transistor", "zipper")  # = known_datasets.DATASETS["mvtec_ad"].categories
ANOMALIB_LABEL = "anomalib (seed 42, batch 16)"
ANOMALIB = {
    "image_auroc": (.984, 1.000, 1.000, 1.000, .997, 1.000, .966, .974, 1.000, 1.000, .972, .985, .953, .970, .978),
    "pixel_auroc": (.988, .992, .991, .954, .947, .984, .964, .987, .988, .969, .975, .996, .991, .893, .984),
    "image_f1": (.977, 1.000, 1.000, .994, .992, .984, .930, .982, 1.000, 1.000, .967, .963, .952, .927, .975),
}
MEAN_ONLY = {  # (label, {metric: 15-category mean})
    "paper": ("paper (Deng & Li, CVPR 2022), 15-category mean", {"image_auroc": .985, "pixel_auroc": .978}),
    "paper_pro": ("paper's PRO (per-image, official script; not AUPRO), 15-category mean", {"pixel_aupro": .939}),
    "rdpp": ("RD++ (CVPR 2023), 15-category mean, each category at its epoch of best test score", {"image_auroc": .9944, "pixel_auroc": .9825, "pixel_aupro": .9499}),
}
TABLES = [("Image-Level AUC", "image_auroc"), ("Pixel-Level AUC", "pixel_auroc"), ("Image F1 Score", "image_f1"),
          ("AUPRO", "pixel_aupro")]


def as_json(value):
    """The value as it reads back from a JSON file (tuples become lists), so saved and requested values compare."""
    return json.loads(json.dumps(value))


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):  # missing, or half-written by a run killed outside atomic_write
        return None


def requested_config(train_config, category):
    keys = COMPARED_KEYS + (train_script.rdpp_resume_keys if train_config["method"] == "rd++" else [])
    requested = {k: as_json(category if k == "category" else train_config[k]) for k in keys}
    if train_config["official_epochs"] and category in OFFICIAL_EPOCHS:  # train.py trains (and records) these
        requested["epochs"] = OFFICIAL_EPOCHS[category]
    return requested


def differences(trained, requested):
    """'name=trained (requested value)' for each requested setting a run was not made with."""
    trained = {"method": "rd", **(trained or {})}  # runs from before RD++ was added are RD's
    return [f"{k}={trained.get(k)!r} (requested {v!r})" for k, v in requested.items() if as_json(trained.get(k)) != v]


def category_state(out_dir, category, requested):
    """(state, results, sweep_info): state is done | failed | running | interrupted | other settings | not run.
    The latest sweep attempt has the last word: a category being redone or that failed shows no older numbers."""
    folder = run_dir(out_dir, category)
    info = read_json(os.path.join(folder, "sweep.json"))
    results = read_json(os.path.join(folder, "results.json"))
    if info and not differences(info.get("config"), requested) and info.get("status") != "done":
        return info.get("status"), results, info
    if results and not differences(results.get("train_config"), requested):
        return "done", results, info
    return ("other settings" if results else "not run"), results, info


def ordered(names):
    """The known dataset's order for its categories (MVTec AD: the seed's), then any others sorted."""
    known = dataset_for(names)
    first = [c for c in known.categories if c in names] if known else []
    return first + sorted(set(names) - set(first))


def title(category):
    return category.replace("_", " ").title()


# -----------------------------------------------------------------------------
# the results table

def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " :---: |" * (len(header) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def average_cell(values, n_columns):
    if not values:
        return "-"
    mean = f"{sum(values) / len(values):.3f}"
    return mean if len(values) == n_columns else f"{mean} ({len(values)}/{n_columns})"


def our_row(label, key, columns, states):
    cells, values = [], []
    for c in columns:
        state, results, _ = states[c]
        value = results.get(key) if state == "done" else None
        cells.append(f"{value:.3f}" if value is not None else "n/a" if state == "done" else "failed" if state == "failed" else "-")
        if value is not None:
            values.append(value)
    return [label, average_cell(values, len(columns)), *cells]


def metric_rows(key, columns, states, backbone, method):
    """Our row for one metric, then the reference rows (MVTec categories only)."""
    rows = [our_row(f"ours, {METHOD_LABELS[method]} ({backbone})", key, columns, states)]
    if key == "pixel_aupro" and any(states[c][0] == "done" and states[c][1].get("pixel_pro_paper") is not None for c in columns):
        rows.append(our_row("ours, the official script's per-image PRO (compare with the paper's PRO)", "pixel_pro_paper", columns, states))
    known = dataset_for(columns)
    for label, means in known.references if known else ():
        if key in means:
            rows.append([label, f"{means[key]:.3f}", *([""] * len(columns))])
    mvtec_columns = [c for c in columns if c in MVTEC]
    if not mvtec_columns:
        return rows
    if key in ANOMALIB:
        reference = dict(zip(MVTEC, ANOMALIB[key]))
        # averaged over the categories our Avg counts, so the two Avg cells compare like with like
        counted = [c for c in mvtec_columns if states[c][0] == "done" and states[c][1].get(key) is not None]
        averaged = counted or mvtec_columns
        mean = sum(reference[c] for c in averaged) / len(averaged)
        rows.append([ANOMALIB_LABEL, f"{mean:.3f}", *(f"{reference[c]:.3f}" if c in MVTEC else "" for c in columns)])
    for label, means in MEAN_ONLY.values():
        if key in means:
            rows.append([label, f"{means[key]:.3f}", *([""] * len(columns))])
    return rows


def markdown(blocks):
    """results.md's text from the document's blocks (see sweep_document)."""
    lines = []
    for kind, *content in blocks:
        if kind == "table":
            lines += markdown_table(*content[:2])
        elif kind == "ul":
            lines += [f"- {item}" for item in content[0]]
        else:
            lines.append({"h1": "# ", "h2": "## ", "p": ""}[kind] + content[0])
        lines.append("")
    return "\n".join(lines)


def build_table(out_dir, data_root, requested_categories, train_config):
    """results.md's text, from <out_dir>/<category>/{results,sweep}.json alone."""
    return markdown(sweep_document(out_dir, data_root, requested_categories, train_config))


def sweep_document(out_dir, data_root, requested_categories, train_config):
    """The sweep's tables as blocks, ('h1' | 'h2' | 'p', text), ('ul', [items]) or ('table', header, rows, categories
    of the columns), from <out_dir>/<category>/{results,sweep}.json alone: results.md (markdown) and report.html
    (report.write_sweep_report, each cell of a category's column linking to its report) are written from them."""
    states = {c: category_state(out_dir, c, requested_config(train_config, c)) for c in requested_categories}
    # also categories made with the same settings by other sweeps into this out_dir (e.g. the jobs of a Slurm array)
    if os.path.isdir(out_dir):
        for name in sorted(os.listdir(out_dir)):
            if name not in states and os.path.isdir(os.path.join(out_dir, name)):
                state = category_state(out_dir, name, requested_config(train_config, name))
                if state[0] not in ("not run", "other settings"):
                    states[name] = state
    columns = ordered(states)
    known = dataset_for(columns)
    header = ["", "Avg", *(title(c) for c in columns)]
    linked = [None, None, *columns]  # the category of each column
    cfg = train_config
    counts = {s: sum(states[c][0] == s for c in columns) for s in ("done", "failed", "running", "interrupted")}
    blocks = [("h1", f"{'Reverse Distillation' if cfg['method'] == 'rd' else 'RD++ (Revisiting Reverse Distillation)'} on {data_root}"
               + (f" ({known.name})" if known else "")),
              ("p", "Trained with " + ", ".join(f"{k} {tuple(v) if isinstance(v, list) else v}" for k, v in requested_config(cfg, "").items() if k != "category")
               + ". "
               f"{counts['done']} of {len(columns)} categories done"
               + "".join(f", {n} {s}" for s, n in counts.items() if n and s != "done")
               + f". Per category: {out_dir}/<category>/ (results.json, log.txt, report.html). "
               f"Written by scripts/sweep.py at {datetime.now():%Y-%m-%d %H:%M:%S}.")]
    for name, key in TABLES:
        blocks += [("h2", name), ("table", header, metric_rows(key, columns, states, cfg["backbone"], cfg["method"]), linked)]
        if key == "pixel_auroc" and any(c in MVTEC for c in columns):
            blocks.append(("p", "anomalib's published table prints Avg 0.969 for pixel AUROC, but its 15 per-category values "
                           "average 0.9735; its Avg here is the mean of the values in its row."))
    if any(c in MVTEC for c in columns):
        blocks.append(("p", "Reference rows: SPEC.md section 6. anomalib's Avg covers the same categories as ours; the paper and "
                       "RD++ report only 15-category means. Our rows come from test.py's results.json."))
    elif known:
        blocks.append(("p", f"Reference rows: {known.source}." if known.references else
                       f"No reference rows: no published RD or RD++ numbers for {known.name} were found to cite."))
    if any(states[c][0] == "done" and "no ground truth masks" in str(states[c][1].get("undefined")) for c in columns):
        blocks.append(("p", "n/a in the pixel tables: a category without a ground_truth folder is evaluated on its image labels only."))

    def seconds(c, key):
        state, _, info = states[c]
        return info.get(key) if state == "done" and info and info.get(key) is not None else None

    wall_rows = []
    for label, keys in (("train", ["train_seconds"]), ("test", ["test_seconds"]), ("train + test", ["train_seconds", "test_seconds"])):
        values = [None if any(seconds(c, k) is None for k in keys) else sum(seconds(c, k) for k in keys) for c in columns]
        known = [v for v in values if v is not None]
        total = f"{sum(known):.1f}" + ("" if len(known) == len(columns) else f" ({len(known)}/{len(columns)})") if known else "-"
        wall_rows.append([f"{label} (s)", total, *(f"{v:.1f}" if v is not None else "failed" if states[c][0] == "failed" else "-"
                                                     for c, v in zip(columns, values))])
    blocks += [("h2", "Wall time"), ("table", ["", "Total", *(title(c) for c in columns)], wall_rows, linked),
               ("p", "Training time sums every attempt that built the checkpoint (an interrupted run resumed counts both); "
                "each includes starting Python and loading the data.")]

    notes = [f"{c}: failed ({states[c][2].get('reason', '')}), log: {states[c][2].get('log')}" for c in columns if states[c][0] == "failed"]
    notes += [f"{c}: {states[c][0]}" for c in columns if states[c][0] in ("running", "interrupted")]
    notes += [f"{c}: results.json is from other settings, not shown: {', '.join(differences(states[c][1].get('train_config'), requested_config(cfg, c)))}"
              for c in columns if states[c][0] == "other settings"]
    if notes:
        blocks += [("h2", "Notes"), ("ul", notes)]
    return blocks


def write_tables(out_dir, data_root, requested_categories, train_config):
    """<out_dir>/results.md and <out_dir>/report.html; returns results.md's text."""
    blocks = sweep_document(out_dir, data_root, requested_categories, train_config)
    text = markdown(blocks)
    atomic_write_text(os.path.join(out_dir, "results.md"), text + "\n")
    write_sweep_report(out_dir, blocks)
    return text


# -----------------------------------------------------------------------------
# running the categories

class Sweep:
    """What the worker threads share: the settings, the child processes running, the signals received, the failures."""

    def __init__(self, out_dir, data_root, requested_categories, train_config, train_args, test_args):
        self.out_dir, self.data_root, self.categories = out_dir, data_root, requested_categories
        self.train_config, self.train_args, self.test_args = train_config, train_args, test_args
        self.lock = threading.Lock()  # whole lines on stdout, one table writer at a time
        self.children = set()
        self.stop_signals = []
        self.failed = []

    def say(self, text):
        with self.lock:
            print(text, flush=True)

    def write_table(self):
        with self.lock:
            return write_tables(self.out_dir, self.data_root, self.categories, self.train_config)

    def on_signal(self, signum, _frame):
        """Ctrl-C / SIGTERM: each train.py saves a checkpoint at its next step and exits; a second signal kills them."""
        first = not self.stop_signals
        self.stop_signals.append(signum)
        for child in list(self.children):
            child.send_signal(signum) if first else child.kill()
        # os.write, not print: a signal handler may interrupt a print in progress
        os.write(2, (b"stopping: the running categories save a checkpoint and exit (signal again to kill them now)\n"
                     if first else b"killing the running categories\n"))

    def run_logged(self, command, log_path, gpu):
        """Run one script with its output appended to log_path; (exit status, seconds)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")  # the log follows the run line by line
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        start = time.time()
        with open(log_path, "a") as log:
            where = f"CUDA_VISIBLE_DEVICES={gpu} " if gpu is not None else ""
            log.write(f"==== {datetime.now():%Y-%m-%d %H:%M:%S} {where}{shlex.join(command)}\n")
            log.flush()
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            self.children.add(child)
            if self.stop_signals:  # the signal came while this child was being started: it must hear it too
                child.send_signal(self.stop_signals[0])
            status = child.wait()
            self.children.discard(child)
            log.write(f"==== exit status {status} after {time.time() - start:.1f}s\n")
        return status, time.time() - start

    def run_category(self, category, gpu):
        folder = run_dir(self.out_dir, category)
        os.makedirs(folder, exist_ok=True)
        log_path, checkpoint = os.path.join(folder, "log.txt"), ckpt_path(self.out_dir, category)
        requested = requested_config(self.train_config, category)
        previous = read_json(os.path.join(folder, "sweep.json")) or {}
        resuming = not force and os.path.exists(checkpoint)
        # training continues from the checkpoint, so the time that built it counts
        carried = (previous.get("train_seconds") or 0.0) if resuming and not differences(previous.get("config"), requested) else 0.0
        info = {"status": "running", "config": requested, "log": log_path, "gpu": gpu, "train_seconds": carried, "test_seconds": None}
        atomic_write_json(os.path.join(folder, "sweep.json"), info)  # a table built meanwhile shows it running
        self.say(f"start {category}" + (f" on GPU {gpu}" if gpu is not None else "") + (" (resuming its checkpoint)" if resuming else ""))

        start = time.time()
        train = [sys.executable, os.path.join(ROOT, "train.py"), f"--category={category}",
                 "--overwrite=1" if force else "--resume=1", *self.train_args]
        status, seconds = self.run_logged(train, log_path, gpu)
        info.update(train_seconds=carried + seconds, train_exit=status)
        step = "train"
        if status == 0 and not self.stop_signals:
            test = [sys.executable, os.path.join(ROOT, "test.py"), f"--checkpoint={checkpoint}", *self.test_args]
            status, seconds = self.run_logged(test, log_path, gpu)
            info.update(test_seconds=seconds, test_exit=status)
            step = "test"
        elapsed = time.time() - start

        results = read_json(os.path.join(folder, "results.json"))
        if self.stop_signals and (status != 0 or step == "train"):
            info["status"] = "interrupted"
            message = f"{category} interrupted after {elapsed:.1f}s; rerun the same command to resume it"
        elif status != 0:
            info.update(status="failed", reason=f"{step} exited {status}")
        elif differences(results and results.get("train_config"), requested):
            # e.g. a checkpoint already trained for more epochs than requested: resuming cannot undo that
            info.update(status="failed", reason="results.json does not match the requested settings: "
                        + ", ".join(differences(results and results.get("train_config"), requested)) + "; use --force=1 to retrain")
        else:
            info["status"] = "done"
            message = f"{category} done in {elapsed:.1f}s: " + " ".join(
                f"{k} {results[k]:.3f}" if results.get(k) is not None else f"{k} n/a" for _, k in TABLES)
        if info["status"] == "failed":
            with open(log_path, errors="replace") as log:
                info["log_tail"] = log.read().splitlines()[-20:]
            last = [line for line in info["log_tail"] if line.strip() and not line.startswith("==== ")][-3:]
            message = "\n".join([f"{category} FAILED after {elapsed:.1f}s ({info['reason']}), log: {log_path}",
                                 *(f"    {line}" for line in last)])
            self.failed.append(category)
        atomic_write_json(os.path.join(folder, "sweep.json"), info)
        self.write_table()
        self.say(message)

    def worker(self, gpu, todo):
        while not self.stop_signals:
            try:
                category = todo.get_nowait()
            except queue.Empty:
                return
            try:
                self.run_category(category, gpu)
            except Exception as e:  # the sweep's own error (e.g. a full disk): the exit status must still say so
                self.failed.append(category)
                self.say(f"{category} FAILED: the sweep could not run it ({type(e).__name__}: {e})")


# -----------------------------------------------------------------------------

def parse_args(argv):
    """Set the sweep's own settings; return (train.py args, test.py args, the resulting training config).
    Every name and value is checked here, before anything runs."""
    own = [a for a in argv if a.startswith("--") and a[2:].split("=", 1)[0] in sweep_keys]
    apply_overrides(globals(), own, sweep_keys)
    train_keys, test_keys = train_script.config_keys, test_script.config_keys
    train_args, test_args = [], []
    for arg in argv:
        if arg in own:
            continue
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"{arg}: arguments are --name=value")
        name = arg[2:].split("=", 1)[0]
        if name in SET_BY_SWEEP:
            raise ConfigError(f"--{name}: {SET_BY_SWEEP[name]}")
        if name not in train_keys and name not in test_keys:
            raise ConfigError(f"--{name}: neither the sweep, train.py nor test.py has this setting; sweep: {', '.join(sweep_keys)}; "
                              f"train.py: {', '.join(train_keys)}; test.py: {', '.join(test_keys)}")
        if name in train_keys:
            train_args.append(arg)
        if name in test_keys:
            test_args.append(arg)
    train_config = {k: getattr(train_script, k) for k in train_keys}
    apply_overrides(train_config, train_args, train_keys)
    apply_overrides({k: getattr(test_script, k) for k in test_keys}, test_args, test_keys)
    vars(train_script).update(train_config)  # check_config reads train.py's module settings
    train_script.check_config()
    return train_args, test_args, train_config


def default_categories(data_root):
    """The categories of the known dataset found as folders under data_root, else every folder there with train/good."""
    folders = [d for d in os.listdir(data_root) if os.path.isdir(os.path.join(data_root, d))] if os.path.isdir(data_root) else []
    known = dataset_for(folders)
    if known:
        return [c for c in known.categories if c in folders]
    return sorted(d for d in folders if os.path.isdir(os.path.join(data_root, d, "train", "good")))


def find_categories(data_root):
    """The --categories, each a folder under data_root, or default_categories."""
    if categories:
        names = list(dict.fromkeys(c for c in categories.split(",") if c))
        missing = [os.path.join(data_root, c) for c in names if not os.path.isdir(os.path.join(data_root, c))]
        if missing:
            raise ConfigError(f"--categories: no folder {', '.join(missing)}")
        return ordered(names)
    found = default_categories(data_root)
    if not found:
        raise ConfigError(f"data_root={data_root}: holds no category of a known dataset (scripts/known_datasets.py) and no "
                          "folder with train/good; pass --data_root=... or --categories=a,b")
    return found


def gpu_slots(device):
    """One entry per category run at a time: a CUDA_VISIBLE_DEVICES value, or None for one run at a time."""
    if gpus:
        if device.startswith("cuda:"):
            raise ConfigError(f"--gpus with --device={device}: each run sees only its own GPU, as cuda:0; use --device=auto")
        return [g.strip() for g in gpus.split(",") if g.strip()]
    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return [None]
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # ids as the user's environment names them, not 0..count-1
    return (visible.split(",")[:count] if visible else [str(i) for i in range(count)]) or [None]


def main():
    train_args, test_args, train_config = parse_args(sys.argv[1:])
    data_root, out_dir = train_config["data_root"], train_config["out_dir"]
    if table_only:
        # the data need not be on the machine that gathers: columns also come from what is under out_dir
        names = [c for c in categories.split(",") if c] or default_categories(data_root)
        if not names and not os.path.isdir(out_dir):
            raise ConfigError(f"out_dir={out_dir}: no such folder, nothing to tabulate")
        print(write_tables(out_dir, data_root, ordered(names), train_config))
        print(f"wrote {os.path.join(out_dir, 'results.md')} and report.html")
        return
    names = find_categories(data_root)
    slots = gpu_slots(train_config["device"])
    sweep = Sweep(out_dir, data_root, names, train_config, train_args, test_args)
    todo = queue.Queue()
    for category in names:
        if not force and category_state(out_dir, category, requested_config(train_config, category))[0] == "done":
            print(f"skip {category}: results.json exists (use --force=1 to redo)")
        else:
            todo.put(category)
    where = "on CPU, one at a time" if slots == [None] else f"on GPUs {','.join(slots)}, one category per GPU at a time"
    print(f"sweep: {todo.qsize()} of {len(names)} categories to run {where}; logs in {out_dir}/<category>/log.txt", flush=True)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, sweep.on_signal)
    workers = [threading.Thread(target=sweep.worker, args=(gpu, todo)) for gpu in slots[:max(1, todo.qsize())]]
    for w in workers:
        w.start()
    for w in workers:
        while w.is_alive():
            w.join(timeout=0.5)  # short waits: the main thread must stay free to run the signal handler

    print("\n" + sweep.write_table(), flush=True)
    print(f"wrote {os.path.join(out_dir, 'results.md')} and report.html")
    if sweep.stop_signals:
        print(f"interrupted by signal {sweep.stop_signals[0]}: rerun the same command to resume (finished categories are skipped)")
    for category in sweep.failed:
        print(f"failed: {category}, log: {os.path.join(run_dir(out_dir, category), 'log.txt')}")
    if sweep.stop_signals:
        sys.exit(128 + sweep.stop_signals[0])
    if sweep.failed:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main, lambda: train_script.debug)  # --debug=1 (also passed on) shows tracebacks
