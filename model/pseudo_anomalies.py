"""
RD++'s pseudo-anomalies (Tien et al., "Revisiting Reverse Distillation for Anomaly Detection", CVPR 2023): a patch of
simplex noise added to each training image, which the teacher then encodes for the projection layer's loss
(model/losses.py). train.py uses them when method = "rd++".

    pseudo_anomalies = SimplexPatches(image_size=256, seed=42)
    generator = step_generator(seed=42, step=7)                        # this step's draws, whatever the process
    noisy = pseudo_anomalies(normalize(images), generator)             # (B,3,S,S), ImageNet-normalised
    SimplexPatches(image_size=[768, 1024], seed=42)                     # (height, width): patches up to H/8 x W/8

train.py makes them at the size the networks see: crop_size when it trains on crops, else image_size.

Each patch of noise in the official code (tientrandinh/Revisiting-Reverse-Distillation) is
rand_3d_octaves((3, h, w), 6, 0.6) of one simplex generator drawn per dataset, evaluated on the grid
(c, y, x) = (0..2, 0..h-1, 0..w-1): every patch is the top-left h x w crop of one fixed noise tensor. So the tensor
is computed once (opensimplex, the package the official noise code is taken from) and cropped on the device.
"""

import numpy as np
import opensimplex
import torch

from model.encoder import IMAGENET_STD
from utils.config import size_hw

MIN_PATCH = 10  # patch heights are uniform in [MIN_PATCH, H // 8), widths in [MIN_PATCH, W // 8)
NOISE_SCALE = 0.2  # in [0, 1] pixel units, added before the ImageNet normalisation
OCTAVES, PERSISTENCE, FREQUENCY = 6, 0.6, 32.0


def noise_field(height, width, seed):
    """(3,height,width) float32 fractal simplex noise: 6 octaves, amplitude x0.6 and frequency /2 per octave from
    frequency 32, the value at (c, y, x) taken at the point (x, y, c) / frequency, as the official generator."""
    generator = opensimplex.OpenSimplex(seed)
    rows, columns = np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64)
    channels = np.arange(3, dtype=np.float64)
    field, amplitude, frequency = np.zeros((3, height, width)), 1.0, FREQUENCY
    for _ in range(OCTAVES):
        field += amplitude * generator.noise3array(columns / frequency, rows / frequency, channels / frequency)  # (3,y,x)
        frequency /= 2
        amplitude *= PERSISTENCE
    return torch.from_numpy(field).float()


class SimplexPatches:
    """Adds one simplex-noise patch to each image of size S x S (or H x W): height uniform in [10, H/8) and width in
    [10, W/8), top-left corner uniform in [1, H - height) x [1, W - width) as in the official dataset class (a
    square there), noise x 0.2 in [0, 1] pixel units."""

    def __init__(self, image_size, seed):
        self.height, self.width = size_hw(image_size)
        self.field = NOISE_SCALE * noise_field(self.height // 8 - 1, self.width // 8 - 1, seed)  # (3,n_h,n_w): the largest patch

    def patches(self, batch_size, generator, device):
        """(B,3,H,W) noise, zero outside each image's patch, in [0, 1] pixel units."""
        H, W = self.height, self.width
        n_h, n_w = self.field.shape[-2:]
        h = torch.randint(MIN_PATCH, H // 8, (batch_size,), generator=generator)
        w = torch.randint(MIN_PATCH, W // 8, (batch_size,), generator=generator)
        top = 1 + (torch.rand(batch_size, generator=generator) * (H - 1 - h)).long()  # uniform in [1, H - h)
        left = 1 + (torch.rand(batch_size, generator=generator) * (W - 1 - w)).long()
        dy = torch.arange(H)[None] - top[:, None]  # (B,H): row offset inside the patch
        dx = torch.arange(W)[None] - left[:, None]  # (B,W)
        inside = ((dy >= 0) & (dy < h[:, None]))[:, :, None] & ((dx >= 0) & (dx < w[:, None]))[:, None, :]  # (B,H,W)
        field = self.field.to(device)
        noise = field[:, dy.clamp(0, n_h - 1)[:, :, None].to(device), dx.clamp(0, n_w - 1)[:, None, :].to(device)]  # (3,B,H,W)
        return noise.transpose(0, 1) * inside[:, None].to(device)  # (B,3,H,W)

    def __call__(self, x, generator):
        """ImageNet-normalised images x (B,3,H,W) -> the same images with a noise patch each, normalised alike."""
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return x + self.patches(len(x), generator, x.device) / std  # (x01 + noise - mean) / std


def step_generator(seed, step):
    """A CPU generator for one training step's noise and shuffle, from (seed, step) alone: a resumed run draws
    exactly what an uninterrupted one draws."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))
