"""
Data-parallel training: `torchrun --nproc_per_node=2 train.py` on CPU (gloo) against an emulation of its two shards;
and RD++ under torchrun and bf16 autocast. Every test here is slow (the whole suite runs them, the default run does not).

On CPU torch's SyncBatchNorm does not run, so each process normalises with its own shard's batch statistics and the
2-process run cannot equal the 1-process run on the same batches. What is exact: each step, shard r of the batch
(batch.tensor_split(2)[r] of the epoch's permutation) forward through the train-mode student on its own, loss_r
weighted by len(shard_r) * 2 / len(batch), the two gradients averaged (DDP), an Adam step. The test computes that
in one process and compares parameters, Adam's moments (the averaged gradients themselves) and rank 0's BatchNorm
statistics with the checkpoint, checks that both processes end with the same parameters, and prints how far the
single-process run is. RD++ sums two batches' gradients into each step: the first batch's backward runs under
DDP's no_sync (one all-reduce per step), and the result is the same emulation's.

Run: python -m pytest -q -m slow tests/test_distributed.py -s   (about a minute on 2 CPU cores)
"""

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, SMALL, run_main
from dataset import load_train_images
from model import MultiProjection, build_model
from model.checkpoint import load_checkpoint
from model.encoder import normalize, teacher_features
from model.losses import cosine_loss, projection_loss
from model.projection import ProjectedStudent
from model.pseudo_anomalies import SimplexPatches, step_generator

pytestmark = pytest.mark.slow  # torchrun: three processes a test

SEED, SIZE, WORLD_SIZE = 42, 64, 2

# Runs train.main() under torchrun, then saves this rank's final parameters: only rank 0 writes a checkpoint, and
# this is how the test sees rank 1's. Every optimizer train.py builds is recorded, and how often DDP's no_sync was
# entered; nothing else is changed.
RECORD_RANKS = """
import os

import torch
import train

built = []
class RecordedAdam(torch.optim.Adam):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        built.append(self)

no_syncs = []
ddp_no_sync = torch.nn.parallel.DistributedDataParallel.no_sync
def recorded_no_sync(self):
    no_syncs.append(1)
    return ddp_no_sync(self)

torch.optim.Adam = RecordedAdam
torch.nn.parallel.DistributedDataParallel.no_sync = recorded_no_sync
train.main()
params = [p.detach().clone() for group in built[0].param_groups for p in group["params"]]
torch.save(params, os.path.join(os.environ["RECORD_DIR"], f"rank{os.environ['RANK']}.pt"))
with open(os.path.join(os.environ["RECORD_DIR"], f"no_sync{os.environ['RANK']}.txt"), "w") as f:
    f.write(str(len(no_syncs)))
"""


def emulated_ddp_step(data_root, batch_size, size=SIZE, rdpp=False):
    """One epoch of the 2-process run computed in one process: ({(module, name): tensor} of the parameters, the
    same for rank 0's BatchNorm buffers, the optimizer's state_dict). rdpp: RD++ with train.py's defaults, each
    optimizer step from the sum of two batches' gradients."""
    torch.manual_seed(SEED)  # train.py: set_seed(seed), then build_model(backbone, weights, seed)
    encoder, ocbe, decoder = build_model("resnet18", "none", SEED)
    modules = {"bn": ocbe, "decoder": decoder}  # the checkpoint's names
    param_groups = [{"params": list(ocbe.parameters()) + list(decoder.parameters())}]
    if rdpp:  # as train.py: the projection layer built last, in a second parameter group
        modules["proj"] = proj = MultiProjection("resnet18")
        param_groups.append({"params": list(proj.parameters()), "lr": 0.001})
        student, pseudo_anomalies = ProjectedStudent(proj, ocbe, decoder), SimplexPatches(size, SEED)
    images = load_train_images(data_root, "stripes", size)
    optimizer = torch.optim.Adam(param_groups, lr=0.005, betas=(0.5, 0.999), fused=True)  # as train.py
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SEED + 0))  # epoch 0
    # train.py's cache_teacher: the same function on the same chunks (Adam's first step amplifies last-bit
    # differences of tiny gradients)
    teacher_cache = teacher_features(encoder, images, batch_size)
    ocbe.train(), decoder.train()
    for i, batch in enumerate(order.split(batch_size)):
        for rank, shard in enumerate(batch.tensor_split(WORLD_SIZE)):
            if len(shard) == 0:  # a last batch smaller than the world: this process adds nothing
                continue
            teacher = [tap[shard] for tap in teacher_cache]
            if rdpp:  # train.py's noise and shuffle of batch i, this process's part of them
                generator = step_generator(SEED, i)
                noisy_teacher = encoder(pseudo_anomalies(normalize(images[batch]), generator).tensor_split(WORLD_SIZE)[rank])
                shuffle = torch.randperm(len(shard), generator=generator)
                reconstructed, projected, projected_noisy = student(teacher, noisy_teacher)
                loss = cosine_loss(teacher, reconstructed) + 0.2 * projection_loss(noisy_teacher, projected_noisy, projected, shuffle)[0]
            else:
                loss = cosine_loss(teacher, decoder(ocbe(teacher)))
            # train.py's shard weighting, then DDP's average over processes (backward() adds to .grad)
            (loss * len(shard) * WORLD_SIZE / len(batch) / WORLD_SIZE).backward()
            if rank == 0:
                rank0_buffers = {(m, k): v.clone() for m, module in modules.items() for k, v in module.named_buffers()}
        # rank 0 keeps statistics of its own shards only, and DDP copies them to the others before each forward
        for (m, k), v in rank0_buffers.items():
            modules[m].get_buffer(k).copy_(v)
        if not rdpp or (i + 1) % 2 == 0:  # RD++: a step on every 2nd batch, the gradients of both summed
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    params = {(m, k): p.detach() for m, module in modules.items() for k, p in module.named_parameters()}
    return params, rank0_buffers, optimizer.state_dict()


