"""
Train and test Reverse Distillation (RD, or RD++ with --method=rd++) on every category of a dataset (MVTec AD, VisA,
...), then tabulate the results.

    $ bash scripts/run_all_mvtec.sh                                        # the 15 categories under data/mvtec
    $ python scripts/sweep.py --categories=bottle,screw --epochs=50        # any train.py / test.py --name=value
    $ python scripts/sweep.py --gpus=0,1 --force=1                         # two GPUs; retrain what is finished
    $ python scripts/sweep.py --table_only=1 --out_dir=runs --epochs=50    # rebuild runs/results.md and report.html, run nothing
    $ python scripts/sweep.py --method=rd++ --official_epochs=1 --out_dir=runs_rdpp   # RD++ with its official epochs
    $ python scripts/sweep.py --unified=1 --protocol=ader --out_dir=runs_unified      # one model of all categories
    $ python scripts/sweep.py --data_root=data/mvtec_ad_2 --out_dir=runs_ad2           # MVTec AD 2: its protocol, recognised

Per category C: `python train.py --category=C --resume=1 ...`, then `python test.py --checkpoint=<out_dir>/C/checkpoint.pth
...`, both logged to <out_dir>/C/log.txt. A category whose results.json was trained with the requested settings is
skipped; an interrupted one resumes from its checkpoint; one that fails is reported and the others go on. With several
GPUs one category runs per GPU at a time. <out_dir>/results.md and <out_dir>/report.html (the same tables, each cell
linking to the category's report.html) are rebuilt from the per-category files after every category. Exit status: 0 all done, 1 some category failed, 2 bad settings (an out_dir that cannot be written is
refused before any category starts), 128+signal when interrupted (Ctrl-C).

With --unified=1 it trains ONE model of all the categories instead (`train.py --categories=a,b,c --resume=1`, logged
to <out_dir>/<run name>/log.txt, skipped once done), then evaluates it on each category (`test.py --category=C`, logged
to <out_dir>/<run name>/C/log.txt), each category skipped when done, failing alone, one per GPU at a time; the tables
(<out_dir>/<run name>/results.md) have one row for that model, per category and the mean, beside ADer's published
unified rows where the categories are a whole dataset ADer benchmarks. <run name> is utils.runs.run_name of the
categories (a+b+c, or unified_<n>_categories_<hash>).
"""

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

from evaluation.metrics import metrics_line  # noqa: E402
from evaluation.results import (category_state, differences, ordered, read_json, requested_config, result_folder,  # noqa: E402
                                table_path, write_results_md)
from model.protocols import apply_protocol, check_config  # noqa: E402
from utils.config import ConfigError, apply_overrides, run_cli, script_settings  # noqa: E402
from utils.files import atomic_write_json, check_outputs  # noqa: E402
from utils.known_datasets import DATASETS, dataset_for  # noqa: E402
from utils.runs import ckpt_path, run_dir, run_name  # noqa: E402

# -----------------------------------------------------------------------------
categories = ""  # comma-separated folder names under data_root; default: the known dataset's categories found there
gpus = ""  # comma-separated GPU ids, one category per id at a time (an id may repeat); default: every visible GPU
force = False  # retrain categories that have results (train.py --overwrite=1) instead of skipping or resuming them
table_only = False  # only rebuild results.md and report.html from the finished categories; run nothing
unified = False  # one model of all the categories (train.py --categories=...), evaluated on each; results in <out_dir>/<run name>/
debug = False  # show Python tracebacks for user errors; passed on to train.py and test.py too
# -----------------------------------------------------------------------------
sweep_keys = ["categories", "gpus", "force", "table_only", "unified", "debug"]
# train.py's and test.py's settings with their defaults, read from their settings blocks
TRAIN_SETTINGS = script_settings(os.path.join(ROOT, "train.py"))
TEST_SETTINGS = script_settings(os.path.join(ROOT, "test.py"))
# settings the sweep gives each run itself
SET_BY_SWEEP = {
    "category": "pick categories with --categories=a,b",
    "checkpoint": "the sweep tests <out_dir>/<category>/checkpoint.pth",
    "resume": "the sweep always resumes an interrupted category; --force=1 retrains from scratch",
    "overwrite": "the sweep always resumes an interrupted category; --force=1 retrains from scratch",
}

# -----------------------------------------------------------------------------
# running the categories

