"""Reverse Distillation's three parts: frozen teacher encoder, trainable OCBE (`bn`) and student decoder, and
RD++'s multi-projection layer (`proj`) that sits between the teacher and the OCBE. Beside them: the teacher's
input normalisation and feature cache (model/encoder.py), RD++'s student (model/projection.py), the training
losses (model/losses.py, which needs geomloss) and the scoring network with its predict (model/scoring.py)."""

from model.bn_fusion import OCBE
from model.de_resnet import Decoder
from model.encoder import BACKBONES, build_encoder, build_loaded
from model.projection import MultiProjection

METHODS = ("rd", "rd++")  # RD (CVPR 2022); RD++ (CVPR 2023) adds the projection layer and its losses


def build_model(backbone, weights="imagenet", seed=0):
    """(encoder, ocbe, decoder) for a backbone name; see model/encoder.py for `weights` and `seed`."""
    return build_encoder(backbone, weights, seed), OCBE(backbone), Decoder(backbone)


__all__ = ["BACKBONES", "METHODS", "OCBE", "Decoder", "MultiProjection", "build_encoder", "build_loaded", "build_model"]
