"""
Speed and memory of Reverse Distillation (RD or RD++) training and inference, on random images (no data needed).

    $ python scripts/benchmark.py --device=cpu --backbone=wide_resnet50_2 --image_size=256 --batch_size=4
    $ python scripts/benchmark.py --device=cuda --batch_size=16 --amp=1 --compile=1 --channels_last=1
    $ python scripts/benchmark.py --device=cpu --batch_size=4 --teacher_grad=1   # the official code's step
    $ python scripts/benchmark.py --device=cpu --batch_size=4 --method=rd++      # RD++'s step and inference
    $ python scripts/benchmark.py --device=cpu --batch_size=4 --runtime=all --train=0   # torch vs exported models

Prints training images/s (one Adam step of OCBE + decoder, the step train.py runs; with its default
cache_teacher the teacher's features are computed once, outside the step), inference images/s (teacher +
student + anomaly map + blur: model.scoring.predict on test.py's inference_network, BatchNorms folded
and channels_last; --plain_inference=1 runs the modules as built instead), peak memory (process RSS on CPU,
max allocated on CUDA) and the projected time of one 200-epoch category of 280 images. --teacher_grad=1
keeps the teacher's autograd graph and uses the default (unfused) Adam, as the official code does.
--method=rd++ times RD++'s step as train.py takes it on a stepped batch (noisy teacher pass, projection of both
batches, the projection loss), the mean time of a batch of its loop, which steps on every 2nd batch (train.py's
default accumulate=1: the batch before a step runs the same forward and backward, without the Adam step;
--accumulate=0, the official loop before its 2023-12-07 fix: that batch only runs the student forward), and its
inference (the projection layer in the student path). Times are medians over --steps calls.

Beside the step it measures the fixed costs of a train.py process and adds them to the projection: start-up
(python + imports, timed in a fresh process; building the networks: a teacher loaded from a file, as with
weights=imagenet, and the seeded OCBE/decoder), decoding and resizing the training images (1024x1024 PNGs,
MVTec AD's largest), the teacher cache, and the checkpoints: one written in the foreground (time, size) and
what a background write at train.py's default save_minutes costs the training loop (the steps it runs beside,
plus the wait), as often as that cadence writes one, plus the final write, which a run waits for.

--runtime=torch,onnxruntime,openvino,openvino_int8 (or all) times the inference of the same network on the same
images in each runtime: test.py's torch path, and the graph export.py writes (its ImageScorer, exported the same
way) run by scripts/predict_onnx.py's runtimes, fp32, and int8 quantised by NNCF as `export.py --int8=1` does but
calibrated on random images (a speed figure only). The runtimes take turns within every step, so that the load of
a shared machine falls on all of them alike; each prints its time per image and its ratio to torch's.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dataset import load_images  # noqa: E402
from model import OCBE, Decoder, MultiProjection, build_encoder, build_model  # noqa: E402
from model.encoder import normalize, teacher_features  # noqa: E402
from model.losses import batch_loss  # noqa: E402
from model.projection import ProjectedStudent  # noqa: E402
from model.pseudo_anomalies import SimplexPatches, step_generator  # noqa: E402
from model.scoring import TeacherStudent, inference_network, predict  # noqa: E402
from utils.config import script_settings  # noqa: E402
from utils.io import save_checkpoint  # noqa: E402
from utils.runs import CheckpointWriter, copy_to_cpu  # noqa: E402

RUNTIMES = ("torch", "onnxruntime", "openvino", "openvino_int8")
TRAIN_DEFAULTS = script_settings(os.path.join(ROOT, "train.py"))  # its save_minutes (checkpoint cadence) and weight_proj

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--method", default="rd", help="rd | rd++ (default: rd)")
parser.add_argument("--ssot", type=int, default=1, help="rd++: compute the SSOT term, 0 | 1 (default: 1, as train.py)")
parser.add_argument("--accumulate", type=int, default=1, help="rd++: the batch before a step runs its backward too, 0 | 1 (default: 1, as train.py)")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda (default: cuda if available)")
parser.add_argument("--backbone", default="wide_resnet50_2", help="default: wide_resnet50_2")
parser.add_argument("--image_size", type=int, default=256, help="default: 256")
parser.add_argument("--batch_size", type=int, default=16, help="default: 16")
parser.add_argument("--steps", type=int, default=5, help="timed training steps and inference batches, the median is printed (default: 5)")
parser.add_argument("--amp", type=int, default=0, help="bf16 autocast, 0 | 1 (default: 0)")
parser.add_argument("--compile", type=int, default=0, help="torch.compile the training student and test.py's scoring, 0 | 1 (default: 0)")
parser.add_argument("--channels_last", type=int, default=0, help="channels_last memory format for training, 0 | 1 (default: 0)")
parser.add_argument("--plain_inference", type=int, default=0, help="infer with the modules as built, not test.py's inference_network, 0 | 1 (default: 0)")
parser.add_argument("--teacher_grad", type=int, default=0, help="official-code step: teacher kept in autograd, unfused Adam, 0 | 1 (default: 0)")
parser.add_argument("--cache_teacher", type=int, default=1, help="train.py's cache_teacher: teacher features computed once, 0 | 1 (default: 1)")
parser.add_argument("--runtime", default="torch", help=f"inference runtimes, a comma list of {', '.join(RUNTIMES)}, or all (default: torch)")
parser.add_argument("--threads", type=int, default=0, help="CPU threads of every runtime, 0: each runtime's default (default: 0)")
parser.add_argument("--train", type=int, default=1, help="time training too, 0 | 1 (default: 1)")
args = parser.parse_args()
runtimes = RUNTIMES if args.runtime == "all" else tuple(args.runtime.split(","))
if not set(runtimes) <= set(RUNTIMES):
    parser.error(f"--runtime={args.runtime}: expected a comma list of {', '.join(RUNTIMES)}, or all")
if runtimes != ("torch",) and args.device != "cpu":
    parser.error("--runtime: the exported models are timed on the CPU, with --device=cpu")

dev = torch.device(args.device)
if args.threads:
    torch.set_num_threads(args.threads)
torch.backends.cudnn.benchmark = True
torch.manual_seed(0)
encoder, ocbe, decoder = build_model(args.backbone, weights="none")
rdpp = args.method == "rd++"
proj = MultiProjection(args.backbone) if rdpp else None
memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
encoder, ocbe, decoder = (m.to(dev, memory_format=memory_format) for m in (encoder, ocbe, decoder))
if rdpp:
    proj = proj.to(dev, memory_format=memory_format)
student = ProjectedStudent(proj, ocbe, decoder) if rdpp else torch.nn.Sequential(ocbe, decoder)
train_student = torch.compile(student) if args.compile else student
# train.py's fused Adam (RD++: the projection layer in a second group); the official code uses the default implementation
param_groups = [{"params": list(ocbe.parameters()) + list(decoder.parameters())}]
if rdpp:
    param_groups.append({"params": list(proj.parameters()), "lr": 0.001})
    pseudo_anomalies = SimplexPatches(args.image_size, seed=0)
optimizer = torch.optim.Adam(param_groups, lr=0.005, betas=(0.5, 0.999), fused=not args.teacher_grad)
images = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8, device=dev)
if args.teacher_grad:
    encoder.requires_grad_(True)
    teacher_forward = encoder.forward.__wrapped__.__get__(encoder)  # without the no_grad the Encoder adds
else:
    teacher_forward = encoder


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed_in_turn(functions, steps):
    """{name: median seconds of one call} of functions called in turn, steps times each: medians are robust to
    the other work of a shared machine, which only ever adds time, and taking turns spreads it over all."""
    for function in functions.values():
        function()  # warm-up: cudnn autotuning, compilation, allocator, the runtimes' first-call setup
    seconds = {name: [] for name in functions}
    for _ in range(steps):
        for name, function in functions.items():
            sync()
            t0 = time.perf_counter()
            function()
            sync()
            seconds[name].append(time.perf_counter() - t0)
    return {name: statistics.median(times) for name, times in seconds.items()}


def timed(function, steps):
    return timed_in_turn({"": function}, steps)[""]


def exported_models(network, folder):
    """{runtime: model} of the network exported as export.py does, in folder, run by utils.runtimes."""
    import onnx

    from model.onnx_export import ImageScorer, export_onnx, quantize_openvino
    from utils.runtimes import FORMAT, load_exported

    metadata = {"format": FORMAT, "image_size": str(args.image_size), "precision": "fp32"}
    onnx_path = os.path.join(folder, "model.onnx")
    onnx.save(export_onnx(ImageScorer(network, args.image_size, "add").eval(), args.image_size, metadata), onnx_path)
    models = {runtime: load_exported(onnx_path, runtime, args.threads) for runtime in ("onnxruntime", "openvino") if runtime in runtimes}
    if "openvino_int8" in runtimes:
        import openvino

        calibration = torch.randint(0, 256, (8, 3, args.image_size, args.image_size), dtype=torch.uint8).numpy()
        int8_model = quantize_openvino(onnx_path, calibration)
        for key, value in metadata.items():
            int8_model.set_rt_info(value, ["framework", key])
        openvino.save_model(int8_model, os.path.join(folder, "model_int8.xml"), compress_to_fp16=False)
        models["openvino_int8"] = load_exported(os.path.join(folder, "model_int8.xml"), "openvino", args.threads)
    return models


def teacher_step_features():
    """The teacher's taps of the batch, computed at a step: without the cache, or in the official code's step."""
    x = normalize(images).contiguous(memory_format=memory_format)  # (B,3,S,S)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bool(args.amp)):
        return teacher_forward(x)  # 3 taps


# inference first, in a process that has not trained (test.py's situation)
network = TeacherStudent(encoder, ocbe, decoder, proj).eval() if args.plain_inference else inference_network(encoder, ocbe, decoder, proj)
inference = {"torch": lambda: predict(network, images, args.batch_size, amp=bool(args.amp), compile=bool(args.compile))}
with tempfile.TemporaryDirectory() as export_folder:
    for runtime, exported in (exported_models(network, export_folder) if runtimes != ("torch",) else {}).items():
        inference[runtime] = lambda exported=exported: exported(images.numpy())
    infer_seconds = timed_in_turn({runtime: inference[runtime] for runtime in runtimes}, args.steps)
infer_memory = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
del network, inference
if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()

print(f"{args.method} {args.backbone} {args.image_size}x{args.image_size} batch {args.batch_size} on {dev} | amp {args.amp} compile {args.compile} "
      f"channels_last {args.channels_last} plain_inference {args.plain_inference} teacher_grad {args.teacher_grad} "
      f"cache_teacher {int(args.cache_teacher and not args.teacher_grad)}{f' accumulate {args.accumulate}' if rdpp else ''} | torch {torch.__version__}, {torch.get_num_threads()} threads")
for runtime, seconds in infer_seconds.items():
    versus = f", {seconds / infer_seconds['torch']:.2f}x torch's time" if "torch" in infer_seconds else ""
    print(f"inference {runtime}: {seconds / args.batch_size:.4f} s/image, {args.batch_size / seconds:.1f} images/s (map + blur included{versus})")
if not args.train:
    sys.exit(0)

use_cache = bool(args.cache_teacher and not args.teacher_grad)
# train.py's cache: once per image and run, not per step
cache_seconds = timed(lambda: teacher_features(encoder, images, args.batch_size, bool(args.amp)), args.steps) if use_cache else 0.0
teacher_cache = teacher_features(encoder, images, args.batch_size, bool(args.amp)) if use_cache else None


def train_step(update=True):
    """train.py's step: its batch_loss (RD++: with the noisy teacher pass), backward, and (update) the Adam step."""
    teacher = teacher_cache if use_cache else teacher_step_features()
    noisy = shuffle = None
    if rdpp:  # train.py's RD++ step: a noise patch per image, the SSOT's permutation
        generator = step_generator(0, 0)
        noisy = pseudo_anomalies(normalize(images), generator).contiguous(memory_format=memory_format)
        shuffle = torch.randperm(args.batch_size, generator=generator)
    loss = batch_loss(train_student, teacher_forward, teacher, noisy, shuffle, weight_proj=TRAIN_DEFAULTS["weight_proj"], ssot=bool(args.ssot),
                      amp=bool(args.amp))
    loss.backward()
    if update:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def statistics_pass():
    """RD++ with accumulate=0: a batch between two steps only runs the student forward for BatchNorm statistics."""
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bool(args.amp)):
        train_student(teacher_cache if use_cache else teacher_step_features())


