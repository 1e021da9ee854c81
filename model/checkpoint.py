"""
A checkpoint loaded, and the networks it implies: train.py's or the official code's ({'bn', 'decoder'} state
dicts, RD++ also 'proj'; ours add 'optimizer', 'epoch', 'step' and 'config'), the method and settings it was
trained with, and its teacher + student built for scoring. Every function takes what it needs as arguments.

    ckpt = load_checkpoint("runs/bottle/checkpoint.pth")   # {'bn', 'decoder', RD++ 'proj', ours 'config', ...}
    settings = resolve_settings(ckpt, path, {"data_root": "", "category": "", ...})   # what was not given, from the checkpoint
    network = load_network(ckpt, settings, torch.device("cpu"), path)  # teacher + student, BatchNorms folded

Checkpoints are loaded with utils.io.safe_load (weights_only=True): a file that would run code is refused.
"""

import functools

from model import OCBE, Decoder, MultiProjection, build_encoder, build_loaded
from model.scoring import inference_network
from utils.config import ConfigError, check_size
from utils.io import safe_load

# what an official checkpoint, which carries no config, was trained with
OFFICIAL_CONFIG = {"backbone": "wide_resnet50_2", "image_size": 256, "weights": "imagenet", "seed": 0, "out_dir": "runs"}
# the settings test.py and export.py take from the checkpoint when they are not given
CHECKPOINT_SETTINGS = ("data_root", "category", "out_dir", "weights", "backbone", "image_size")


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
    (backbone, image_size) or take its place. Plus its seed, method, `train_config` (None for an official one) and
    `categories` (those it was trained on); `category` is the one to score, "" for all of a unified model's.
    need_data_root=False: scoring a folder of new images needs no data_root."""
    trained = ckpt.get("config", OFFICIAL_CONFIG)
    settings = {}
    for name in (n for n in CHECKPOINT_SETTINGS if n != "category"):
        value, saved = given.get(name), trained.get(name)
        if name == "image_size" and value:
            check_size(name, value)
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
    settings["train_config"] = ckpt.get("config")  # None for an official checkpoint
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
