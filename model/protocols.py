"""
The training protocols as presets of train.py's settings, and the check of those settings: what train.py and
scripts/sweep.py share, so that no script imports another.

    apply_protocol(settings, sys.argv[1:])   # --protocol=ader's values for every setting not given on the command line
    check_config(settings)                   # a ConfigError naming the first impossible setting

`settings` is a dict of train.py's settings block (name: value).
"""

import math

from model import METHODS
from model.pseudo_anomalies import MIN_PATCH
from utils.config import ConfigError, check_size, size_hw
from utils.known_datasets import OFFICIAL_EPOCHS

# Protocol presets: setting -> value, applied unless the setting is given on the command line.
# ader: ADer's unified (multi-class) benchmark, read from github.com/zhangzjn/ADer at commit 902937a (2025-01-29):
# configs/benchmark/rd/rd_256_100e.py and rd++/rd++_256_100e.py (size 256, 100 epochs, batch 16, seed 42, Adam betas
# (0.5, 0.999) with lr 0.005; RD++: its projection layer 0.001, the rest 5 x 0.001), configs/__base__/cfg_common.py
# (clip_grad 5.0, DataLoader drop_last, scaler none), optim/scheduler.py (timm StepLRScheduler stepped every
# iteration, decay_t = int(0.8 * epochs) epochs of iterations, x0.1), trainer/_base_trainer.py and rd_trainer.py
# (zero_grad, backward, clip_grad_norm over the network, step). Its config's weight_decay 0.05 never reaches an
# optimizer. trainer/rdpp_trainer.py zeroes the gradients before every backward and steps on every 2nd iteration
# (accumulate=False), and builds RD++'s two Adam optimizers after the scheduler was attached to the base trainer's
# own optimizer, which never steps: RD++'s learning rates stay constant there, hence lr_decay 0.
# mvtec_ad_2: trained as official; test.py then evaluates with MVTec AD 2's protocol (native size, SegF1 at the
# threshold of the validation images), which it reads from the checkpoint's config.
PROTOCOLS = {
    "official": {},
    "mvtec_ad_2": {},
    "ader": {"image_size": 256, "epochs": 100, "batch_size": 16, "lr": 0.005, "betas": (0.5, 0.999), "seed": 42,
             "lr_decay": 0.8, "clip_grad": 5.0, "drop_last": True, "official_epochs": False},
}
PROTOCOLS_RDPP = {"official": {}, "mvtec_ad_2": {}, "ader": {"proj_lr": 0.001, "lr_decay": 0.0, "step_every": 2, "accumulate": False}}  # RD++ on top


def apply_protocol(settings, argv):
    """Set settings[name] to the preset of settings['protocol'] for every name not given in argv (--name=value);
    train.py and scripts/sweep.py apply it."""
    if settings["protocol"] not in PROTOCOLS:
        raise ConfigError(f"--protocol={settings['protocol']}: must be {' or '.join(PROTOCOLS)}")
    given = {arg[2:].split("=", 1)[0] for arg in argv}
    preset = {**PROTOCOLS[settings["protocol"]], **(PROTOCOLS_RDPP[settings["protocol"]] if settings["method"] == "rd++" else {})}
    settings.update({k: v for k, v in preset.items() if k not in given})


def check_config(config):
    """Impossible settings (a dict of train.py's settings) fail here, before any data is loaded; scripts/sweep.py
    checks its runs' settings with it before starting any."""
    c = config
    check_size("image_size", c["image_size"])
    trained_side = min(size_hw(c["crop_size"] or c["image_size"]))  # of the images the networks see
    checks = [
        (isinstance(c["crop_size"], int) and c["crop_size"] >= 0 and c["crop_size"] % 32 == 0, "crop_size", "0 (whole images) or a positive multiple of 32"),
        (c["crop_size"] <= min(size_hw(c["image_size"])), "crop_size", f"at most the image's shorter side, {min(size_hw(c['image_size']))} at image_size={c['image_size']}"),
        (not (c["crop_size"] and c["cache_teacher"] == "1"), "cache_teacher", "0 or auto with crop_size: the teacher sees another crop of each image at every step, there are no fixed features to cache"),
        (c["batch_size"] >= 1, "batch_size", "at least 1"),
        (c["epochs"] >= 1, "epochs", "at least 1"),
        (math.isfinite(c["lr"]) and c["lr"] > 0, "lr", "a positive finite number"),
        (all(0 <= b < 1 for b in c["betas"]), "betas", "two numbers in [0, 1)"),
        (math.isfinite(c["save_minutes"]) and c["save_minutes"] >= 0, "save_minutes", "a number of minutes, 0 or more"),
        (0 <= c["seed"] < 2**32, "seed", "in [0, 2**32)"),
        (not (c["resume"] and c["overwrite"]), "resume", "left off when overwrite=True"),
        (c["method"] in METHODS, "method", " or ".join(METHODS)),
        (c["method"] != "rd++" or trained_side // 8 > MIN_PATCH, "crop_size" if c["crop_size"] else "image_size",
         f"at least 96 for rd++ (noise patches of {MIN_PATCH} to a side/8 pixels)"),
        (math.isfinite(c["proj_lr"]) and c["proj_lr"] > 0, "proj_lr", "a positive finite number"),
        (c["step_every"] >= 1, "step_every", "at least 1"),
        (not c["official_epochs"] or (c["category"] in OFFICIAL_EPOCHS and not c["categories"]), "official_epochs",
         f"used only for the MVTec AD categories, one at a time with --category= ({', '.join(OFFICIAL_EPOCHS)})"),
        (math.isfinite(c["clip_grad"]) and c["clip_grad"] >= 0, "clip_grad", "a gradient norm, 0 for no clipping"),
        (0 <= c["lr_decay"] <= 1, "lr_decay", "a fraction of the epochs in [0, 1], 0 for a constant lr"),
        (not c["lr_decay"] or int(c["lr_decay"] * c["epochs"]) >= 1, "lr_decay", "at least 1/epochs: int(lr_decay * epochs) is the first decayed epoch, and 0 would divide by zero"),
        (c["in_memory"] in ("auto", "1", "0"), "in_memory", "auto, 1 or 0"),
        (c["cache_teacher"] in ("auto", "1", "0"), "cache_teacher", "auto, 1 or 0"),
    ]
    for ok, name, expected in checks:
        if not ok:
            raise ConfigError(f"--{name}={config[name]!r}: must be {expected}")
