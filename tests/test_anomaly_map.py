"""The anomaly map: the device blur equals scipy's gaussian_filter, maps follow the official formula (per tap
1 - cosine along channels, bilinear upsampling with align_corners=True, summed or multiplied, sigma-4 blur), and
the test batch size changes no score."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from model import build_model
from model.anomaly_map import anomaly_map, gaussian_blur
from model.encoder import normalize, teacher_features
from model.losses import cosine_loss
from model.scoring import inference_network, predict


@pytest.mark.parametrize("shape", [(3, 256, 256), (2, 64, 48), (1, 7, 5), (1, 1, 40)])
def test_blur_equals_scipy(shape):
    torch.manual_seed(0)
    maps = torch.rand(*shape) * 3
    ours = gaussian_blur(maps).numpy()
    reference = np.stack([gaussian_filter(m, sigma=4) for m in maps.numpy().astype(np.float64)])
    value_range = reference.max() - reference.min() or 1.0
    assert np.abs(ours - reference).max() <= 1e-5 * value_range


def test_map_follows_the_formula():
    torch.manual_seed(1)
    teacher = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    student = [t + 0.5 * torch.randn_like(t) for t in teacher]
    for mode, combine in (("add", np.add), ("mul", np.multiply)):
        expected = None
        for t, s in zip(teacher, student):
            d = 1 - F.cosine_similarity(t, s, dim=1)[:, None]
            d = F.interpolate(d, size=32, mode="bilinear", align_corners=True)[:, 0].numpy().astype(np.float64)
            expected = d if expected is None else combine(expected, d)
        expected = np.stack([gaussian_filter(m, sigma=4) for m in expected])
        assert np.allclose(anomaly_map(teacher, student, 32, mode).numpy(), expected, atol=1e-5)


def test_loss_is_zero_for_identical_features_and_flattened():
    torch.manual_seed(2)
    features = [torch.randn(3, 4, 8, 8), torch.randn(3, 8, 4, 4)]
    assert cosine_loss(features, [f.clone() for f in features]).item() == pytest.approx(0.0, abs=1e-6)
    # the official loss compares whole C*H*W vectors, not pixel by pixel
    other = [torch.randn_like(f) for f in features]
    flat = sum((1 - F.cosine_similarity(a.flatten(1), b.flatten(1))).mean() for a, b in zip(features, other))
    assert cosine_loss(features, other).item() == pytest.approx(flat.item(), abs=1e-6)


def test_batch_size_changes_no_score():
    torch.manual_seed(3)
    encoder, ocbe, decoder = build_model("resnet18", weights="none")
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    network = inference_network(encoder, ocbe, decoder)
    maps1, scores1 = predict(network, images, batch_size=1)
    maps5, scores5 = predict(network, images, batch_size=5)
    assert maps1.shape == (5, 64, 64)
    assert torch.allclose(scores1, scores5, atol=1e-6)
    assert torch.allclose(maps1, maps5, atol=1e-6)
    assert torch.equal(scores1, maps1.flatten(1).amax(1))


def test_inference_network_computes_the_same_and_leaves_the_modules_alone():
    torch.manual_seed(4)
    encoder, ocbe, decoder = build_model("resnet18", weights="none")
    for bn in (m for net in (encoder, ocbe, decoder) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        # statistics and affine parameters far from the identity, so that folding them is really tested
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.5, 0.5)
    ocbe.train(), decoder.train()
    states = [{k: v.clone() for k, v in net.state_dict().items()} for net in (encoder, ocbe, decoder)]
    x = torch.randn(2, 3, 64, 64)

    network = inference_network(encoder, ocbe, decoder)
    assert ocbe.training and decoder.training  # the given modules keep their mode
    count = lambda net: sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # noqa: E731
    # only the BatchNorms after the decoder's transposed convs are left (torch.fx folds Conv2d + BatchNorm2d)
    assert count(network) == sum(isinstance(m, torch.nn.ConvTranspose2d) for m in decoder.modules()) < count(decoder)
    with torch.no_grad():
        teacher, student = network(x)
        ocbe.eval(), decoder.eval()
        plain_teacher = encoder(x)
        plain_student = decoder(ocbe(plain_teacher))
    for ours, plain in zip(teacher + student, plain_teacher + plain_student):
        assert torch.allclose(ours, plain, rtol=1e-4, atol=1e-4 * plain.abs().max().item())
    for net, state in zip((encoder, ocbe, decoder), states):
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


@pytest.mark.slow  # torch.compile: a one-off compile of several seconds
def test_compiled_scoring_equals_eager():
    """compile=True: frozen weights, one static shape (the last, smaller batch is padded), same maps."""
    torch.manual_seed(5)
    network = inference_network(*build_model("resnet18", weights="none"))
    images = torch.randint(0, 256, (7, 3, 64, 64), dtype=torch.uint8)
    maps, scores = predict(network, images, batch_size=3)
    compiled_maps, compiled_scores = predict(network, images, batch_size=3, compile=True)
    tolerance = 1e-5 * (maps.max() - maps.min()).item()
    assert compiled_maps.shape == (7, 64, 64)
    assert torch.allclose(compiled_maps, maps, atol=tolerance)
    assert torch.allclose(compiled_scores, scores, atol=tolerance)


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_teacher_cache_is_the_encoders_output(amp):
    """train.py's teacher cache (in batches, written into preallocated tensors) holds exactly the encoder's
    features of the same batches, and a training step can backpropagate through what uses them."""
    torch.manual_seed(6)
    encoder, ocbe, decoder = build_model("resnet18", weights="none")
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    cache = teacher_features(encoder, images, batch_size=2, amp=amp)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        chunks = [encoder(normalize(images[i:i + 2])) for i in range(0, 5, 2)]
    for ours, reference in zip(cache, (torch.cat(tap) for tap in zip(*chunks))):
        assert ours.dtype == reference.dtype and torch.equal(ours, reference)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        reconstructed = decoder(ocbe(cache))
    cosine_loss(cache, reconstructed).backward()
    assert all(p.grad is not None for p in decoder.parameters())
