"""
torch files on disk: saved atomically, loaded safely. model/encoder.py loads teacher weights files with safe_load,
utils/runs.py saves checkpoints with save_checkpoint, model/checkpoint.py loads them with safe_load.

    save_checkpoint("runs/bottle/checkpoint.pth", {"bn": ..., "decoder": ...})
    state_dict = safe_load("teacher.pth", "weights")  # a ConfigError naming --weights=teacher.pth if unreadable

save_checkpoint writes with utils.files.atomic_write (a crash, Ctrl-C or a full disk leaves the old file or the new
one, never half of one); safe_load loads with weights_only=True (a file that would run code while unpickling is
refused).
"""

import os
import pickle
import re
import warnings

import torch

from utils.config import ConfigError
from utils.files import atomic_write, first_line


def save_checkpoint(path, checkpoint):
    try:
        atomic_write(path, lambda f: torch.save(checkpoint, f))
    except RuntimeError as e:
        # torch.save's zip writer replaces a failed write (a full disk, Ctrl-C) by its own "unexpected pos" error
        if isinstance(e.__context__, (OSError, KeyboardInterrupt)):
            raise e.__context__ from None
        raise


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
