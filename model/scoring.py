"""
Scoring images: the teacher and student as one network, BatchNorms folded, and the anomaly maps and scores of a
set of images. test.py, predict.py, calibrate.py, export.py and model/checkpoint.py's load_network use it.

    network = inference_network(encoder, ocbe, decoder)          # RD; + proj for RD++
    maps, scores = predict(network, images)                      # uint8 (N,3,S,S) -> (N,S,S), (N,)
"""

import copy

import torch
from torch.fx.experimental.optimization import fuse

from model.anomaly_map import anomaly_map
from model.encoder import normalize
from utils.config import ConfigError

MAP_MODES = ("add", "mul")  # how the three per-tap maps are combined: summed (the reported numbers) or multiplied


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
    (docs/speed.md; not measured on a GPU). The given modules are left as they are."""
    network = copy.deepcopy(TeacherStudent(encoder, ocbe, decoder, proj)).eval()
    network = fuse(network, inplace=True)  # a torch.fx graph module, BatchNorms folded
    return network.to(memory_format=torch.channels_last)


def anomaly_scorer(network, mode="add", amp=False, compile=False):
    """A function of normalised images (B,3,H,W), on the network's device, to their anomaly maps (B,H,W) float32."""

    def score(x):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            teacher, student = network(x)  # 3 taps each; channels_last from the first conv on
        return anomaly_map(teacher, student, tuple(x.shape[-2:]), mode)  # (B,H,W)

    if not compile:
        return score
    # "freezing" makes the weights constants of the graph, which inductor can pre-pack for oneDNN;
    # one static shape, so no recompilation for the batch size (predict pads the last batch).
    return torch.compile(score, dynamic=False, options={"freezing": True})


@torch.inference_mode()
def predict(network, images, batch_size=16, mode="add", amp=False, compile=False):
    """Anomaly maps (N,H,W) float32 and image scores (N,) = map maxima, on the CPU, for uint8 images
    (N,3,H,W) on any device; `network` from inference_network(). Every image is scored on its own, whole, in one
    pass (no tiles, so no seams), so the batch size does not change a score."""
    device = next(network.parameters()).device
    score = anomaly_scorer(network, mode, amp, compile)
    batch_size = min(batch_size, len(images))
    maps = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size].to(device)  # (B,3,H,W)
        n = len(batch)
        if compile and n < batch_size:  # the compiled shape: repeat the last image rather than compile again
            batch = torch.cat([batch, batch[-1:].expand(batch_size - n, -1, -1, -1)])
        maps.append(score(normalize(batch))[:n].cpu())  # (B,H,W)
    maps = torch.cat(maps)  # (N,H,W)
    return maps, maps.flatten(1).amax(dim=1)


def check_scoring(map_mode, batch_size):
    """A ConfigError for settings that cannot score: each command that scores checks its own with this."""
    if map_mode not in MAP_MODES:
        raise ConfigError(f"--map_mode={map_mode}: must be {' or '.join(MAP_MODES)}")
    if batch_size < 1:
        raise ConfigError(f"--batch_size={batch_size}: must be at least 1")