def max_abs_diff(checkpoint, tensors):
    """(largest |difference|, where) between checkpoint[module][name] and tensors[(module, name)]."""
    diffs = {f"{m}.{k}": (checkpoint[m][k].float() - v.float()).abs().max().item() for (m, k), v in tensors.items()}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


def run_torchrun(tmp_path, args):
    """Train under torchrun (2 CPU processes): (rank 0's checkpoint, how often each process entered no_sync).
    Checks that only rank 0 logs and writes, and that both processes end with the same parameters."""
    script = tmp_path / "record_ranks.py"
    script.write_text(RECORD_RANKS)
    ddp_dir, record_dir = tmp_path / "ddp", tmp_path / "ranks"
    record_dir.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, RECORD_DIR=str(record_dir))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}",
                             str(script), *args, f"--out_dir={ddp_dir}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.count(f"on cpu x {WORLD_SIZE} processes") == 1  # only rank 0 logs
    assert sorted(os.listdir(ddp_dir / "stripes")) == ["checkpoint.pth", "config.json", "loss.csv"]  # only rank 0 writes
    rank0, rank1 = (torch.load(record_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE))
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank1, strict=True)), "the two processes ended with different parameters"
    no_syncs = [int((record_dir / f"no_sync{r}.txt").read_text()) for r in range(WORLD_SIZE)]
    return torch.load(ddp_dir / "stripes" / "checkpoint.pth", weights_only=True), no_syncs


