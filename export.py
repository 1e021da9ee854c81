"""
Export a trained checkpoint to one ONNX graph that scores images as test.py does, for onnxruntime or OpenVINO
on a machine without torch (scripts/predict_onnx.py).

    $ python export.py --checkpoint=runs/bottle/checkpoint.pth              # -> runs/bottle/model.onnx
    $ python export.py --checkpoint=runs/bottle/checkpoint.pth --int8=1     # + runs/bottle/model_int8.xml/.bin
    $ python export.py --checkpoint=wres50_bottle.pth --data_root=data/mvtec --category=bottle   # official checkpoint
    $ python scripts/predict_onnx.py --model=runs/bottle/model.onnx --images=new/

The graph takes `image`, uint8 RGB (N,3,H,W) already resized to the image size H x W (any N), and does the rest
inside: /255, ImageNet normalisation, teacher, student (RD or RD++, BatchNorms folded), per tap 1 - cosine
similarity, bilinear upsampling (align_corners=True), the maps combined by map_mode, the sigma-4 Gaussian blur
with scipy's 'reflect' boundary. Outputs: `anomaly_map` (N,H,W) float32 and `score` (N,) float32, the map maximum.
Before writing, the graph is run with onnxruntime on random images and must give test.py's maps.

Its metadata (ONNX metadata_props, strings) says what a deployment needs; see METADATA below. The F1-max threshold
and heatmap range come from results.json of this checkpoint's last evaluation (test.py) at this image size and
map_mode; without one they are empty and the export says so. `threshold`, the one to use, is predict.py's:
threshold.json beside the checkpoint (calibrated on good images, calibrate.py) where there is one, else
the F1-max threshold (evaluation/threshold.py).

--int8=1 also writes an OpenVINO model quantised to int8 (NNCF post-training quantisation, calibrated on the
category's training images), scores the test split with it and with the fp32 graph, prints both metrics, and
stores the int8 model's own F1-max threshold and heatmap range of that test split in its metadata.

Settings are test.py's, for the same reasons: an official checkpoint (no config) needs --data_root and --category,
and --backbone/--image_size/--weights when not wide_resnet50_2/256/imagenet. Needs requirements-deploy.txt.
"""

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import torch

from dataset import load_test_set, load_train_images
from evaluation.metrics import compute_metrics, metrics_line
from evaluation.results import find_evaluation
from evaluation.threshold import choose_threshold
from model.checkpoint import CHECKPOINT_SETTINGS, load_checkpoint, load_network, resolve_settings
from model.onnx_export import ImageScorer, export_onnx, import_deploy_packages, openvino_scores, quantize_openvino, write_openvino
from model.scoring import check_scoring, predict
from utils.config import ConfigError, apply_overrides, run_cli, script_settings, size_hw
from utils.files import atomic_write, check_outputs, first_line
from utils.runs import category_folder
from utils.runtimes import FORMAT, SCORE_TOLERANCE

# -----------------------------------------------------------------------------
checkpoint = ""  # path of a checkpoint written by train.py, or an official RD4AD one
out = ""  # the ONNX file to write; default: model.onnx beside the checkpoint
data_root = ""  # default: the checkpoint's training data_root (--int8: its train/ calibrates, its test/ is scored)
category = ""  # default: the checkpoint's category
out_dir = ""  # where test.py wrote results.json; default: the checkpoint's out_dir
weights = ""  # teacher weights, default: the checkpoint's ('imagenet' for official checkpoints)
backbone = ""  # default: the checkpoint's ('wide_resnet50_2' for official checkpoints)
image_size = 0  # default: the checkpoint's (256 for official checkpoints); the graph's fixed input size
map_mode = "add"  # add | mul: how the three per-tap maps are combined, as test.py
int8 = False  # also write <out without .onnx>_int8.xml/.bin: OpenVINO int8, calibrated on the training images
calibration_images = 300  # --int8: at most this many training images calibrate the quantisation (NNCF's default)
debug = False  # show Python tracebacks for user errors
# -----------------------------------------------------------------------------
config_keys = list(script_settings(__file__))  # the names of the settings above: what --name=value may set

