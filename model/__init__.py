"""Reverse Distillation's three parts: frozen teacher encoder, trainable OCBE (`bn`) and student decoder."""

from model.bn_fusion import OCBE
from model.de_resnet import Decoder
from model.encoder import BACKBONES, build_encoder, build_loaded


def build_model(backbone, weights="imagenet", seed=0):
    """(encoder, ocbe, decoder) for a backbone name; see model/encoder.py for `weights` and `seed`."""
    return build_encoder(backbone, weights, seed), OCBE(backbone), Decoder(backbone)


__all__ = ["BACKBONES", "OCBE", "Decoder", "build_encoder", "build_loaded", "build_model"]
