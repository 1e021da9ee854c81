"""
RD++'s pseudo-anomalies (Tien et al., "Revisiting Reverse Distillation for Anomaly Detection", CVPR 2023): a patch of
simplex noise added to each training image, which the teacher then encodes for the projection layer's loss
(model/losses.py). train.py uses them when method = "rd++".

    pseudo_anomalies = SimplexPatches(image_size=256, seed=42)
    generator = step_generator(seed=42, step=7)                        # this step's draws, whatever the process
    noisy = pseudo_anomalies(normalize(images), generator)             # (B,3,S,S), ImageNet-normalised

Each patch of noise in the official code (tientrandinh/Revisiting-Reverse-Distillation) is
rand_3d_octaves((3, h, w), 6, 0.6) of one simplex generator drawn per dataset, evaluated on the grid
(c, y, x) = (0..2, 0..h-1, 0..w-1): every patch is the top-left h x w crop of one fixed noise tensor. So the tensor
is computed once (opensimplex, the package the official noise code is taken from) and cropped on the device.
"""

import numpy as np
import opensimplex
import torch

from model.encoder import IMAGENET_STD

MIN_PATCH = 10  # patch heights and widths are uniform in [MIN_PATCH, image_size // 8)
NOISE_SCALE = 0.2  # in [0, 1] pixel units, added before the ImageNet normalisation
OCTAVES, PERSISTENCE, FREQUENCY = 6, 0.6, 32.0


def noise_field(size, seed):
    """(3,size,size) float32 fractal simplex noise: 6 octaves, amplitude x0.6 and frequency /2 per octave from
    frequency 32, the value at (c, y, x) taken at the point (x, y, c) / frequency, as the official generator."""
    generator = opensimplex.OpenSimplex(seed)
    grid = np.arange(size, dtype=np.float64)
    channels = np.arange(3, dtype=np.float64)
    field, amplitude, frequency = np.zeros((3, size, size)), 1.0, FREQUENCY
    for _ in range(OCTAVES):
        field += amplitude * generator.noise3array(grid / frequency, grid / frequency, channels / frequency)  # (3,y,x)
        frequency /= 2
        amplitude *= PERSISTENCE
    return torch.from_numpy(field).float()


class SimplexPatches:
    """Adds one simplex-noise patch to each image: height and width uniform in [10, S/8), top-left corner uniform
    in [1, S - size) as in the official dataset class, noise x 0.2 in [0, 1] pixel units."""

    def __init__(self, image_size, seed):
        self.image_size = image_size
        self.field = NOISE_SCALE * noise_field(image_size // 8 - 1, seed)  # (3,n,n): the largest patch

    def patches(self, batch_size, generator, device):
        """(B,3,S,S) noise, zero outside each image's patch, in [0, 1] pixel units."""
        s, n = self.image_size, self.field.shape[-1]
        h = torch.randint(MIN_PATCH, s // 8, (batch_size,), generator=generator)
        w = torch.randint(MIN_PATCH, s // 8, (batch_size,), generator=generator)
        top = 1 + (torch.rand(batch_size, generator=generator) * (s - 1 - h)).long()  # uniform in [1, s - h)
        left = 1 + (torch.rand(batch_size, generator=generator) * (s - 1 - w)).long()
        pixels = torch.arange(s)
        dy = pixels[None] - top[:, None]  # (B,S): row offset inside the patch
        dx = pixels[None] - left[:, None]  # (B,S)
        inside = ((dy >= 0) & (dy < h[:, None]))[:, :, None] & ((dx >= 0) & (dx < w[:, None]))[:, None, :]  # (B,S,S)
        field = self.field.to(device)
        noise = field[:, dy.clamp(0, n - 1)[:, :, None].to(device), dx.clamp(0, n - 1)[:, None, :].to(device)]  # (3,B,S,S)
        return noise.transpose(0, 1) * inside[:, None].to(device)  # (B,3,S,S)

    def __call__(self, x, generator):
        """ImageNet-normalised images x (B,3,S,S) -> the same images with a noise patch each, normalised alike."""
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return x + self.patches(len(x), generator, x.device) / std  # (x01 + noise - mean) / std


def step_generator(seed, step):
    """A CPU generator for one training step's noise and shuffle, from (seed, step) alone: a resumed run draws
    exactly what an uninterrupted one draws."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))
