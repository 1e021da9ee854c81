"""Architecture against the official code (hq-deng/RD4AD): parameter counts, output shapes, official key names, a frozen teacher.
Counts, names and shapes are checked on the meta device: the modules are built and run without memory or arithmetic."""

import pytest
import torch
import torchvision

from model import BACKBONES, OCBE, Decoder, build_encoder, build_loaded, build_model

# the official modules' parameter counts (OCBE with its unused conv4/bn4, decoder)
PARAMETER_COUNTS = {
    "resnet18": (12_205_312, 3_703_168),
    "resnet34": (16_925_952, 5_770_624),
    "resnet50": (39_222_272, 15_821_824),
    "wide_resnet50_2": (67_277_824, 24_917_504),
}


@pytest.fixture
def on_meta():
    """Modules built in the test are on the meta device: shapes and names without memory or arithmetic."""
    with torch.device("meta"):
        yield


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("backbone", PARAMETER_COUNTS)
def test_parameter_counts(on_meta, backbone):
    assert (count(OCBE(backbone)), count(Decoder(backbone))) == PARAMETER_COUNTS[backbone]


def test_wide_resnet101_2_builds(on_meta):
    assert "wide_resnet101_2" in BACKBONES
    assert count(OCBE("wide_resnet101_2")) == PARAMETER_COUNTS["wide_resnet50_2"][0]  # same OCBE
    assert len(Decoder("wide_resnet101_2").layer3) == 23  # mirrors the teacher's 23-block layer3


@pytest.mark.parametrize("backbone,channels", [("resnet18", (64, 128, 256)), ("wide_resnet50_2", (256, 512, 1024))])
def test_shapes_at_256(on_meta, backbone, channels):
    encoder, ocbe, decoder = build_model(backbone, weights="none")
    ocbe.eval(), decoder.eval()
    with torch.no_grad():
        teacher = encoder(torch.randn(1, 3, 256, 256))
        z = ocbe(teacher)
        student = decoder(z)
    expected = [(1, c, s, s) for c, s in zip(channels, (64, 32, 16))]
    assert [tuple(f.shape) for f in teacher] == expected
    assert [tuple(f.shape) for f in student] == expected
    assert tuple(z.shape) == (1, 2 * channels[2], 8, 8)


def test_official_key_names(on_meta):
    bn = OCBE("wide_resnet50_2").state_dict()
    decoder = Decoder("wide_resnet50_2").state_dict()
    for k in ("conv1.weight", "conv4.weight", "bn4.running_var", "bn_layer.0.downsample.0.weight",
              "bn_layer.0.downsample.1.weight", "bn_layer.2.conv3.weight", "bn_layer.2.bn3.bias"):
        assert k in bn
    for k in ("layer1.0.upsample.0.weight", "layer1.0.upsample.1.running_mean", "layer3.5.conv3.weight",
              "layer2.3.bn2.weight", "layer3.0.conv2.weight"):
        assert k in decoder
    assert {k.split(".")[0] for k in decoder} == {"layer1", "layer2", "layer3"}
    assert isinstance(Decoder("wide_resnet50_2").layer1[0].conv2, torch.nn.ConvTranspose2d)


def test_teacher_loads_torchvision_file_and_stays_frozen(tmp_path):
    reference = torchvision.models.resnet18()
    torch.nn.init.normal_(reference.bn1.running_mean)  # make the BN statistics non-trivial
    path = tmp_path / "resnet18-random.pth"
    torch.save(reference.state_dict(), path)
    encoder = build_encoder("resnet18", weights=str(path))
    theirs = reference.state_dict()
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder.train()  # asking for train mode must not unfreeze BatchNorm
    assert not encoder.training and not any(m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    out = encoder(torch.randn(2, 3, 64, 64))
    assert not any(f.requires_grad for f in out)
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_random_teacher_is_reproducible():
    a = build_encoder("resnet18", weights="none", seed=3).state_dict()
    b = build_encoder("resnet18", weights="none", seed=3).state_dict()
    c = build_encoder("resnet18", weights="none", seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_random_teacher_is_torchvisions_seeded_init():
    """weights=none: exactly the torchvision model initialised from the seed, as before skip-init existed."""
    torch.manual_seed(3)
    reference = torchvision.models.resnet18().state_dict()
    ours = build_encoder("resnet18", weights="none", seed=3).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in ours.items())


def test_loaded_modules_skip_the_init_and_hold_exactly_the_weights(tmp_path):
    """build_loaded (teacher from a file, OCBE/decoder from a checkpoint): nothing left on the meta device, every
    tensor equal to the file's, a half-precision file cast to float32 as load_state_dict would, no random
    numbers drawn from the caller's stream, and a missing key still an error."""
    torch.manual_seed(0)
    teacher = torchvision.models.resnet18()
    path = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in teacher.state_dict().items()}, path)
    _, ocbe, decoder = build_model("resnet18", weights="none")
    rng = torch.get_rng_state()
    loaded = [build_encoder("resnet18", weights=str(path)), build_loaded(lambda: OCBE("resnet18"), ocbe.state_dict()),
              build_loaded(lambda: Decoder("resnet18"), decoder.state_dict())]
    assert torch.equal(torch.get_rng_state(), rng)
    references = [{k: v.half().float() if v.is_floating_point() else v for k, v in teacher.state_dict().items()},
                  ocbe.state_dict(), decoder.state_dict()]
    for module, reference in zip(loaded, references):
        state = module.state_dict()
        assert all(v.device.type == "cpu" and v.dtype == reference[k].dtype and torch.equal(v, reference[k]) for k, v in state.items())
    partial = dict(ocbe.state_dict())
    partial.pop("conv1.weight")
    with pytest.raises(RuntimeError, match="Missing key"):
        build_loaded(lambda: OCBE("resnet18"), partial)
