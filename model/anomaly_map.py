"""
The anomaly map of teacher and student features: per tap 1 - cosine similarity along channels, upsampled to the
image size, combined, blurred as scipy.ndimage.gaussian_filter does. model/scoring.py scores images with it,
export.py puts it in the exported graph.

    maps = anomaly_map(teacher_features, student_features, size=256)  # (B,256,256), blurred
    maps = anomaly_map(teacher_features, student_features, size=(768, 1024))  # (B,768,1024): (height, width)
    native = resize_map(maps[0], (1700, 2400))  # (1700,2400) numpy float32: a map at its image's own size
    for native in NativeMaps(maps, sizes): ...   # each map at sizes[i], one in memory at a time

The blur's sigma is 4 pixels of the scored image at any image size, RD4AD's value at 256 kept, not scaled with the
size: the feature maps' strides are fixed in pixels, so a defect of a given size in pixels gets the same map
whatever the image size; docs/high_resolution.md measures the alternative.
"""

import torch
import torch.nn.functional as F

from utils.config import size_hw


def symmetric_indices(n, radius, device):
    """Indices of a length-n axis padded by `radius` on both sides the way scipy.ndimage's mode='reflect'
    does (d c b a | a b c d | d c b a: the edge pixel repeats), for any n, even n < radius."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def gaussian_blur(maps, sigma=4.0, truncate=4.0):
    """scipy.ndimage.gaussian_filter(map, sigma) on each (H,W) map of a (B,H,W) tensor, on its device.

    Same 2*int(truncate*sigma+0.5)+1 taps (33 for sigma 4) and the same 'reflect' boundary as scipy;
    torch's own 'reflect' padding skips the edge pixel, so the padding is done by index.
    """
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    _, h, w = maps.shape
    out = maps[:, None]  # (B,1,H,W)
    out = out[..., symmetric_indices(w, radius, maps.device)]  # (B,1,H,W+2r)
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))  # (B,1,H,W)
    out = out[..., symmetric_indices(h, radius, maps.device), :]  # (B,1,H+2r,W)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))  # (B,1,H,W)
    return out[:, 0]


def anomaly_map(teacher_features, student_features, size, mode="add", sigma=4.0):
    """(B,H,W) anomaly maps at size (H,W) (an int: a square): per tap 1 - cos along channels, bilinear upsampling
    with align_corners=True, combined by sum ('add', the paper's numbers) or product ('mul'), then blurred."""
    size = size_hw(size)
    combined = None
    for t, s in zip(teacher_features, student_features):
        distance = 1 - F.cosine_similarity(t.float(), s.float(), dim=1)  # (B,h,w)
        distance = F.interpolate(distance[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
        if combined is None:
            combined = distance
        elif mode == "add":
            combined = combined + distance
        else:
            combined = combined * distance
    return gaussian_blur(combined, sigma)  # (B,H,W)


def resize_map(amap, size):
    """An (H,W) map resized to size (H',W') bilinearly, pixel centres aligned (align_corners=False, as an image is
    resized): a map scored at image_size brought to its image's own size (eval_size=native, MVTec AD 2's
    submission). A float32 numpy array."""
    return F.interpolate(amap[None, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


class NativeMaps:
    """Maps (N,H,W) resized one at a time to sizes[i] = (H_i, W_i) (resize_map): a sequence that holds one native
    map at a time, for what reads maps image by image (evaluation.threshold.validation_threshold, a submission's
    files): native images have millions of pixels."""

    def __init__(self, maps, sizes):
        self.maps, self.sizes = maps, sizes

    def __len__(self):
        return len(self.maps)

    def __iter__(self):
        for amap, size in zip(self.maps, self.sizes):
            yield resize_map(amap, size)
