"""
The frozen teacher: a torchvision ResNet cut after layer3, returning the layer1..layer3 features.

    from model.encoder import build_encoder, normalize, teacher_features
    encoder = build_encoder("wide_resnet50_2", weights="imagenet")
    f1, f2, f3 = encoder(normalize(images))  # uint8 (B,3,256,256) -> (B,256,64,64), (B,512,32,32), (B,1024,16,16)
    cache = teacher_features(encoder, images, batch_size=16)  # 3 taps (N,C,H,W) of uint8 images (N,3,S,S)

`weights` is 'imagenet' (torchvision's IMAGENET1K_V1, as the paper; downloaded once into the torch
cache), a path to a torchvision-format state dict, or 'none' (random init from `seed`, for offline
demos and tests; the same seed rebuilds the same teacher at test time).
"""

import functools
import os

import torch
import torch.nn as nn
import torchvision

from utils.config import ConfigError
from utils.io import safe_load

BACKBONES = ("resnet18", "resnet34", "resnet50", "wide_resnet50_2", "wide_resnet101_2")
# the teacher's input: ImageNet's channel statistics, which its pretrained weights expect
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images):
    """uint8 (B,3,H,W) -> float (B,3,H,W): ToTensor's /255, then ImageNet mean/std, on the images' device."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


class Encoder(nn.Module):
    """ResNet stem + layer1..layer3 of a torchvision model; layer4, avgpool and fc are dropped."""

    def __init__(self, resnet):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        # The teacher is frozen: its BatchNorm statistics must never update, whatever the caller asks.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B,64,H/4,W/4)
        f1 = self.layer1(x)  # (B,C1,H/4,W/4)
        f2 = self.layer2(f1)  # (B,2*C1,H/8,W/8)
        f3 = self.layer3(f2)  # (B,4*C1,H/16,W/16)
        return [f1, f2, f3]


def imagenet_weights(backbone):
    """torchvision's IMAGENET1K_V1 weights enum for a backbone: the weights the paper used (not V2/DEFAULT)."""
    return torchvision.models.get_model_weights(backbone).IMAGENET1K_V1


def load_imagenet_state_dict(backbone):
    weights = imagenet_weights(backbone)
    filename = os.path.basename(weights.url)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as e:  # offline, proxy, corrupt download: all end the same way for the user
        raise ConfigError(
            f"weights=imagenet: cannot find {cached} nor download {weights.url} ({type(e).__name__}); "
            f"copy {filename} to {cached}, or pass --weights=/path/to/{filename}, or --weights=none"
        ) from None


def load_state_dict_file(path):
    if not os.path.isfile(path):
        raise ConfigError(f"weights={path}: no such file (expected a torchvision state dict, 'imagenet' or 'none')")
    state_dict = safe_load(path, "weights")
    if not isinstance(state_dict, dict):
        raise ConfigError(f"weights={path}: expected a state dict, found {type(state_dict).__name__}")
    return state_dict


def build_loaded(make, state_dict):
    """The module make() builds, holding the tensors of state_dict, without the random initialisation they
    would overwrite (seconds for a wide ResNet): built on the meta device (shapes, no memory, no init), then
    given the state dict's tensors, cast to the module's dtypes as load_state_dict casts. Strict, with
    load_state_dict's errors: every parameter and buffer must be in state_dict, so none is left on meta."""
    with torch.device("meta"):
        module = make()
    expected = module.state_dict()  # meta tensors: names, shapes and dtypes
    state_dict = {k: v.to(expected[k].dtype) if k in expected and isinstance(v, torch.Tensor) else v for k, v in state_dict.items()}
    module.load_state_dict(state_dict, assign=True)
    return module


def build_encoder(backbone, weights="imagenet", seed=0):
    if backbone not in BACKBONES:
        raise ConfigError(f"backbone={backbone}: unknown, expected one of {', '.join(BACKBONES)}")
    if weights == "none":
        # Built under a fixed seed in a forked RNG: the same teacher in train and test, and the caller's random
        # stream untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return Encoder(torchvision.models.get_model(backbone, weights=None))
    make = functools.partial(torchvision.models.get_model, backbone, weights=None)
    if weights == "imagenet":
        return Encoder(build_loaded(make, load_imagenet_state_dict(backbone)))
    state_dict = load_state_dict_file(weights)
    try:
        return Encoder(build_loaded(make, state_dict))
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise ConfigError(f"weights={weights}: not a {backbone} state dict ({first})") from None


@torch.no_grad()
def teacher_features(encoder, images, batch_size, amp=False):
    """The frozen teacher's 3 taps of uint8 images (N,3,S,S), computed batch by batch and written into
    preallocated (N,C,H,W) tensors (no second copy of all the features, as a torch.cat would make): train.py's
    teacher cache; bf16 with amp. The encoder itself computes them, not a BatchNorm-folded copy as in
    inference_network: folding changes the last bits, and Adam's first step turns those into sign flips of
    whole updates (after one step, about 2% of the weights 2*lr away from the official step's), to save a
    third of the cache's time, itself about 0.1% of a 200-epoch CPU run. Under no_grad, not inference_mode:
    the training step saves the features for its backward pass."""
    taps = None
    for i in range(0, len(images), batch_size):
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            batch_taps = encoder(normalize(images[i:i + batch_size]))  # 3 taps, each (B,C,H,W)
        if taps is None:
            taps = [torch.empty((len(images), *t.shape[1:]), dtype=t.dtype, device=t.device) for t in batch_taps]
        for tap, t in zip(taps, batch_taps):
            tap[i:i + len(t)] = t
    return taps
