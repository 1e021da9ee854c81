"""
Files that train.py and test.py share: where a run's checkpoint lives, its atomic saving, safe loading.

A run's folder is <out_dir>/<run name>: the category for a one-category model, and for a model of several
categories (the unified setting) run_name(categories).

Checkpoints are written with utils.files.atomic_write (a crash, Ctrl-C or a full disk leaves the old file or the
new one, never half of one), by CheckpointWriter in a background thread so that the training steps go on while it
writes, and loaded with weights_only=True (a file that would run code while unpickling is refused).
"""

import hashlib
import os
import pickle
import re
import threading
import warnings

import torch

from utils.config import ConfigError
from utils.files import atomic_write, first_line


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


def ckpt_path(out_dir, category):
    return os.path.join(run_dir(out_dir, category), "checkpoint.pth")


def save_checkpoint(path, checkpoint):
    try:
        atomic_write(path, lambda f: torch.save(checkpoint, f))
    except RuntimeError as e:
        # torch.save's zip writer replaces a failed write (a full disk, Ctrl-C) by its own "unexpected pos" error
        if isinstance(e.__context__, (OSError, KeyboardInterrupt)):
            raise e.__context__ from None
        raise


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


def safe_load(path, setting, device="cpu"):
    """torch.load(path, weights_only=True); every failure is a one-line ConfigError naming --setting=path.

    weights_only=True unpickles only tensors and plain containers: a file that would call a function or build
    an object while loading (the way a malicious pickle runs code) is refused before anything in it runs."""
    if not os.path.isfile(path):
        raise ConfigError(f"{setting}={path}: no such file")
    if os.path.getsize(path) == 0:
        raise ConfigError(f"{setting}={path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # torch warns about a plain pickle's protocol just before it refuses the file: noise here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"GLOBAL ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)\s", str(e))  # a module.name it would import
        if unsafe:
            raise ConfigError(f"{setting}={path}: refused to load, unpickling it would call {unsafe.group(1)}; "
                              f"only tensors and plain values are loaded (anything else could run code)") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        detail = (detail.group(1) if detail else first_line(e)).split(". ")[0][:80]
        raise ConfigError(f"{setting}={path}: not a file saved by torch.save ({detail})") from None
    except Exception as e:
        detail = first_line(e).split(". ")[0]  # torch's zip errors go on for several sentences
        raise ConfigError(f"{setting}={path}: not a readable torch.save file, truncated or corrupted? ({detail})") from None


def load_checkpoint(path, device="cpu"):
    """A checkpoint of train.py or the official code ({'bn', 'decoder'} state dicts, RD++ also 'proj', maybe 'config'), loaded
    with safe_load: a file that would run code while unpickling is refused instead of executed."""
    checkpoint = safe_load(path, "checkpoint", device)
    if not isinstance(checkpoint, dict) or not all(isinstance(checkpoint.get(k), dict) for k in ("bn", "decoder")):
        raise ConfigError(f"checkpoint={path}: not a Reverse Distillation checkpoint (expected the state dicts 'bn' and 'decoder')")
    if not isinstance(checkpoint.get("proj", {}), dict):
        raise ConfigError(f"checkpoint={path}: its 'proj' is a {type(checkpoint['proj']).__name__}, expected RD++'s projection-layer state dict")
    if not isinstance(checkpoint.get("config", {}), dict):
        raise ConfigError(f"checkpoint={path}: its 'config' is a {type(checkpoint['config']).__name__}, expected the dict train.py saves")
    return checkpoint