class Sweep:
    """What the worker threads share: the settings, the child processes running, the signals received, the failures."""

    def __init__(self, out_dir, data_root, requested_categories, train_config, train_args, test_args, *, run=None, force=False):
        self.out_dir, self.data_root, self.categories = out_dir, data_root, requested_categories
        self.train_config, self.train_args, self.test_args = train_config, train_args, test_args
        self.run = run  # a unified run's name: one model of all the categories in <out_dir>/<run>/
        self.force = force  # retrain and reevaluate what is done
        self.unified_categories = sorted(requested_categories) if run else None
        self.lock = threading.Lock()  # whole lines on stdout, one table writer at a time
        self.children = set()
        self.stop_signals = []
        self.failed = []

    def say(self, text):
        with self.lock:
            print(text, flush=True)

    def write_table(self):
        with self.lock:
            return write_results_md(self.out_dir, self.data_root, self.categories, self.train_config, self.run)

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
        """Train and test one category into <out_dir>/<category>/ (the per-category sweep)."""
        folder = run_dir(self.out_dir, category)
        os.makedirs(folder, exist_ok=True)
        log_path, checkpoint = os.path.join(folder, "log.txt"), ckpt_path(self.out_dir, category)
        requested = requested_config(self.train_config, category)
        previous = read_json(os.path.join(folder, "sweep.json")) or {}
        resuming = not self.force and os.path.exists(checkpoint)
        # training continues from the checkpoint, so the time that built it counts
        carried = (previous.get("train_seconds") or 0.0) if resuming and not differences(previous.get("config"), requested) else 0.0
        info = {"status": "running", "config": requested, "log": log_path, "gpu": gpu, "train_seconds": carried, "test_seconds": None}
        atomic_write_json(os.path.join(folder, "sweep.json"), info)  # a table built meanwhile shows it running
        self.say(f"start {category}" + (f" on GPU {gpu}" if gpu is not None else "") + (" (resuming its checkpoint)" if resuming else ""))

        start = time.time()
        train = [sys.executable, os.path.join(ROOT, "train.py"), f"--category={category}",
                 "--overwrite=1" if self.force else "--resume=1", *self.train_args]
        status, seconds = self.run_logged(train, log_path, gpu)
        info.update(train_seconds=carried + seconds, train_exit=status)
        step = "train"
        if status == 0 and not self.stop_signals:
            status, step = self.test(category, checkpoint, log_path, gpu, info), "test"
        self.conclude(category, folder, info, requested, status=status, step=step, elapsed=time.time() - start)

    def test(self, category, checkpoint, log_path, gpu, info):
        """test.py on one category of the checkpoint; its exit status, its time in info."""
        test = [sys.executable, os.path.join(ROOT, "test.py"), f"--checkpoint={checkpoint}",
                *([f"--category={category}"] if self.run else []), *self.test_args]
        status, seconds = self.run_logged(test, log_path, gpu)
        info.update(test_seconds=seconds, test_exit=status)
        return status

    def conclude(self, category, folder, info, requested, *, status, step, elapsed):
        """Record how a category's attempt ended (sweep.json), rebuild the table, say it."""
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
            message = f"{category} done in {elapsed:.1f}s: {metrics_line(results)}"
        if info["status"] == "failed":
            with open(info["log"], errors="replace") as log:
                info["log_tail"] = log.read().splitlines()[-20:]
            last = [line for line in info["log_tail"] if line.strip() and not line.startswith("==== ")][-3:]
            message = "\n".join([f"{category} FAILED after {elapsed:.1f}s ({info['reason']}), log: {info['log']}",
                                 *(f"    {line}" for line in last)])
            self.failed.append(category)
        atomic_write_json(os.path.join(folder, "sweep.json"), info)
        self.write_table()
        self.say(message)

    def train_unified(self, gpu):
        """Train the one model of all the categories into <out_dir>/<run>/, unless it is done; True if it is then."""
        folder = os.path.join(self.out_dir, self.run)
        os.makedirs(folder, exist_ok=True)
        log_path, checkpoint = os.path.join(folder, "log.txt"), ckpt_path(self.out_dir, self.run)
        requested = requested_config(self.train_config, "", self.unified_categories)
        previous = read_json(os.path.join(folder, "sweep.json")) or {}
        same = not differences(previous.get("config"), requested)
        if not self.force and same and previous.get("status") == "done" and os.path.exists(checkpoint):
            self.say(f"skip training {self.run}: {checkpoint} is done (use --force=1 to retrain)")
            return True
        resuming = not self.force and os.path.exists(checkpoint)
        carried = (previous.get("train_seconds") or 0.0) if resuming and same else 0.0
        info = {"status": "running", "config": requested, "log": log_path, "gpu": gpu, "train_seconds": carried}
        atomic_write_json(os.path.join(folder, "sweep.json"), info)
        self.say(f"start training {self.run}, one model of {len(self.categories)} categories" + (f" on GPU {gpu}" if gpu is not None else "")
                 + (" (resuming its checkpoint)" if resuming else ""))
        train = [sys.executable, os.path.join(ROOT, "train.py"), f"--categories={','.join(self.unified_categories)}",
                 "--overwrite=1" if self.force else "--resume=1", *self.train_args]
        status, seconds = self.run_logged(train, log_path, gpu)
        info.update(train_seconds=carried + seconds, train_exit=status,
                    status="interrupted" if self.stop_signals else "done" if status == 0 else "failed")
        atomic_write_json(os.path.join(folder, "sweep.json"), info)
        if info["status"] == "done":
            self.say(f"{self.run} trained in {seconds:.1f}s")
        elif info["status"] == "interrupted":
            self.say(f"{self.run} interrupted after {seconds:.1f}s; rerun the same command to resume it")
        else:  # every category's evaluation needs this model: they all fail with it
            for category in self.categories:
                category_dir = result_folder(self.out_dir, category, self.run)
                os.makedirs(category_dir, exist_ok=True)
                atomic_write_json(os.path.join(category_dir, "sweep.json"), {"status": "failed", "reason": f"train exited {status}",
                                                                             "config": requested, "log": log_path})
            self.failed += self.categories
            self.say(f"{self.run} training FAILED after {seconds:.1f}s (train exited {status}), log: {log_path}")
        self.write_table()
        return info["status"] == "done"

    def test_unified(self, category, gpu):
        """Evaluate the unified model on one category into <out_dir>/<run>/<category>/."""
        folder = result_folder(self.out_dir, category, self.run)
        os.makedirs(folder, exist_ok=True)
        info = {"status": "running", "config": requested_config(self.train_config, category, self.unified_categories),
                "log": os.path.join(folder, "log.txt"), "gpu": gpu, "train_seconds": None, "test_seconds": None}
        atomic_write_json(os.path.join(folder, "sweep.json"), info)
        self.say(f"start {category}" + (f" on GPU {gpu}" if gpu is not None else ""))
        start = time.time()
        status = self.test(category, ckpt_path(self.out_dir, self.run), info["log"], gpu, info)
        self.conclude(category, folder, info, info["config"], status=status, step="test", elapsed=time.time() - start)

    def worker(self, gpu, todo):
        while not self.stop_signals:
            try:
                category = todo.get_nowait()
            except queue.Empty:
                return
            try:
                (self.test_unified if self.run else self.run_category)(category, gpu)
            except Exception as e:  # the sweep's own error (e.g. a full disk): the exit status must still say so
                self.failed.append(category)
                self.say(f"{category} FAILED: the sweep could not run it ({type(e).__name__}: {e})")


