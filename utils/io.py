"""
Files that train.py and test.py share: where a run's checkpoint lives, atomic writes, safe loading.

Every output is written to a temporary file in the same folder and renamed over the target, so a crash,
Ctrl-C or a full disk leaves either the old file or the new one, never half of one.
"""

import json
import os
import pickle
import tempfile

import torch

from utils.config import ConfigError

UMASK = os.umask(0)
os.umask(UMASK)


def run_dir(out_dir, category):
    return os.path.join(out_dir, category)


def ckpt_path(out_dir, category):
    return os.path.join(run_dir(out_dir, category), "checkpoint.pth")


def atomic_write(path, write):
    """Call write(file_object) on a temporary binary file beside `path`, then rename it to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600 files; give outputs the usual permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def save_checkpoint(path, checkpoint):
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path, device="cpu"):
    """torch.load with weights_only=True: a checkpoint holds tensors and plain values, and a file that would
    run code while unpickling is refused instead of executed."""
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint={path}: no such file")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).splitlines()[0] if "weights_only" not in str(e) else "it would run code or load objects other than tensors"
        raise ConfigError(f"checkpoint={path}: refused to load, {reason}") from None
    except Exception as e:
        raise ConfigError(f"checkpoint={path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(checkpoint, dict) or "bn" not in checkpoint or "decoder" not in checkpoint:
        raise ConfigError(f"checkpoint={path}: not a Reverse Distillation checkpoint (expected the keys 'bn' and 'decoder')")
    return checkpoint
