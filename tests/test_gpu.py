"""
The CUDA paths: bf16 autocast in training and scoring, torch.compile, the image store feeding a GPU, torchrun with
NCCL, and the export of a model trained on a GPU. Every test here skips without a CUDA GPU, saying so; on a machine
with one, scripts/gpu_check.sh runs them and times a demo category and a wide_resnet50_2 epoch.

    $ python -m pytest -q tests/test_gpu.py        (a minute or two on one GPU)

fp16 is not among them: the project's only reduced precision is bf16 (--amp=1), which needs no loss scaling.
"""

import os

import pytest
import torch

from conftest import SMALL, run_main, run_script
from dataset import load_train_set
from model.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")

GPU = [arg for arg in SMALL if not arg.startswith("--device=")] + ["--device=cuda"]


def scores_of(run_folder):
    with open(os.path.join(run_folder, "scores.csv")) as f:
        return [float(line.split(",")[2]) for line in f.read().splitlines()[1:]]


@pytest.fixture(scope="module")
def gpu_run(data_root, tmp_path_factory):
    """train.py on the GPU with bf16 autocast, 2 epochs: (out_dir, checkpoint)."""
    out_dir = tmp_path_factory.mktemp("gpu_runs")
    result = run_main("train.py", f"--data_root={data_root}", "--category=stripes", f"--out_dir={out_dir}", "--epochs=2",
                      "--batch_size=4", "--amp=1", *GPU)
    assert result.returncode == 0, result.stderr
    return out_dir, out_dir / "stripes" / "checkpoint.pth"


def test_bf16_training_and_scoring(gpu_run, tmp_path):
    """A bf16-trained checkpoint loads on the CPU; scored on the GPU with and without autocast and on the CPU, the
    fp32 scores agree closely and the bf16 ones rank the images nearly alike."""
    out_dir, checkpoint = gpu_run
    checkpoint_dict = load_checkpoint(checkpoint)
    assert checkpoint_dict["config"]["amp"] is True and all(torch.isfinite(t).all() for t in checkpoint_dict["decoder"].values())
    scores = {}
    for name, args in {"cpu": ["--device=cpu"], "cuda": ["--device=cuda"], "cuda_bf16": ["--device=cuda", "--amp=1"]}.items():
        result = run_main("test.py", f"--checkpoint={checkpoint}", f"--out_dir={tmp_path / name}", "--report=0", *args)
        assert result.returncode == 0, result.stderr
        scores[name] = torch.tensor(scores_of(tmp_path / name / "stripes"))
    assert torch.allclose(scores["cuda"], scores["cpu"], rtol=1e-3)
    assert torch.allclose(scores["cuda_bf16"], scores["cpu"], rtol=0.1)
    ranks = [s.argsort().argsort().float() for s in (scores["cuda_bf16"], scores["cpu"])]
    assert torch.corrcoef(torch.stack(ranks))[0, 1] > 0.9


def test_compiled_scoring_equals_eager(gpu_run, tmp_path):
    _, checkpoint = gpu_run
    for name, compiled in (("eager", "0"), ("compiled", "1")):
        result = run_main("test.py", f"--checkpoint={checkpoint}", f"--out_dir={tmp_path / name}", "--report=0", "--device=cuda",
                          f"--compile={compiled}")
        assert result.returncode == 0, result.stderr
    assert torch.allclose(torch.tensor(scores_of(tmp_path / "compiled" / "stripes")),
                          torch.tensor(scores_of(tmp_path / "eager" / "stripes")), rtol=1e-4)


def test_compiled_training_runs(data_root, tmp_path):
    result = run_main("train.py", f"--data_root={data_root}", "--category=stripes", f"--out_dir={tmp_path}", "--epochs=1",
                      "--batch_size=4", "--compile=1", *GPU)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1 | loss" in result.stdout


def test_image_store_feeds_the_gpu(data_root, tmp_path):
    """Kept in GPU memory or read batch by batch from the store file, the same uint8 batches reach the GPU."""
    common = dict(cache_dir=str(tmp_path), device=torch.device("cuda"), label="stripes")
    in_memory = load_train_set(data_root, ["stripes"], 64, in_memory="1", **common)
    streamed = load_train_set(data_root, ["stripes"], 64, in_memory="0", **common)
    order = torch.randperm(len(in_memory), generator=torch.Generator().manual_seed(0)).cuda()
    batch = streamed[order[:4]]
    assert batch.device.type == "cuda" and batch.dtype == torch.uint8
    assert torch.equal(batch, in_memory[order[:4]])


def test_deterministic_streamed_and_in_memory_training_agree(data_root, tmp_path):
    weights = {}
    for in_memory in ("0", "1"):
        out_dir = tmp_path / in_memory
        result = run_main("train.py", f"--data_root={data_root}", "--category=stripes", f"--out_dir={out_dir}", "--epochs=1",
                          "--batch_size=4", "--deterministic=1", f"--in_memory={in_memory}", f"--cache_dir={tmp_path / 'cache'}", *GPU)
        assert result.returncode == 0, result.stderr
        weights[in_memory] = load_checkpoint(out_dir / "stripes" / "checkpoint.pth")["decoder"]
    assert all(torch.equal(weights["0"][k], weights["1"][k]) for k in weights["1"])


def test_torchrun_with_nccl(data_root, tmp_path):
    """torchrun on the GPUs: two processes with NCCL where there are two GPUs (NCCL takes one GPU per process),
    else the one-process launch; the checkpoint is written once and loads."""
    processes = min(2, torch.cuda.device_count())
    result = run_script("-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "train.py",
                        f"--data_root={data_root}", "--category=stripes", f"--out_dir={tmp_path}", "--epochs=1", "--batch_size=4",
                        *[arg for arg in GPU if arg != "--device=cuda"], "--device=auto", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("saved ") == 1
    assert load_checkpoint(tmp_path / "stripes" / "checkpoint.pth")["config"]["device"] == "auto"


def test_export_of_a_gpu_trained_model(gpu_run, tmp_path):
    """export.py loads the GPU-trained checkpoint onto the CPU and proves parity with onnxruntime."""
    pytest.importorskip("onnxruntime", reason="needs requirements-deploy.txt")
    _, checkpoint = gpu_run
    result = run_main("export.py", f"--checkpoint={checkpoint}", f"--out={tmp_path / 'model.onnx'}")
    assert result.returncode == 0, result.stderr
    assert "checked with onnxruntime" in result.stdout and (tmp_path / "model.onnx").is_file()
    assert os.path.getsize(tmp_path / "model.onnx") > 0
