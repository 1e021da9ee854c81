"""
A model written by export.py, run by onnxruntime or OpenVINO, with numpy only (no torch): scripts/predict_onnx.py
and scripts/benchmark.py use it.

    from utils.runtimes import load_exported
    model = load_exported("runs/bottle/model.onnx", runtime="openvino")
    maps, scores = model(images)  # uint8 (N,3,H,W) -> float32 (N,H,W), (N,)
    model.metadata["image_f1_threshold"]

onnxruntime runs .onnx files; OpenVINO runs .onnx files and its own .xml/.bin (export.py --int8=1). OpenVINO is
asked for f32 arithmetic: on a CPU with bf16 support its default would round to bf16 (int8 layers stay int8).
"""

import os

from utils.config import ConfigError
from utils.files import first_line

RUNTIMES = ("onnxruntime", "openvino")
FORMAT = "reverse_distillation_anomaly_map/1"  # export.py's metadata 'format'
# relative: the exported graph's scores equal test.py's within it, and its maps within it of their range, on either
# runtime; export.py checks it before writing a graph, predict_onnx.py lowers the threshold by it (tests/test_export.py)
SCORE_TOLERANCE = 1e-5


def import_runtime(runtime):
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime={runtime}: must be one of {', '.join(RUNTIMES)}")
    try:
        return __import__(runtime)
    except ImportError:
        raise ConfigError(f"--runtime={runtime}: {runtime} is not installed (pip install {runtime})") from None


class OnnxruntimeModel:
    def __init__(self, path, threads):
        onnxruntime = import_runtime("onnxruntime")
        if path.endswith(".xml"):
            raise ConfigError(f"model={path}: an OpenVINO model; run it with --runtime=openvino")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per physical core
        try:
            self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ConfigError(f"model={path}: not an ONNX model onnxruntime can load ({first_line(e)[:200]})") from None
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def __call__(self, images):
        return tuple(self.session.run(["anomaly_map", "score"], {"image": images}))


class OpenvinoModel:
    def __init__(self, path, threads, hint="LATENCY"):
        openvino = import_runtime("openvino")
        core = openvino.Core()
        try:
            model = core.read_model(path)
        except Exception as e:
            raise ConfigError(f"model={path}: not a model OpenVINO can read ({first_line(e)[:200]})") from None
        # OpenVINO keeps an ONNX model's metadata_props, and export.py writes an int8 model's, under rt_info 'framework'
        framework = model.get_rt_info()["framework"] if model.has_rt_info(["framework"]) else {}
        self.metadata = {key: value.astype(str) for key, value in framework.items()}
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config) if self.metadata.get("format") == FORMAT else None

    def __call__(self, images):
        outputs = self.compiled(images)
        return outputs["anomaly_map"], outputs["score"]


def load_exported(path, runtime="onnxruntime", threads=0, hint="LATENCY"):
    """The model at path, ready to score uint8 (N,3,H,W) images; a ConfigError if it is not export.py's.
    threads: 0 lets the runtime choose (all cores); hint: OpenVINO's PERFORMANCE_HINT."""
    if not path:
        raise ConfigError("--model is required, e.g. --model=runs/bottle/model.onnx")
    if not os.path.isfile(path):
        raise ConfigError(f"model={path}: no such file")
    import_runtime(runtime)
    model = OnnxruntimeModel(path, threads) if runtime == "onnxruntime" else OpenvinoModel(path, threads, hint)
    if model.metadata.get("format") != FORMAT:
        raise ConfigError(f"model={path}: not a model written by export.py (its metadata has no format={FORMAT})")
    return model