student.train()
step_seconds = timed(train_step, args.steps)
# one optimizer step per 2 batches for RD++: the mean time of a batch
if rdpp and args.accumulate:
    batch_seconds = timed(lambda: (train_step(update=False), train_step()), args.steps) / 2
elif rdpp:
    batch_seconds = (step_seconds + timed(statistics_pass, args.steps)) / 2
else:
    batch_seconds = step_seconds
train_memory = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None

# The fixed costs of a train.py process, each timed once after a warm-up call (they happen once per run).
with tempfile.TemporaryDirectory() as tmp:
    imports_seconds = timed(lambda: subprocess.run([sys.executable, "-c", "import train"], cwd=ROOT, check=True), 1)
    teacher_file = os.path.join(tmp, "teacher.pth")  # a torchvision state dict, what weights=imagenet loads
    torch.save(torchvision.models.get_model(args.backbone).state_dict(), teacher_file)
    build_seconds = timed(lambda: (build_encoder(args.backbone, teacher_file), OCBE(args.backbone), Decoder(args.backbone)), 1)
    rng = np.random.default_rng(0)
    png_paths = [os.path.join(tmp, f"{i:03d}.png") for i in range(args.batch_size)]
    for path in png_paths:  # random pixels: they compress worse than photographs, so decoding them is slower
        Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)).save(path)
    decode_seconds = timed(lambda: load_images(png_paths, args.image_size), 1) / len(png_paths)

    checkpoint_path = os.path.join(tmp, "checkpoint.pth")
    checkpoint = {"bn": ocbe.state_dict(), "decoder": decoder.state_dict(), "optimizer": optimizer.state_dict(), "step": 0}
    if rdpp:
        checkpoint["proj"] = proj.state_dict()
    write_seconds = timed(lambda: save_checkpoint(checkpoint_path, checkpoint), 1)
    checkpoint_bytes = os.path.getsize(checkpoint_path)
    # A background write costs the loop its copy to CPU memory, whatever the steps running beside it lose to
    # it, and the wait if they end first: k steps with a write beside them, minus k steps. On a shared machine
    # that difference drowns in the noise of the steps, so the copy, which the loop certainly waits for, is
    # the least it is counted as.
    copy_seconds = timed(lambda: copy_to_cpu(checkpoint), 1)
    writer, k = CheckpointWriter(), int(write_seconds / step_seconds) + 1

    def steps_beside_a_write():
        writer.write(checkpoint_path, checkpoint)
        for _ in range(k):
            train_step()
        writer.wait()

    beside_seconds = timed(steps_beside_a_write, 1) - k * step_seconds
    background_seconds = max(copy_seconds, beside_seconds)

