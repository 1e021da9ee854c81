"""
Run folders and what train.py writes into them: where a run's files live (run_dir, ckpt_path, category_folder),
checkpoints written in the background (CheckpointWriter), the loss of every epoch (LossLog, loss.csv), and which
settings a resumed run must share with its checkpoint (resume_keys, saved_setting). Loading a checkpoint and
building its networks is model/checkpoint.py's.

    folder = run_dir("runs", "bottle")                       # runs/bottle: checkpoint.pth, config.json, loss.csv, ...
    folder = run_dir("runs", run_name(["bottle", "cable"]))  # runs/bottle+cable: one model of both (the unified setting)
    writer = CheckpointWriter(); writer.write(ckpt_path("runs", "bottle"), state); writer.wait()

A run's folder is <out_dir>/<run name>: the category of a one-category model; for a model of several categories
(train.py --categories=...) run_name of them, its config "categories" the sorted list and "category" "", each
category's evaluation in <out_dir>/<run name>/<category>/ (category_folder) and their mean beside the checkpoint.
Checkpoints are written atomically by utils.io.save_checkpoint.
"""

import hashlib
import os
import threading

import torch

from utils.files import atomic_write_text
from utils.io import save_checkpoint

# a resumed run must have been trained with the same values of these (RD++ also of RDPP_RESUME_KEYS); the sweep
# counts a result as done when it was trained with the requested values of them, epochs and method
RESUME_KEYS = ("category", "categories", "backbone", "weights", "image_size", "crop_size", "batch_size", "lr", "betas", "seed",
               "lr_decay", "clip_grad", "drop_last")
RDPP_RESUME_KEYS = ("proj_lr", "weight_proj", "step_every", "accumulate", "ssot")
# what checkpoints written before a resume key existed were trained with (categories: [their category], saved_setting)
LEGACY_VALUES = {"accumulate": False, "lr_decay": 0.0, "clip_grad": 0.0, "drop_last": False, "crop_size": 0}
MAX_RUN_NAME = 64


def run_name(categories):
    """The run folder's name for a model of these categories: the category for one; for several the sorted names
    joined by '+' (bottle+cable+screw), or, when that would be longer than 64 characters or a name holds a '+',
    unified_<n>_categories_<the first 8 hex digits of the sha256 of the sorted names joined by commas>."""
    names = sorted(categories)
    if len(names) == 1:
        return names[0]
    joined = "+".join(names)
    if len(joined) <= MAX_RUN_NAME and not any("+" in n for n in names):
        return joined
    return f"unified_{len(names)}_categories_{hashlib.sha256(','.join(names).encode()).hexdigest()[:8]}"


def run_dir(out_dir, category):
    return os.path.join(out_dir, category)


def category_folder(settings, category):
    """Where test.py writes a category's evaluation of the checkpoint `settings` describe (resolve_settings):
    <out_dir>/<category>, or <out_dir>/<run name>/<category> for a model of several categories."""
    if len(settings["categories"]) > 1:
        return os.path.join(run_dir(settings["out_dir"], run_name(settings["categories"])), category)
    return run_dir(settings["out_dir"], category)


LOSS_CSV = "loss.csv"  # beside the checkpoint: train.py writes it, test.py's report plots it


def ckpt_path(out_dir, category):
    return os.path.join(run_dir(out_dir, category), "checkpoint.pth")


def loss_csv_path(out_dir, category):
    return os.path.join(run_dir(out_dir, category), LOSS_CSV)


class LossLog:
    """<run folder>/loss.csv: `epoch,loss,seconds`, a row appended (and flushed) after each epoch of training, the
    epoch's mean loss over its optimizer steps and its wall time, as train.py prints them. A fresh run starts the
    file anew; a resumed run keeps the rows of the epochs its checkpoint completed and drops later ones (written
    after that checkpoint, by a run that was then killed), so each epoch has one row. The epoch a run resumes
    in the middle of gets the row of the batches done after resuming."""

    HEADER = "epoch,loss,seconds"

    def __init__(self, path, epochs_done=0):
        self.path = path
        kept = []
        if epochs_done and os.path.isfile(path):
            with open(path) as f:
                for line in f.read().splitlines()[1:]:
                    fields = line.split(",")
                    # a last line cut short by a killed run has fewer fields: dropped
                    if len(fields) == 3 and fields[0].isdigit() and int(fields[0]) <= epochs_done:
                        kept.append(line + "\n")
        atomic_write_text(path, self.HEADER + "\n" + "".join(kept))

    def append(self, epoch, loss, seconds):
        with open(self.path, "a") as f:
            f.write(f"{epoch},{loss:.6f},{seconds:.2f}\n")


def resume_keys(method):
    """The settings a resumed run of this method must share with its checkpoint."""
    return list(RESUME_KEYS) + (list(RDPP_RESUME_KEYS) if method == "rd++" else [])


def saved_setting(config, name):
    """A setting's value in a saved training config; for one saved before the setting existed, its legacy value."""
    if name == "categories" and not config.get(name):  # one category's model, before categories were recorded
        return [config.get("category")]
    return config.get(name, LEGACY_VALUES.get(name))


def copy_to_cpu(obj):
    """obj (nested dicts, lists, tuples) with every tensor replaced by a copy of it in CPU memory: a snapshot
    that the training steps, which change the live tensors in place, cannot touch."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: copy_to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_to_cpu(v) for v in obj)
    return obj


class CheckpointWriter:
    """save_checkpoint in a background thread: write() copies the checkpoint to CPU memory and returns, the
    file is written (atomically) while training goes on. One write at a time: write() first waits for the
    previous one. A write that failed (a full disk) raises its error in the training thread at the next
    check(), write() or wait(); the file it was replacing is then intact. wait() before the process exits."""

    def __init__(self):
        self.thread, self.error = None, None

    def write(self, path, checkpoint):
        self.wait()
        snapshot = copy_to_cpu(checkpoint)
        # not a daemon: should the process end without wait(), Python still finishes the write before exiting
        self.thread = threading.Thread(target=self._write, args=(path, snapshot), name="checkpoint writer")
        self.thread.start()

    def _write(self, path, checkpoint):
        try:
            save_checkpoint(path, checkpoint)
        except BaseException as e:  # handed to the training thread, which stops the run with it
            self.error = e

    def check(self):
        """Raise the error of a background write that failed, if one did."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def wait(self):
        """Block until the write in flight, if any, is on disk; raise its error if it failed."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        self.check()