# -----------------------------------------------------------------------------

def parse_args(argv):
    """Set the sweep's own settings; return (train.py args, test.py args, the resulting training config).
    Every name and value is checked here, before anything runs."""
    own = [a for a in argv if a.startswith("--") and a[2:].split("=", 1)[0] in sweep_keys]
    apply_overrides(globals(), own, sweep_keys)
    train_keys, test_keys = list(TRAIN_SETTINGS), list(TEST_SETTINGS)
    train_args, test_args = [], []
    for arg in argv:
        # the sweep's own settings stay here, but for debug, which train.py and test.py take too (categories is
        # train.py's too: the sweep passes each run its own)
        if arg in own and arg[2:].split("=", 1)[0] != "debug":
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
    train_config = dict(TRAIN_SETTINGS)
    apply_overrides(train_config, train_args, train_keys)
    apply_protocol(train_config, train_args)  # --protocol=ader's values, as train.py will set them
    apply_overrides(dict(TEST_SETTINGS), test_args, test_keys)
    check_config(train_config)
    return train_args, test_args, train_config


def default_categories(data_root):
    """The categories of the known dataset found as folders under data_root, else every folder there with train/good."""
    folders = [d for d in os.listdir(data_root) if os.path.isdir(os.path.join(data_root, d))] if os.path.isdir(data_root) else []
    known = dataset_for(folders)
    if known:
        return [c for c in known.categories if c in folders]
    return sorted(d for d in folders if os.path.isdir(os.path.join(data_root, d, "train", "good")))


def find_categories(data_root, categories):
    """The categories (--categories: a,b,c), each a folder under data_root, or default_categories."""
    if categories:
        names = list(dict.fromkeys(c for c in categories.split(",") if c))
        missing = [os.path.join(data_root, c) for c in names if not os.path.isdir(os.path.join(data_root, c))]
        if missing:
            raise ConfigError(f"--categories: no folder {', '.join(missing)}")
        return ordered(names)
    found = default_categories(data_root)
    if not found:
        raise ConfigError(f"data_root={data_root}: holds no category of a known dataset (utils/known_datasets.py) and no "
                          "folder with train/good; pass --data_root=... or --categories=a,b")
    return found


