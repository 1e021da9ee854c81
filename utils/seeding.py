"""Seeding and device choice, shared by train.py and test.py."""

import random
import warnings

import numpy as np
import torch


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
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