train_ips = args.batch_size / batch_seconds
epochs, n_images = 200, 280
train_seconds = epochs * n_images / train_ips
startup_seconds = imports_seconds + build_seconds
data_seconds = n_images * (decode_seconds + cache_seconds / args.batch_size)
n_background = int(train_seconds // (TRAIN_DEFAULTS["save_minutes"] * 60))  # train.py's default cadence, then the last one
checkpoint_seconds = n_background * background_seconds + write_seconds
projected = startup_seconds + data_seconds + train_seconds + checkpoint_seconds
print(f"training:  {step_seconds:.3f} s/step, {train_ips:.1f} images/s"
      + (f" ({batch_seconds:.3f} s per batch: RD++ steps on every 2nd batch, "
         + ("the batch before it runs its backward too)" if args.accumulate else "the others only move BatchNorm statistics)") if rdpp else ""))
if dev.type == "cuda":
    print(f"peak memory: training {train_memory / 2**30:.2f} GiB, inference {infer_memory / 2**30:.2f} GiB allocated")
else:
    print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB process RSS")
print(f"start-up:  {startup_seconds:.1f} s (python + imports {imports_seconds:.1f} s, building the networks {build_seconds:.1f} s)")
print(f"per image, once per run: decoding + resizing {decode_seconds:.3f} s (a 1024x1024 PNG)"
      + (f", teacher cache {cache_seconds / args.batch_size:.3f} s" if use_cache else ""))
print(f"checkpoint: {checkpoint_bytes / 2**20:.0f} MiB, written in {write_seconds:.2f} s in the foreground; a background write "
      f"costs training {background_seconds:.2f} s (copy to memory {copy_seconds:.2f} s; {k} steps beside the write took "
      f"{beside_seconds:+.2f} s more than {k} steps alone)")
print(f"projected: one category ({n_images} images x {epochs} epochs) takes {projected / 60:.1f} min = start-up {startup_seconds:.0f} s "
      f"+ data and cache {data_seconds:.0f} s + training {train_seconds:.0f} s + {n_background + 1} checkpoints "
      f"(every save_minutes={TRAIN_DEFAULTS['save_minutes']:g} and the last) {checkpoint_seconds:.1f} s, "
      f"{100 * checkpoint_seconds / projected:.2f}% of the time")
