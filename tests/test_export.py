"""
Deployment: export.py's ONNX graph (RD and RD++) scores as test.py does on onnxruntime and OpenVINO, scripts/predict_onnx.py
labels a folder as `predict.py` does without importing torch, and bad input gets one-line errors.

    $ python -m pytest -q tests/test_export.py

Needs requirements-deploy.txt (CI installs it); without it these tests are skipped, saying so.
"""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import WITHOUT_TORCH, run_main, run_script

for package in ("onnx", "onnxscript", "onnxruntime", "openvino", "nncf"):
    pytest.importorskip(package, reason=f"{package} is not installed: pip install -r requirements-deploy.txt")

import onnx  # noqa: E402

from export import METADATA  # noqa: E402
from model import MultiProjection, build_model  # noqa: E402
from model.checkpoint import load_checkpoint, load_network, resolve_settings  # noqa: E402
from model.scoring import predict  # noqa: E402
from utils.config import size_hw  # noqa: E402
from utils.images import list_images  # noqa: E402
from utils.io import save_checkpoint  # noqa: E402
from utils.runtimes import load_exported  # noqa: E402

RUNTIMES = ("onnxruntime", "openvino")
CATEGORY = "stripes"


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def predict_onnx(*args, check=True):
    """scripts/predict_onnx.py in a Python that cannot import torch."""
    return run_script("-c", WITHOUT_TORCH, "scripts/predict_onnx.py", *args, check=check)


def size_text(size):
    """How export.py's metadata writes an image size: 64, or 64,96 for a height and width."""
    return ",".join(map(str, size)) if isinstance(size, list) else str(size)


# RD at 64 x 96 (height x width) in the default run: a non-square graph covers the square one's path too
@pytest.fixture(scope="module", params=[pytest.param((64, "rd"), marks=pytest.mark.slow), pytest.param((96, "rd"), marks=pytest.mark.slow), ([64, 96], "rd"), (64, "rd++"),
                                        pytest.param((96, "rd++"), marks=pytest.mark.slow)], ids=lambda p: f"{p[1]}-{size_text(p[0])}")
def exported(request, tmp_path_factory):
    """An RD or RD++ resnet18 checkpoint at image size 64, 96 or 64 x 96 (height x width; random weights, BatchNorm
    statistics made non-trivial so that folding them matters), exported by export.py: (checkpoint path, model.onnx
    path, export's stdout)."""
    size, method = request.param
    folder = tmp_path_factory.mktemp(f"export_{method}_{size_text(size).replace(',', 'x')}")
    torch.manual_seed(sum(size_hw(size)) // 2)  # 64 and 96 as before
    _, ocbe, decoder = build_model("resnet18", weights="none")
    proj = {"proj": MultiProjection("resnet18").state_dict()} if method == "rd++" else {}
    for module in (*ocbe.modules(), *decoder.modules()):
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    config = {"method": method, "backbone": "resnet18", "weights": "none", "seed": 0, "image_size": size, "data_root": str(folder),
              "category": CATEGORY, "out_dir": str(folder)}
    checkpoint = str(folder / CATEGORY / "checkpoint.pth")
    save_checkpoint(checkpoint, {"bn": ocbe.state_dict(), "decoder": decoder.state_dict(), **proj, "config": config})
    result = run_main("export.py", f"--checkpoint={checkpoint}", check=True)
    return checkpoint, str(folder / CATEGORY / "model.onnx"), result.stdout


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("batch", [1, 4])
def test_exported_graph_scores_as_test_py(exported, runtime, batch):
    checkpoint, model_path, _ = exported
    ckpt = load_checkpoint(checkpoint)
    settings = resolve_settings(ckpt, checkpoint, {})
    size = settings["image_size"]
    network = load_network(ckpt, settings, torch.device("cpu"), checkpoint)
    images = torch.randint(0, 256, (batch, 3, *size_hw(size)), dtype=torch.uint8, generator=torch.Generator().manual_seed(batch))
    maps, scores = predict(network, images, batch_size=batch)  # test.py's scoring
    graph_maps, graph_scores = load_exported(model_path, runtime)(images.numpy())
    assert graph_maps.shape == (batch, *size_hw(size)) and graph_scores.shape == (batch,)
    assert graph_maps.dtype == np.float32 and graph_scores.dtype == np.float32
    map_range = float(maps.max() - maps.min())
    assert np.abs(graph_maps - maps.numpy()).max() <= 1e-5 * map_range
    assert np.abs(graph_scores / scores.numpy() - 1).max() <= 1e-5


def test_graph_inputs_outputs_metadata(exported):
    checkpoint, model_path, stdout = exported
    model = onnx.load(model_path)
    size = load_checkpoint(checkpoint)["config"]["image_size"]
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}  # folded into the convolutions
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, *size_hw(size)]  # any batch size
    assert [o.name for o in model.graph.output] == ["anomaly_map", "score"]
    metadata = {p.key: p.value for p in model.metadata_props}
    assert set(metadata) == set(METADATA)
    config = load_checkpoint(checkpoint)["config"]
    assert (metadata["method"], metadata["backbone"], metadata["image_size"], metadata["precision"]) == (config["method"], "resnet18", size_text(size), "fp32")
    # never evaluated: no threshold, no range, and export said so
    assert metadata["image_f1_threshold"] == metadata["heatmap_range"] == "" and metadata["evaluation"].startswith("none: ")
    assert "note: no evaluation" in stdout and "results.json does not exist" in stdout


