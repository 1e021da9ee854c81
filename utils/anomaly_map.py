"""
Teacher-student cosine distance: the training loss and the test-time anomaly map.

    loss = cosine_loss(teacher_features, student_features)           # scalar, for training
    maps = anomaly_map(teacher_features, student_features, size=256)  # (B,256,256), blurred, for testing
    maps, scores = predict(inference_network(encoder, ocbe, decoder), images)  # a whole test set
    maps, scores = predict(inference_network(encoder, ocbe, decoder, proj), images)  # RD++
"""

import copy

import torch
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse

from dataset import normalize


def cosine_loss(teacher_features, student_features):
    """Sum over taps of the batch mean of 1 - cos between whole flattened (C*H*W) feature maps.

    This is the official code's loss; the paper's per-pixel form (Eq. 2) is reported to score lower.
    """
    loss = 0.0
    for t, s in zip(teacher_features, student_features):
        loss = loss + (1 - F.cosine_similarity(t.flatten(1).float(), s.flatten(1).float())).mean()
    return loss


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
    """(B,size,size) anomaly maps: per tap 1 - cos along channels, bilinear upsampling with
    align_corners=True, combined by sum ('add', the paper's numbers) or product ('mul'), then blurred."""
    combined = None
    for t, s in zip(teacher_features, student_features):
        distance = 1 - F.cosine_similarity(t.float(), s.float(), dim=1)  # (B,h,w)
        distance = F.interpolate(distance[:, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0]
        if combined is None:
            combined = distance
        elif mode == "add":
            combined = combined + distance
        else:
            combined = combined * distance
    return gaussian_blur(combined, sigma)  # (B,size,size)


class TeacherStudent(torch.nn.Module):
    """image -> (teacher taps, student taps): the networks as one module. With RD++'s projection layer `proj`
    the student reads the projected taps, but is still compared with the teacher's own (unprojected) taps."""

    def __init__(self, encoder, ocbe, decoder, proj=None):
        super().__init__()
        self.encoder, self.ocbe, self.decoder, self.proj = encoder, ocbe, decoder, proj

    def forward(self, x):
        teacher = self.encoder(x)
        student_input = teacher if self.proj is None else self.proj(teacher)
        return teacher, self.decoder(self.ocbe(student_input))


def inference_network(encoder, ocbe, decoder, proj=None):
    """A copy of the networks for scoring: the same function, computed faster. Every eval-mode
    BatchNorm is folded into the convolution before it (one pass over the feature map less per layer) and
    the weights are channels_last, oneDNN's preferred layout; together 6-13% less time per image on a CPU
    (README, Speed; not measured on a GPU). The given modules are left as they are."""
    network = copy.deepcopy(TeacherStudent(encoder, ocbe, decoder, proj)).eval()
    network = fuse(network, inplace=True)  # a torch.fx graph module, BatchNorms folded
    return network.to(memory_format=torch.channels_last)


def anomaly_scorer(network, mode="add", amp=False, compile=False):
    """A function of normalised images (B,3,S,S), on the network's device, to their anomaly maps (B,S,S) float32."""

    def score(x):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            teacher, student = network(x)  # 3 taps each; channels_last from the first conv on
        return anomaly_map(teacher, student, x.shape[-1], mode)  # (B,S,S)

    if not compile:
        return score
    # "freezing" makes the weights constants of the graph, which inductor can pre-pack for oneDNN;
    # one static shape, so no recompilation for the batch size (predict pads the last batch).
    return torch.compile(score, dynamic=False, options={"freezing": True})


@torch.inference_mode()
def predict(network, images, batch_size=16, mode="add", amp=False, compile=False):
    """Anomaly maps (N,S,S) float32 and image scores (N,) = map maxima, on the CPU, for uint8 images
    (N,3,S,S) on any device; `network` from inference_network(). Every image is scored on its own, so the
    batch size does not change a score."""
    device = next(network.parameters()).device
    score = anomaly_scorer(network, mode, amp, compile)
    batch_size = min(batch_size, len(images))
    maps = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size].to(device)  # (B,3,S,S)
        n = len(batch)
        if compile and n < batch_size:  # the compiled shape: repeat the last image rather than compile again
            batch = torch.cat([batch, batch[-1:].expand(batch_size - n, -1, -1, -1)])
        maps.append(score(normalize(batch))[:n].cpu())  # (B,S,S)
    maps = torch.cat(maps)  # (N,S,S)
    return maps, maps.flatten(1).amax(dim=1)
