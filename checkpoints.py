"""
Checkpoints and run folders: where a run's files live, writing checkpoints in the background, loading them, the
method and settings a checkpoint implies, and building its networks for scoring. train.py, test.py, export.py,
scripts/sweep.py and the benchmarks call it; every function takes what it needs as arguments.

    folder = run_dir("runs", "bottle")                     # runs/bottle: checkpoint.pth, config.json, loss.csv, ...
    folder = run_dir("runs", run_name(["bottle", "cable"]))  # runs/bottle+cable: one model of both (the unified setting)
    ckpt = load_checkpoint(ckpt_path("runs", "bottle"))     # {'bn', 'decoder', RD++ 'proj', ours 'config', ...}
    settings = resolve_settings(ckpt, path, {"data_root": "", "category": "", ...})   # what was not given, from the checkpoint
    network = load_network(ckpt, settings, torch.device("cpu"), path)  # teacher + student, BatchNorms folded

A checkpoint is {'bn', 'decoder'} state dicts (the official names), RD++ also 'proj'; ours add 'optimizer', 'epoch',
'step' and 'config' (train.py's settings). Checkpoints are written by CheckpointWriter in a background thread
(utils.io.save_checkpoint: atomically) and loaded with utils.io.safe_load (weights_only=True).

A run's folder is <out_dir>/<run name>: the category of a one-category model; for a model of several categories
(train.py --categories=...) run_name of them, its config "categories" the sorted list and "category" "", each
category's evaluation in <out_dir>/<run name>/<category>/ (category_folder) and their mean beside the checkpoint.
"""

import functools
import hashlib
import os
import threading

import torch

from model import OCBE, Decoder, MultiProjection, build_encoder, build_loaded
from model.scoring import inference_network
from utils.config import ConfigError
from utils.files import atomic_write_text
from utils.io import safe_load, save_checkpoint

# what an official checkpoint, which carries no config, was trained with
OFFICIAL_CONFIG = {"backbone": "wide_resnet50_2", "image_size": 256, "weights": "imagenet", "seed": 0, "out_dir": "runs"}
# a resumed run must have been trained with the same values of these (RD++ also of RDPP_RESUME_KEYS); the sweep
# counts a result as done when it was trained with the requested values of them, epochs and method
RESUME_KEYS = ("category", "categories", "backbone", "weights", "image_size", "batch_size", "lr", "betas", "seed",
               "lr_decay", "clip_grad", "drop_last")
RDPP_RESUME_KEYS = ("proj_lr", "weight_proj", "step_every", "accumulate", "ssot")
# what checkpoints written before a resume key existed were trained with (categories: [their category], saved_setting)
LEGACY_VALUES = {"accumulate": False, "lr_decay": 0.0, "clip_grad": 0.0, "drop_last": False}
MAX_RUN_NAME = 64
# the settings test.py and export.py take from the checkpoint when they are not given
CHECKPOINT_SETTINGS = ("data_root", "category", "out_dir", "weights", "backbone", "image_size")


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


def checkpoint_method(ckpt, path):
    """'rd++' for a checkpoint with RD++'s projection layer ('proj'), else 'rd'; the config, where there is one, must agree."""
    method = "rd++" if "proj" in ckpt else "rd"
    trained = ckpt.get("config", {}).get("method", method)
    if trained != method:
        raise ConfigError(f"checkpoint={path}: its config says method={trained}, but it {'has' if method == 'rd++' else 'lacks'} RD++'s projection layer 'proj'")
    return method


def resolve_settings(ckpt, path, given, need_data_root=True):
    """The settings to score the checkpoint at `path` with: each of CHECKPOINT_SETTINGS from `given` (the command
    line's, '' or 0 when not given) where the checkpoint has none; where it has one, they must agree with it
    (backbone, image_size) or take its place. Plus its seed, method and `categories` (those it was trained on);
    `category` is the one to score, "" for all of a unified model's. need_data_root=False: scoring a folder of new
    images needs no data_root."""
    trained = ckpt.get("config", OFFICIAL_CONFIG)
    settings = {}
    for name in (n for n in CHECKPOINT_SETTINGS if n != "category"):
        value, saved = given.get(name), trained.get(name)
        if name in ("backbone", "image_size") and value and "config" in ckpt and value != saved:
            raise ConfigError(f"--{name}={value}: {path} was trained with {name}={saved}")
        settings[name] = value or saved
        if not settings[name] and (name != "data_root" or need_data_root):
            raise ConfigError(f"--{name} is required: {path} does not say which {name} it was trained on")
    # the categories it was trained on: a unified checkpoint lists them, a one-category one names its category
    settings["categories"] = trained.get("categories") or [c for c in [trained.get("category") or given.get("category")] if c]
    if not settings["categories"]:
        raise ConfigError(f"--category is required: {path} does not say which category it was trained on")
    unified = len(settings["categories"]) > 1
    if unified and given.get("category") and given["category"] not in settings["categories"]:
        raise ConfigError(f"--category={given['category']}: {path} was trained on {', '.join(settings['categories'])}, not on it")
    # a one-category model may be scored on another category; "" for a unified one without --category: all of them
    settings["category"] = given.get("category") or ("" if unified else settings["categories"][0])
    settings["seed"] = trained.get("seed", 0)
    settings["method"] = checkpoint_method(ckpt, path)
    return settings


def load_network(ckpt, settings, device, path):
    """The checkpoint's teacher + student as one network for scoring (model.scoring.inference_network);
    with RD++'s projection layer when the checkpoint has one ('proj'), loaded as strictly as the rest."""
    encoder = build_encoder(settings["backbone"], settings["weights"], settings["seed"])
    # official checkpoints of some categories carry extra 'memory' keys that no model uses
    bn_state = {k: v for k, v in ckpt["bn"].items() if "memory" not in k}
    try:  # built straight from the checkpoint's tensors, without a random initialisation first
        ocbe = build_loaded(functools.partial(OCBE, settings["backbone"]), bn_state)
        decoder = build_loaded(functools.partial(Decoder, settings["backbone"]), ckpt["decoder"])
        proj = build_loaded(functools.partial(MultiProjection, settings["backbone"]), ckpt["proj"]) if "proj" in ckpt else None
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line or "Missing" in line or "Unexpected" in line), "")
        raise ConfigError(f"checkpoint={path}: does not fit backbone={settings['backbone']} ({detail[:200]})") from None
    return inference_network(encoder, ocbe, decoder, proj).to(device)