def gpu_slots(device, gpus):
    """One entry per category run at a time (gpus: --gpus): a CUDA_VISIBLE_DEVICES value, or None for one run at a time."""
    if gpus:
        if device.startswith("cuda:"):
            raise ConfigError(f"--gpus with --device={device}: each run sees only its own GPU, as cuda:0; use --device=auto")
        return [g.strip() for g in gpus.split(",") if g.strip()]
    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return [None]
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # ids as the user's environment names them, not 0..count-1
    return (visible.split(",")[:count] if visible else [str(i) for i in range(count)]) or [None]


def unified_run(names, train_config, unified):
    """The unified run's name for these categories, or None without --unified=1 (unified)."""
    if not unified:
        return None
    if len(names) < 2:
        raise ConfigError(f"--unified=1: one model of several categories, but there is only {', '.join(names) or 'none'}")
    if train_config["official_epochs"]:
        raise ConfigError("--official_epochs=1: the official epochs are per category; a unified model has one number of --epochs")
    return run_name(names)


def main():
    train_args, test_args, train_config = parse_args(sys.argv[1:])
    data_root, out_dir = train_config["data_root"], train_config["out_dir"]
    # before anything else; a unified run's tables go to its run folder, checked once its name is known
    check_outputs(f"out_dir={out_dir}", out_dir, [] if unified else ["results.md", "report.html"])
    if table_only:
        # the data need not be on the machine that gathers: columns also come from what is under out_dir
        names = [c for c in categories.split(",") if c] or default_categories(data_root)
        if not names and not os.path.isdir(out_dir):
            raise ConfigError(f"out_dir={out_dir}: no such folder, nothing to tabulate")
        run = unified_run(names, train_config, unified)
        if run:
            check_outputs(f"out_dir={out_dir}", os.path.dirname(table_path(out_dir, run)), ["results.md", "report.html"])
        text = write_results_md(out_dir, data_root, ordered(names), train_config, run)
        print(text)
        print(f"wrote {table_path(out_dir, run)} and report.html beside it")
        return
    names = find_categories(data_root, categories)
    if dataset_for(names) is DATASETS["mvtec_ad_2"] and not any(arg.startswith("--protocol=") for arg in train_args):
        print("MVTec AD 2: trained and evaluated with its protocol (--protocol=mvtec_ad_2: native size, SegF1 at the validation threshold)")
        train_args, test_args = [*train_args, "--protocol=mvtec_ad_2"], [*test_args, "--protocol=mvtec_ad_2"]
        train_config["protocol"] = "mvtec_ad_2"
    run = unified_run(names, train_config, unified)
    if run:  # its tables' folder, before any category starts
        check_outputs(f"out_dir={out_dir}", os.path.dirname(table_path(out_dir, run)), ["results.md", "report.html"])
    slots = gpu_slots(train_config["device"], gpus)
    sweep = Sweep(out_dir, data_root, names, train_config, train_args, test_args, run=run, force=force)
    todo = queue.Queue()
    for category in names:
        requested = requested_config(train_config, category, sweep.unified_categories)
        if not force and category_state(out_dir, category, requested, run)[0] == "done":
            print(f"skip {category}: results.json exists (use --force=1 to redo)")
        else:
            todo.put(category)
    where = "on CPU, one at a time" if slots == [None] else f"on GPUs {','.join(slots)}, one category per GPU at a time"
    print(f"sweep: {todo.qsize()} of {len(names)} categories to run {where}; logs in {result_folder(out_dir, '<category>', run)}/log.txt", flush=True)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, sweep.on_signal)
    if run and not todo.empty() and not sweep.train_unified(slots[0]):  # the one model first, then its evaluations
        todo = queue.Queue()
    workers = [threading.Thread(target=sweep.worker, args=(gpu, todo)) for gpu in slots[:max(1, todo.qsize())]]
    for w in workers:
        w.start()
    for w in workers:
        while w.is_alive():
            w.join(timeout=0.5)  # short waits: the main thread must stay free to run the signal handler

    print("\n" + sweep.write_table(), flush=True)
    print(f"wrote {table_path(out_dir, run)} and report.html beside it")
    if sweep.stop_signals:
        print(f"interrupted by signal {sweep.stop_signals[0]}: rerun the same command to resume (finished categories are skipped)")
    for category in sweep.failed:
        info = read_json(os.path.join(result_folder(out_dir, category, run), "sweep.json")) or {}
        print(f"failed: {category}, log: {info.get('log', os.path.join(result_folder(out_dir, category, run), 'log.txt'))}")
    if sweep.stop_signals:
        sys.exit(128 + sweep.stop_signals[0])
    if sweep.failed:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main, lambda: debug)