@pytest.fixture(scope="module")
def evaluated_export(evaluated, tmp_path_factory):
    """The session's evaluated checkpoint (conftest.evaluated) exported: (checkpoint, out_dir, model folder)."""
    run, _ = evaluated
    models = tmp_path_factory.mktemp("models")
    run_main("export.py", f"--checkpoint={run / 'checkpoint.pth'}", f"--out_dir={run}", f"--out={models / 'model.onnx'}", check=True)
    return str(run / "checkpoint.pth"), run, models


@pytest.fixture(scope="module")
def int8_export(evaluated_export, tmp_path_factory):
    """The same checkpoint exported with --int8=1: the folder of its model.onnx and model_int8.xml/.bin."""
    checkpoint, out_dir, _ = evaluated_export
    models = tmp_path_factory.mktemp("int8_models")
    result = run_main("export.py", f"--checkpoint={checkpoint}", f"--out_dir={out_dir}", f"--out={models / 'model.onnx'}", "--int8=1", check=True)
    assert "int8 on stripes's test split" in result.stdout
    return models


def test_metadata_carries_the_evaluation(evaluated_export):
    _, out_dir, models = evaluated_export
    results = json.loads((out_dir / CATEGORY / "results.json").read_text())
    metadata = load_exported(str(models / "model.onnx")).metadata
    assert float(metadata["image_f1_threshold"]) == results["image_f1_threshold"]
    assert [float(v) for v in metadata["heatmap_range"].split(",")] == results["heatmap_range"]
    assert metadata["evaluation"] == str(out_dir / CATEGORY / "results.json")
    assert metadata["threshold"] == metadata["image_f1_threshold"] and metadata["threshold_source"].startswith("image_f1_threshold of results.json")


@pytest.mark.slow  # NNCF's quantisation
def test_int8_metadata_carries_its_own_evaluation(int8_export):
    int8 = load_exported(str(int8_export / "model_int8.xml"), "openvino").metadata
    assert int8["precision"] == "int8" and int8["evaluation"].startswith("export.py --int8=1 on ")
    assert int8["threshold"] == int8["image_f1_threshold"] and int8["threshold_source"] == "image_f1_threshold of " + int8["evaluation"]


