"""Teacher weights as a user without network gets them: a file copied into torch's cache is used; with neither
cache nor network, one clear message names the expected file and the two ways out."""

import os
import urllib.error

import pytest
import torch
import torchvision

from model.encoder import build_encoder, imagenet_weights
from utils.config import ConfigError


def test_imagenet_weights_are_v1_not_default():
    assert imagenet_weights("wide_resnet50_2").url.endswith("wide_resnet50_2-95faca4d.pth")


def test_file_copied_into_the_cache_is_loaded_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # re-read TORCH_HOME
    reference = torchvision.models.resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / os.path.basename(imagenet_weights("resnet18").url))
    encoder = build_encoder("resnet18", weights="imagenet")
    assert torch.equal(encoder.conv1.weight, reference.conv1.weight)


def test_no_cache_and_no_network_names_the_file_and_the_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError) as error:
        build_encoder("wide_resnet50_2", weights="imagenet")
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / "hub" / "checkpoints" / "wide_resnet50_2-95faca4d.pth") in message
    assert "--weights=/path/to/wide_resnet50_2-95faca4d.pth" in message and "--weights=none" in message