def emulation_one_thread(*args, **kwargs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process: the same kernels, summing in the same order
    try:
        return emulated_ddp_step(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def torchrun_matches_emulation(data_root, tmp_path, batch_size):
    """Train one epoch under torchrun (2 CPU processes), check it against the emulation; returns the checkpoint."""
    common = [f"--data_root={data_root}", "--category=stripes", "--epochs=1", f"--batch_size={batch_size}", f"--seed={SEED}", *SMALL]
    ddp, _ = run_torchrun(tmp_path, common)
    params, rank0_buffers, optimizer = emulation_one_thread(data_root, batch_size)
    assert ddp["step"] == optimizer["state"][0]["step"].item()
    diff, where = max_abs_diff(ddp, params)
    print(f"\ntorchrun x{WORLD_SIZE} vs the emulated shards (batch {batch_size}): parameters differ by at most {diff:.2e} ({where})")
    assert diff < 1e-5, f"gradients are not combined as the shard weighting says: {where} differs by {diff:.2e}"
    # Adam's moments hold the averaged gradients themselves (a step only sees their sign on its first step)
    saved = ddp["optimizer"]["state"]
    assert saved.keys() == optimizer["state"].keys()  # the official conv4/bn4 never get a gradient, nor a state
    for i, state in optimizer["state"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(saved[i][moment], state[moment], rtol=1e-5, atol=1e-9), f"optimizer state {i} {moment}"
    diff, where = max_abs_diff(ddp, rank0_buffers)
    assert diff < 1e-6, f"{where} differs by {diff:.2e} from rank 0's shard statistics"
    return ddp, common, params


def test_torchrun_two_processes_equal_the_emulated_shards(data_root, tmp_path):
    # 8 images in batches of 5: two steps, shards of 3+2 then 2+1, so the shard weighting matters
    ddp, common, params = torchrun_matches_emulation(data_root, tmp_path, batch_size=5)
    single_dir = tmp_path / "single"
    run_main("train.py", *common, f"--out_dir={single_dir}", check=True)
    single = torch.load(single_dir / "stripes" / "checkpoint.pth", weights_only=True)
    diff, where = max_abs_diff(ddp, {key: single[key[0]][key[1]] for key in params})
    # not asserted: per-shard BatchNorm statistics make this non-zero on CPU; on CUDA train.py uses SyncBatchNorm
    print(f"torchrun x{WORLD_SIZE} vs one process on the full batches: parameters differ by at most {diff:.2e} ({where})")


def test_a_last_batch_smaller_than_the_world_adds_nothing(data_root, tmp_path):
    # 8 images in batches of 7: the second batch is one image, so process 1's shard is empty
    torchrun_matches_emulation(data_root, tmp_path, batch_size=7)


def test_rdpp_sums_two_batches_in_one_all_reduce(rdpp_root, tmp_path):
    """RD++ (step_every=2, accumulate): 8 images in batches of 5, so one step from two batches with shards of 3+2
    then 2+1. The first batch's backward runs under no_sync in each process; the step equals the emulation's."""
    args = [f"--data_root={rdpp_root}", "--category=stripes", "--epochs=1", "--batch_size=5", f"--seed={SEED}", *SMALL,
            "--image_size=96", "--method=rd++"]
    ddp, no_syncs = run_torchrun(tmp_path, args)
    assert no_syncs == [1] * WORLD_SIZE
    params, rank0_buffers, optimizer = emulation_one_thread(rdpp_root, 5, size=96, rdpp=True)
    saved = ddp["optimizer"]["state"]
    assert ddp["step"] == 2 and saved.keys() == optimizer["state"].keys()
    # Adam's first moment, half the step's gradient: equal up to float32 rounding, 1e-5 of each tensor's largest
    # value. The parameters within 1e-5, except where Adam's first step lr x g/(|g| + 1e-8) turns the rounding of a
    # gradient near 1e-8 into another step: the projection convs' biases (their true gradient is 0: each conv is
    # followed by an InstanceNorm without affine weights) and gradients below 3e-7.
    indices = [i for group in optimizer["param_groups"] for i in group["params"]]  # the parameters in order
    for (key, param), i in zip(params.items(), indices, strict=True):
        if i not in saved:  # the official conv4/bn4 never get a gradient, nor a state
            continue
        state = optimizer["state"][i]
        moment, ours = state["exp_avg"], saved[i]["exp_avg"]
        assert state["step"] == saved[i]["step"] == 1
        if key[0] == "proj" and key[1].endswith("bias"):
            continue
        assert torch.allclose(ours, moment, atol=1e-5 * moment.abs().max().item(), rtol=0), key
        well_conditioned = moment.abs() >= 0.5 * 3e-7
        assert torch.allclose(ddp[key[0]][key[1]][well_conditioned], param[well_conditioned], atol=1e-5, rtol=0), key
    diff, where = max_abs_diff(ddp, rank0_buffers)
    assert diff < 1e-6, f"{where} differs by {diff:.2e} from rank 0's shard statistics"


def test_torchrun_and_amp_train_rdpp(rdpp_root, tmp_path):
    """Two processes (gloo) train RD++ and end with the same parameters, projection included; bf16 autocast trains
    and the checkpoint scores."""
    script, record_dir = tmp_path / "record_ranks.py", tmp_path / "ranks"
    script.write_text(RECORD_RANKS)
    record_dir.mkdir()
    common = [f"--data_root={rdpp_root}", "--category=stripes", "--epochs=1", "--batch_size=3", "--method=rd++", "--backbone=resnet18",
              "--image_size=96", "--weights=none", "--device=cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, RECORD_DIR=str(record_dir))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                             *common, f"--out_dir={tmp_path / 'ddp'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    rank0, rank1 = (torch.load(record_dir / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert len(rank0) == len(rank1) > 0 and all(torch.equal(a, b) for a, b in zip(rank0, rank1))
    assert "proj" in load_checkpoint(str(tmp_path / "ddp" / "stripes" / "checkpoint.pth"))

    run_main("train.py", *common, f"--out_dir={tmp_path / 'amp'}", "--amp=1", check=True)
    result = run_main("test.py", f"--checkpoint={tmp_path / 'amp' / 'stripes' / 'checkpoint.pth'}", "--amp=1", check=True)
    assert "stripes (rd++)" in result.stdout
