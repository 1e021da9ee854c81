"""
A scoring network as one ONNX graph, and that graph quantised to int8 for OpenVINO: what export.py writes and
scripts/benchmark.py times. The optional packages (requirements-deploy.txt) are imported where they are used.

    scorer = ImageScorer(network, image_size, "add").eval()   # uint8 (N,3,H,W) -> maps (N,H,W), scores (N,)
    model = export_onnx(scorer, image_size, {"format": ...})   # an onnx.ModelProto with a dynamic batch size
    int8_model = quantize_openvino("model.onnx", calibration_images)
"""

import logging
import os

import numpy as np
import torch

from model.anomaly_map import anomaly_map
from model.encoder import normalize
from utils.config import ConfigError, size_hw


class ImageScorer(torch.nn.Module):
    """uint8 images (N,3,H,W) -> anomaly maps (N,H,W), scores (N,): test.py's scoring of one batch as one module;
    image_size: an int (a square) or (height, width)."""

    def __init__(self, network, image_size, mode):
        super().__init__()
        self.network, self.image_size, self.mode = network, size_hw(image_size), mode

    def forward(self, images):
        teacher, student = self.network(normalize(images))  # 3 taps each
        maps = anomaly_map(teacher, student, self.image_size, self.mode)  # (N,H,W)
        return maps, maps.flatten(1).amax(dim=1)


def import_deploy_packages(*names):
    """The optional packages of requirements-deploy.txt, with a one-line error when one is missing."""
    try:
        return [__import__(name) for name in names]
    except ImportError as e:
        raise ConfigError(f"{e.name} is not installed: pip install -r requirements-deploy.txt") from None


def export_onnx(scorer, image_size, metadata):
    """The scorer as an ONNX ModelProto with a dynamic batch size and the metadata (a dict of strings)."""
    import onnx

    example = torch.randint(0, 256, (2, 3, *size_hw(image_size)), dtype=torch.uint8)  # 2: a batch size not fixed to 1
    program = torch.onnx.export(scorer, (example,), input_names=["image"], output_names=["anomaly_map", "score"],
                                dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False)
    model = program.model_proto
    onnx.helper.set_model_props(model, metadata)
    return model


def write_openvino(model, path):
    """An OpenVINO model as path (.xml) + its .bin, both written beside and renamed, so no half model is left."""
    import openvino

    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp.xml")
    try:
        openvino.save_model(model, tmp, compress_to_fp16=False)
        os.replace(tmp[:-4] + ".bin", path[:-4] + ".bin")
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp[:-4] + ".bin"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def openvino_scores(model, images, batch):
    """Maps (N,S,S) and scores (N,) of uint8 images (N,3,S,S) with an OpenVINO model, compiled in f32
    (this CPU's default precision hint may be bf16)."""
    import openvino

    compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outputs = [compiled(images[i:i + batch]) for i in range(0, len(images), batch)]
    maps = np.concatenate([o["anomaly_map"] for o in outputs])
    return torch.from_numpy(maps), torch.from_numpy(np.concatenate([o["score"] for o in outputs]))


def anomaly_map_ops(model):
    """Names of the ops of an OpenVINO model from the per-tap cosine on (its norms, ReduceL2, and everything
    after them: upsampling, sum, blur, max): the int8 model keeps these in float, so that the maps are not
    rounded to 256 levels between the taps and the outputs."""
    frontier = [op for op in model.get_ordered_ops() if op.get_type_name() == "ReduceL2"]
    if not frontier:
        raise RuntimeError("int8: no ReduceL2 (the cosine's norm) in the exported graph; cannot tell the anomaly map's ops from the networks'")
    names = set()
    while frontier:
        op = frontier.pop()
        if op.get_friendly_name() not in names:
            names.add(op.get_friendly_name())
            frontier += [target.get_node() for output in op.outputs() for target in output.get_target_inputs()]
    return sorted(names)


def ancestors(output):
    """The ops an OpenVINO op output is computed from, itself included."""
    found, frontier = {}, [output.get_node()]
    while frontier:
        op = frontier.pop()
        if op.get_friendly_name() not in found:
            found[op.get_friendly_name()] = op
            frontier += [source.get_source_output().get_node() for source in op.inputs()]
    return found


def cosine_inputs(model):
    """The outputs the per-tap cosines read, teacher's and student's (the inputs of the norms, ReduceL2)."""
    return [op.input(0).get_source_output() for op in model.get_ordered_ops() if op.get_type_name() == "ReduceL2"]


def teacher_first_stage_ops(model):
    """Names of every op from the image to the teacher's first tap (normalisation, stem and layer1), the
    convolutions and their residual additions alike: NNCF also quantises an addition's inputs, so leaving only
    the convolutions float still rounds the first tap at each of layer1's residual sums. Of the two taps of the
    highest resolution, the teacher's layer1 and the student's last, the teacher's has fewer ancestors."""
    taps = cosine_inputs(model)
    height = max(tap.get_partial_shape()[2].get_length() for tap in taps)
    return sorted(min((ancestors(tap) for tap in taps if tap.get_partial_shape()[2].get_length() == height), key=len))


def quantize_openvino(onnx_path, calibration_images):
    """The ONNX model at onnx_path as an OpenVINO model quantised to int8 by NNCF post-training quantisation,
    calibrated on uint8 images (N,3,S,S).

    Measured on the demo data (docs/deployment.md): activation ranges are the calibration images' extremes
    (NNCF's MINMAX), not their means, because anomalous images reach beyond the normal images' typical range
    and clipping them there erases the anomaly; the anomaly map's ops (from the cosine on) and the teacher's
    first stage stay float, the parts whose rounding moved the metrics most, at a few % of the arithmetic."""
    nncf, openvino = import_deploy_packages("nncf", "openvino")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    nncf.set_log_level(logging.WARNING)  # not a line per op it leaves alone
    fp32_model = openvino.Core().read_model(onnx_path)
    calibration = nncf.Dataset([image[None] for image in calibration_images])  # batches of 1
    float_ops = anomaly_map_ops(fp32_model) + teacher_first_stage_ops(fp32_model)
    return nncf.quantize(fp32_model, calibration, subset_size=len(calibration_images),
                         ignored_scope=nncf.IgnoredScope(names=float_ops, validate=False),
                         advanced_parameters=AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX))