METADATA = {  # key: meaning; every value is a string
    "format": f"always {FORMAT}: the graph's inputs, outputs and metadata are the ones described here",
    "method": "rd | rd++",
    "backbone": "the teacher, e.g. wide_resnet50_2",
    "image_size": "S or H,W: the input is (N,3,S,S) or (N,3,H,W) uint8 RGB, resized to it with PIL's bilinear filter",
    "map_mode": "add | mul: how the three per-tap maps are combined",
    "precision": "fp32 | int8",
    "image_f1_threshold": "a score >= it is anomalous (F1-max threshold of the evaluation); empty without one",
    "threshold": "the threshold to use: threshold.json's (calibrated on good images) if any, else image_f1_threshold; empty without either",
    "threshold_source": "where `threshold` comes from, or why there is none",
    "heatmap_range": "'lo,hi': the evaluation's anomaly map range, the heatmap colour scale; empty without one",
    "evaluation": "where threshold and range come from (a results.json), or why there are none",
    "checkpoint": "the exported checkpoint's path",
    "version": "the project's version: `git describe --always --dirty` of the exporting checkout",
}


def project_version():
    root = os.path.dirname(os.path.abspath(__file__))
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown (git not found)"
    return described.stdout.strip() if described.returncode == 0 else "unknown (not a git checkout)"


def evaluation_metadata(checkpoint, settings, map_mode):
    """image_f1_threshold, heatmap_range and evaluation metadata from results.json of test.py, and threshold and
    threshold_source as predict.py chooses them (threshold.json first), printing what it found."""
    folder = category_folder(settings, settings["category"])  # a unified model's: <out_dir>/<run name>/<category>
    saved, problem = find_evaluation(folder, checkpoint, settings["image_size"], map_mode)
    path = os.path.join(folder, "results.json")
    choice = choose_threshold(None, checkpoint, settings["image_size"], map_mode, saved)
    chosen = {"threshold": repr(choice.value) if choice.value is not None else "", "threshold_source": choice.source}
    if choice.calibration:
        print(f"threshold {choice.value:.6f} from {choice.calibration['path']}")
    if problem or not saved.get("heatmap_range"):
        reason = problem or f"{path} holds no heatmap_range"
        print(f"note: no evaluation: {reason}; the model carries no F1-max threshold and no heatmap range "
              f"(evaluate with python test.py --checkpoint={checkpoint} and export again, or give predict_onnx.py --threshold)")
        return {"image_f1_threshold": "", "heatmap_range": "", "evaluation": f"none: {reason}", **chosen}
    lo, hi = saved["heatmap_range"]
    print(f"F1-max threshold {saved['image_f1_threshold']:.6f} and heatmap range from {path}")
    return {"image_f1_threshold": repr(saved["image_f1_threshold"]), "heatmap_range": f"{lo!r},{hi!r}", "evaluation": path, **chosen}