def test_metadata_carries_the_calibrated_threshold(trained, new_images, tmp_path):
    """threshold.json beside the checkpoint (calibrate.py) is the metadata's threshold, as predict.py would choose
    it, and predict_onnx.py labels with it."""
    from evaluation.threshold import calibration_record

    _, checkpoint = trained
    os.link(checkpoint, tmp_path / "checkpoint.pth")
    record = calibration_record(np.linspace(0.1, 2.0, 20).tolist(), 0.05, "good/", str(tmp_path / "checkpoint.pth"), 64, "add")
    (tmp_path / "threshold.json").write_text(json.dumps(record))
    run_main("export.py", f"--checkpoint={tmp_path / 'checkpoint.pth'}", f"--out_dir={tmp_path}", check=True)
    metadata = load_exported(str(tmp_path / "model.onnx")).metadata
    assert float(metadata["threshold"]) == record["threshold"] == pytest.approx(1.95)  # midway between the two largest scores
    assert "threshold.json: calibrated on 20 good images of good/" in metadata["threshold_source"]
    assert metadata["image_f1_threshold"] == ""  # no evaluation in this out_dir
    result = predict_onnx(f"--model={tmp_path / 'model.onnx'}", f"--images={new_images}", f"--out_dir={tmp_path / 'out'}")
    assert "score >= 1.950000, the model's metadata: " in result.stdout and "threshold.json" in result.stdout


@pytest.mark.slow  # NNCF's quantisation
def test_int8_model_keeps_the_first_tap_and_the_anomaly_map_float(int8_export):
    """No rounding to int8 between the image and the teacher's first tap (its residual additions included),
    nor from the cosine on: the ops that moved the demo's metrics most when quantised (docs/deployment.md)."""
    import openvino

    from model.onnx_export import ancestors, anomaly_map_ops, cosine_inputs, teacher_first_stage_ops

    int8 = openvino.Core().read_model(str(int8_export / "model_int8.xml"))
    fake_quantize = {op.get_friendly_name() for op in int8.get_ordered_ops() if op.get_type_name() == "FakeQuantize"}
    assert fake_quantize, "nothing was quantised"
    first_stage = set(teacher_first_stage_ops(int8))
    assert not fake_quantize & first_stage
    assert not fake_quantize & set(anomaly_map_ops(int8))
    deeper_taps = [set(found) for found in map(ancestors, cosine_inputs(int8)) if len(found) > len(first_stage)]
    assert deeper_taps and all(fake_quantize & found for found in deeper_taps), "the deeper taps should be computed in int8"


@pytest.fixture(scope="module")
def mixed_images(new_images, tmp_path_factory):
    """new_images plus one image of another size than the model's, which is resized like any other."""
    folder = tmp_path_factory.mktemp("mixed_images")
    for name in os.listdir(new_images):
        shutil.copy(new_images / name, folder / name)
    Image.open(new_images / "b.jpg").resize((100, 80)).save(folder / "f_other_size.png")
    return folder


def test_predict_onnx_labels_as_test_py(evaluated_export, mixed_images, data_root, tmp_path):
    """Including the test image whose score is the evaluation's threshold: anomalous in test.py, and in
    predict_onnx.py whichever way the runtime rounds its score."""
    checkpoint, out_dir, models = evaluated_export
    threshold = json.loads((out_dir / CATEGORY / "results.json").read_text())["image_f1_threshold"]
    at_threshold = next(r["path"] for r in read_csv(out_dir / CATEGORY / "scores.csv") if abs(float(r["score"]) - threshold) < 1e-6)
    images = tmp_path / "images"
    shutil.copytree(mixed_images, images)
    shutil.copy(os.path.join(data_root, CATEGORY, at_threshold), images / "g_at_threshold.png")
    run_main("predict.py", f"--checkpoint={checkpoint}", f"--out_dir={out_dir}", f"--images={images}", "--device=cpu", check=True)
    expected = read_csv(out_dir / CATEGORY / "predict" / "scores.csv")
    assert len(expected) == 7 and expected[-1]["label"] == "1"
    for runtime in RUNTIMES:
        result = predict_onnx(f"--model={models / 'model.onnx'}", f"--images={images}", f"--out_dir={tmp_path / runtime}",
                              f"--runtime={runtime}", "--batch_size=4")
        assert "ignored 1 non-image files" in result.stdout
        rows = read_csv(tmp_path / runtime / "scores.csv")
        assert [(r["path"], r["label"]) for r in rows] == [(r["path"], r["label"]) for r in expected]
        for row, reference in zip(rows, expected):
            assert float(row["score"]) == pytest.approx(float(reference["score"]), rel=1e-5, abs=2e-6)  # 6 decimals
            name = os.path.basename(row["path"])
            strip = Image.open(tmp_path / runtime / (name if name.endswith(".png") else name + ".png"))
            assert strip.size == (2 * 64, 64)


