"""Seeding and device choice, shared by train.py and test.py."""

import platform
import random
import warnings

import numpy as np
import torch

from utils.config import ConfigError


def set_seed(seed, deterministic=False):
    """Seed python, numpy and torch (all devices). Called again for every category, so that one category's
    result does not depend on which others ran before it."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        warnings.warn("deterministic=True: cudnn autotuning is off and deterministic kernels are used; this is slower")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(device):
    """'auto' is cuda where there is a GPU, else cpu; an unknown device or a missing GPU is a ConfigError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device={device}: unknown device, expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device={device}: this machine has {torch.cuda.device_count()} CUDA devices; use --device=cpu or auto")
    return device


def describe_device(device):
    """The hardware behind a torch device, in words, e.g. 'NVIDIA H200' or 'CPU: AMD EPYC 7B13, 2 threads'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:  # Linux names the model here; platform.processor() often only says x86_64
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{device.type.upper()}: {name}, {torch.get_num_threads()} threads"