def check_parity(model, network, image_size, map_mode):
    """Run the graph with onnxruntime on 3 random images; its maps and scores must be test.py's (model.scoring.predict)."""
    import onnxruntime

    images = torch.randint(0, 256, (3, 3, *size_hw(image_size)), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    maps, scores = predict(network, images, batch_size=len(images), mode=map_mode)  # (3,H,W), (3,)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    graph_maps, graph_scores = session.run(None, {"image": images.numpy()})
    map_error = np.abs(graph_maps - maps.numpy()).max() / float(maps.max() - maps.min())
    score_error = np.abs(graph_scores / scores.numpy() - 1).max()
    if not (map_error <= SCORE_TOLERANCE and score_error <= SCORE_TOLERANCE):
        raise RuntimeError(f"the exported graph does not score as test.py: maps differ by {map_error:.2e} of their range, scores by {score_error:.2e}")
    print(f"checked with onnxruntime: maps within {map_error:.1e} of their range, scores within {score_error:.1e} of test.py's")


def quantize_int8(onnx_path, settings, metadata, calibration_images):
    """The ONNX model quantised to int8, calibrated on (at most calibration_images of) the category's training images; scores the test split
    with it and the fp32 model, prints both metrics and returns the int8 OpenVINO model with its metadata."""
    (openvino,) = import_deploy_packages("openvino")
    size = settings["image_size"]
    train_images = load_train_images(settings["data_root"], settings["category"], size).numpy()[:calibration_images]  # (N,3,H,W) uint8
    print(f"int8: calibrating on {len(train_images)} training images of {settings['category']}")
    int8_model = quantize_openvino(onnx_path, train_images)
    fp32_model = openvino.Core().read_model(onnx_path)
    int8_metadata = {**metadata, "precision": "int8"}
    test_images, masks, labels, _ = load_test_set(settings["data_root"], settings["category"], size)
    results = {}
    for name, model in (("fp32", fp32_model), ("int8", int8_model)):
        maps, scores = openvino_scores(model, test_images.numpy(), batch=8)
        results[name] = compute_metrics(scores, labels, maps, masks)
        results[name]["heatmap_range"] = (float(maps.min()), float(maps.max()))
    for name in ("fp32", "int8"):
        print(f"{name} on {settings['category']}'s test split ({len(labels)} images): {metrics_line(results[name], digits=4)}")
    int8_results = results["int8"]
    if int8_results["image_f1_threshold"] is not None:
        lo, hi = int8_results["heatmap_range"]
        evaluated = f"export.py --int8=1 on {os.path.join(settings['data_root'], settings['category'], 'test')}"
        int8_metadata.update(image_f1_threshold=repr(int8_results["image_f1_threshold"]), heatmap_range=f"{lo!r},{hi!r}", evaluation=evaluated)
        if metadata["threshold"] == metadata["image_f1_threshold"]:  # the F1-max threshold (or none): the int8 model's own
            int8_metadata.update(threshold=int8_metadata["image_f1_threshold"], threshold_source=f"image_f1_threshold of {evaluated}")
    for key, value in int8_metadata.items():
        int8_model.set_rt_info(value, ["framework", key])  # where OpenVINO keeps an ONNX model's metadata_props
    return int8_model


def main():
    apply_overrides(globals(), sys.argv[1:], config_keys)
    args = SimpleNamespace(**{k: globals()[k] for k in config_keys})
    if not args.checkpoint:
        raise ConfigError("--checkpoint is required, e.g. --checkpoint=runs/bottle/checkpoint.pth")
    check_scoring(args.map_mode, batch_size=1)
    if args.calibration_images < 1:
        raise ConfigError(f"--calibration_images={args.calibration_images}: must be at least 1")
    onnx_path = args.out or os.path.join(os.path.dirname(args.checkpoint), "model.onnx")
    if not onnx_path.endswith(".onnx"):
        raise ConfigError(f"--out={onnx_path}: must end with .onnx")
    stem = os.path.basename(onnx_path)[:-len(".onnx")]
    check_outputs(f"out={onnx_path}", os.path.dirname(onnx_path), [stem + ".onnx", *([stem + "_int8.xml", stem + "_int8.bin"] if args.int8 else [])])
    import_deploy_packages("onnx", "onnxscript", "onnxruntime", *(("nncf", "openvino") if args.int8 else ()))
    ckpt = load_checkpoint(args.checkpoint)
    settings = resolve_settings(ckpt, args.checkpoint, {name: getattr(args, name) for name in CHECKPOINT_SETTINGS})
    if args.int8 and not settings["category"]:
        raise ConfigError(f"--int8=1: {args.checkpoint} is a model of {', '.join(settings['categories'])}; pass --category=<one of them> "
                          "to calibrate on its training images and check on its test split")
    network = load_network(ckpt, settings, torch.device("cpu"), args.checkpoint)
    size = settings["image_size"]
    metadata = {
        "format": FORMAT, "method": settings["method"], "backbone": settings["backbone"],
        "image_size": ",".join(map(str, size)) if isinstance(size, list) else str(size), "map_mode": args.map_mode, "precision": "fp32",
        **evaluation_metadata(args.checkpoint, settings, args.map_mode), "checkpoint": args.checkpoint, "version": project_version(),
    }
    scorer = ImageScorer(network, size, args.map_mode).eval()
    try:
        model = export_onnx(scorer, size, metadata)
    except Exception as e:
        raise RuntimeError(f"torch.onnx.export failed: {first_line(e)}") from e
    check_parity(model, network, size, args.map_mode)
    atomic_write(onnx_path, lambda f: f.write(model.SerializeToString()))
    print(f"wrote {onnx_path} ({os.path.getsize(onnx_path) / 2**20:.1f} MiB; input image uint8 (N,3,{','.join(map(str, size_hw(size)))}))")
    if args.int8:
        int8_path = onnx_path[:-len(".onnx")] + "_int8.xml"
        write_openvino(quantize_int8(onnx_path, settings, metadata, args.calibration_images), int8_path)
        print(f"wrote {int8_path} and .bin ({os.path.getsize(int8_path[:-4] + '.bin') / 2**20:.1f} MiB)")


if __name__ == "__main__":
    run_cli(main, lambda: debug)
