"""
Score a folder of images with a model written by export.py, using onnxruntime or OpenVINO, numpy and PIL only:
no torch, so it runs on a line PC where torch is not installed (pip install onnxruntime pillow numpy).

    $ python scripts/predict_onnx.py --model=runs/bottle/model.onnx --images=new/
    $ python scripts/predict_onnx.py --model=runs/bottle/model_int8.xml --images=new/ --runtime=openvino
    $ python scripts/predict_onnx.py --model=model.onnx --images=new/ --out_dir=out/ --threshold=0.5 --batch_size=4

Images are read as dataset.py reads them (utils/images.py: the same extensions, sorted, grayscale/RGBA/palette
to RGB, resized to the model's image size with PIL's bilinear filter), whatever their size. Writes
<out_dir>/scores.csv (path,score,label; label 1 = score >= threshold) and a strip <out_dir>/<file name>.png
(input | heatmap with the score) per image, as `predict.py --images=DIR` does with the checkpoint. The threshold is
--threshold, or the one export.py stored in the model's metadata as predict.py would choose it (`threshold`:
threshold.json's, calibrated on good images, else the evaluation's F1-max threshold; a model exported before
`threshold` existed has only image_f1_threshold), lowered by utils.runtimes.SCORE_TOLERANCE (relative), the
tolerance within which the runtimes reproduce test.py's scores: the image of the evaluation whose score is the
F1-max threshold stays anomalous, as in test.py, whatever the runtime's rounding.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluation.visualize import save_prediction_strips  # noqa: E402
from utils.config import ConfigError, apply_overrides, run_cli, script_settings  # noqa: E402
from utils.files import check_outputs, write_csv  # noqa: E402
from utils.images import IMAGE_EXTENSIONS, list_images, read_images  # noqa: E402
from utils.runtimes import RUNTIMES, SCORE_TOLERANCE, load_exported  # noqa: E402

# -----------------------------------------------------------------------------
model = ""  # model.onnx (onnxruntime or openvino) or model_int8.xml (openvino) written by export.py
images = ""  # the folder of images to score
out_dir = ""  # default: predict_onnx/ beside the model
runtime = "onnxruntime"  # onnxruntime | openvino
threshold = None  # a score >= threshold is anomalous; None: the threshold in the model's metadata
batch_size = 8  # images per call of the runtime; does not change any score
threads = 0  # 0: the runtime's default (one per core)
debug = False  # show Python tracebacks for user errors
# -----------------------------------------------------------------------------
config_keys = list(script_settings(__file__))  # the names of the settings above: what --name=value may set


def main():
    apply_overrides(globals(), sys.argv[1:], config_keys)
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime={runtime}: must be one of {', '.join(RUNTIMES)}")
    if batch_size < 1:
        raise ConfigError(f"--batch_size={batch_size}: must be at least 1")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise ConfigError(f"--threshold={threshold}: must be a number")
    if not images:
        raise ConfigError("--images is required: the folder of images to score")
    if not os.path.isdir(images):
        raise ConfigError(f"images={images}: no such folder")
    folder = out_dir or os.path.join(os.path.dirname(model), "predict_onnx")
    check_outputs(f"out_dir={folder}", folder, ["scores.csv"])
    paths = list_images(images)
    if not paths:
        raise ConfigError(f"images={images}: holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    exported = load_exported(model, runtime, threads)
    metadata = exported.metadata
    stored = metadata.get("threshold", metadata["image_f1_threshold"])
    if threshold is None and not stored:
        raise ConfigError(f"no threshold: model={model} carries none ({metadata.get('threshold_source', metadata['evaluation'])}); "
                          "pass --threshold=VALUE")
    image_threshold = threshold if threshold is not None else float(stored)
    size = [int(side) for side in metadata["image_size"].split(",")]  # S, or H,W
    new_images = read_images(paths, size[0] if len(size) == 1 else size)  # (N,3,H,W) uint8
    outputs = [exported(new_images[i:i + batch_size]) for i in range(0, len(new_images), batch_size)]
    maps = np.concatenate([m for m, _ in outputs])  # (N,H,W) float32
    scores = np.concatenate([s for _, s in outputs]).tolist()  # (N,)
    # the evaluation's colour scale where there is one, so these strips compare with the test set's
    heat_range = tuple(map(float, metadata["heatmap_range"].split(","))) if metadata["heatmap_range"] else (float(maps.min()), float(maps.max()))
    # test.py's rule, score >= threshold, with the threshold lowered by the scores' tolerance: the evaluation's
    # threshold is the score of one of its images, which must not turn normal by a rounding of the runtime
    label_threshold = image_threshold * (1 - SCORE_TOLERANCE)
    labels = [int(score >= label_threshold) for score in scores]
    save_prediction_strips(folder, paths, new_images, maps, scores, heat_range=heat_range, threshold=label_threshold)
    write_csv(os.path.join(folder, "scores.csv"), ["path", "score", "label"],
              ((p, f"{score:.6f}", label) for p, score, label in zip(paths, scores, labels)))
    source = "--threshold" if threshold is not None else f"the model's metadata: {metadata.get('threshold_source', 'image_f1_threshold')}"
    print(f"{images}: {sum(labels)} of {len(paths)} images anomalous (score >= {image_threshold:.6f}, {source}; "
          f"{metadata['precision']} model, {runtime})")
    print(f"wrote {os.path.join(folder, 'scores.csv')} and {len(paths)} strips")


if __name__ == "__main__":
    run_cli(main, lambda: debug)