@pytest.mark.slow  # NNCF's quantisation
def test_predict_onnx_runs_the_int8_model(int8_export, mixed_images, tmp_path):
    result = predict_onnx(f"--model={int8_export / 'model_int8.xml'}", f"--images={mixed_images}", f"--out_dir={tmp_path}", "--runtime=openvino")
    assert "int8 model, openvino" in result.stdout
    assert len(read_csv(tmp_path / "scores.csv")) == 6


@pytest.mark.parametrize("exported", [([64, 96], "rd")], indirect=True, ids=["rd-64,96"])
def test_predict_onnx_never_imports_torch(exported, new_images, tmp_path):
    """The finder above raises on any import of torch or scipy: a run that ends well never imported them.
    The check is real: the same finder stops test.py at its first line. A model of 64 x 96 images reads them at that size."""
    checkpoint, model_path, _ = exported
    height, width = size_hw(load_checkpoint(checkpoint)["config"]["image_size"])
    for runtime in RUNTIMES:
        predict_onnx(f"--model={model_path}", f"--images={new_images}", f"--out_dir={tmp_path / runtime}", f"--runtime={runtime}", "--threshold=0.5")
        assert len(read_csv(tmp_path / runtime / "scores.csv")) == len(list_images(str(new_images)))
        strip = next(name for name in os.listdir(tmp_path / runtime) if name.endswith(".png"))
        with Image.open(tmp_path / runtime / strip) as picture:
            assert picture.height == height and picture.width % width == 0  # panels of the model's size, side by side
    refused = run_script("-c", WITHOUT_TORCH, "test.py", check=False)
    assert refused.returncode != 0 and "torch is not installed here" in refused.stderr


@pytest.mark.parametrize("exported", [([64, 96], "rd")], indirect=True, ids=["rd-64,96"])
@pytest.mark.parametrize("case", ["no_model", "other_onnx", "checkpoint_as_model", pytest.param("xml_on_onnxruntime", marks=pytest.mark.slow),
                                  "unreadable_image", "empty_folder", "no_threshold"])
def test_predict_onnx_errors(exported, new_images, tmp_path, case, request):
    checkpoint, model_path, _ = exported
    other = tmp_path / "other.onnx"
    identity = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "other",
                                      [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                      [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(identity), other)
    broken, empty = tmp_path / "broken", tmp_path / "empty"
    shutil.copytree(new_images, broken)
    (broken / "z_truncated.png").write_bytes((new_images / "a_copy.png").read_bytes()[:100])
    empty.mkdir()
    int8_model = request.getfixturevalue("int8_export") / "model_int8.xml" if case == "xml_on_onnxruntime" else None  # slow: NNCF
    args, named = {
        "no_model": ([f"--model={tmp_path / 'missing.onnx'}", f"--images={new_images}"], "missing.onnx: no such file"),
        "other_onnx": ([f"--model={other}", f"--images={new_images}"], "other.onnx: not a model written by export.py"),
        "checkpoint_as_model": ([f"--model={checkpoint}", f"--images={new_images}"], "checkpoint.pth: not an ONNX model"),
        "xml_on_onnxruntime": ([f"--model={int8_model}", f"--images={new_images}"], "--runtime=openvino"),
        "unreadable_image": ([f"--model={model_path}", f"--images={broken}", "--threshold=0.5"], "z_truncated.png: unreadable image"),
        "empty_folder": ([f"--model={model_path}", f"--images={empty}"], f"images={empty}: holds no images"),
        "no_threshold": ([f"--model={model_path}", f"--images={new_images}"], "--threshold"),
    }[case]
    out = tmp_path / "out"
    result = predict_onnx(*args, f"--out_dir={out}", check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.stderr
    assert not out.exists()


def test_export_errors(trained, tmp_path):
    _, checkpoint = trained
    for args, named in (([f"--checkpoint={checkpoint}", f"--out={tmp_path / 'model.pt'}"], "model.pt: must end with .onnx"),
                        ([f"--checkpoint={tmp_path / 'none.pth'}"], "none.pth: no such file")):
        result = run_main("export.py", *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and named in lines[0], result.stderr
    assert os.listdir(tmp_path) == []
