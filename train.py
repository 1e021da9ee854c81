"""
Train Reverse Distillation (Deng & Li, CVPR 2022) or RD++ (Tien et al., CVPR 2023) on the normal images of one
category, or one model on those of several (the unified multi-class setting).

    $ python train.py --data_root=data/mvtec --category=bottle
    $ python train.py --data_root=data/mvtec --categories=all --protocol=ader       # one model of every category, ADer's protocol
    $ python train.py --data_root=data/mvtec --category=bottle --method=rd++ --official_epochs=1   # RD++, its epochs
    $ python train.py --data_root=data/demo --category=stripes --backbone=resnet18 --image_size=128 --weights=none
    $ python train.py --data_root=data/demo --category=specks --image_size=768,1024 --crop_size=256   # high resolution
    $ torchrun --nproc_per_node=4 train.py --category=bottle    # data-parallel over 4 GPUs, same global batch

Every setting below can be overridden as --name=value. The frozen teacher encodes each image at three
scales, the OCBE fuses them into one embedding, the student decoder rebuilds the three feature maps; Adam
trains OCBE + decoder to minimise the teacher-student cosine distance. RD++ puts a trainable projection
layer between the teacher and the OCBE and trains it with simplex-noise pseudo-anomalies (model/pseudo_anomalies.py;
its loss in model/losses.py); its lines in the loop are marked "RD++". The model after the last epoch is saved to
<out_dir>/<category>/checkpoint.pth, the settings beside it in config.json and the loss of every epoch in loss.csv
(epoch,loss,seconds); evaluate it with test.py. No test data is looked at here. A model of several categories goes to <out_dir>/<run name>/ instead
(utils.runs.run_name: bottle+cable+screw, or unified_<n>_categories_<hash> for long lists), its config
"categories" the sorted list and "category" "".

The training images are decoded once into a file of cache_dir and reused by later runs; they are then kept in
memory, or read batch by batch from that file when they would not fit (in_memory, dataset.load_train_set): the loop
is the same either way, and so are the checkpoints, bit for bit. With crop_size the crops are cut from those
image_size pixels as each batch is read, at corners drawn from (seed, step) alone: a resumed run cuts the same ones. --protocol=ader sets the settings of ADer's unified
benchmark (model/protocols.py); any setting given on the command line wins over the preset.
"""

import contextlib
import functools
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from dataset import crop_corners, find_categories, load_train_set, read_batch
from model import OCBE, Decoder, MultiProjection, build_encoder, build_loaded
from model.checkpoint import load_checkpoint
from model.encoder import normalize, teacher_features
from model.losses import batch_loss
from model.projection import ProjectedStudent
from model.protocols import apply_protocol, check_config
from model.pseudo_anomalies import SimplexPatches, step_generator
from utils.config import ConfigError, apply_overrides, run_cli, script_settings, size_hw
from utils.files import atomic_write_json, check_outputs
from utils.image_store import default_cache_dir
from utils.known_datasets import OFFICIAL_EPOCHS
from utils.memory import memory_decision
from utils.runs import CheckpointWriter, LossLog, ckpt_path, loss_csv_path, resume_keys, run_dir, run_name, saved_setting
from utils.seeding import resolve_device, set_seed

# -----------------------------------------------------------------------------
method = "rd"  # rd (Deng & Li, CVPR 2022) | rd++ (Tien et al., CVPR 2023: + projection layer and pseudo-anomalies)
data_root = "data/mvtec"  # folder holding CATEGORY/train/good, CATEGORY/test, CATEGORY/ground_truth
category = "bottle"  # any sub-folder of data_root: a model of this category alone
categories = ""  # a,b,c or all (every sub-folder with train/good): ONE model of the union of their normal images, shuffled together; replaces category
backbone = "wide_resnet50_2"  # teacher: resnet18 | resnet34 | resnet50 | wide_resnet50_2 | wide_resnet101_2
weights = "imagenet"  # teacher weights: imagenet (torchvision IMAGENET1K_V1) | path to a state dict | none (random)
image_size = 256  # images are resized to image_size x image_size, or to HEIGHT,WIDTH (--image_size=768,1024); multiples of 32
crop_size = 0  # 0: train on whole images | C: on a random C x C window of each image at image_size, a new one each time it is drawn, so step time and memory follow C, not image_size (docs/high_resolution.md); a multiple of 32
batch_size = 16
epochs = 200
lr = 0.005  # Adam learning rate
betas = (0.5, 0.999)  # Adam betas
lr_decay = 0.0  # lr x0.1 from epoch int(lr_decay * epochs) on and again every as many epochs, set at each batch (timm's StepLR); 0: constant
clip_grad = 0.0  # clip the total L2 norm of the gradient to this before each optimizer step; 0: no clipping
drop_last = False  # leave out the last, incomplete batch of each epoch (a different one each epoch)
protocol = "official"  # official (the defaults here) | ader: ADer's unified benchmark, see PROTOCOLS; settings given on the command line win | mvtec_ad_2: trained as official, and test.py evaluates with MVTec AD 2's protocol
seed = 42  # seeds the OCBE/decoder init, the shuffling and (weights=none) the teacher
deterministic = False  # deterministic kernels, no cudnn autotuning: reproducible but slower
device = "auto"  # auto (cuda if available) | cpu | cuda | cuda:1 ...
amp = False  # bf16 autocast for the networks (CUDA, or CPUs with bf16); loss and anomaly maps stay float32
compile = False  # torch.compile the OCBE and decoder
in_memory = "auto"  # 1: the decoded training images kept in memory on the device | 0: each batch read from cache_dir (memory flat in the number of images) | auto: 1 if they take at most half the available memory
cache_teacher = "auto"  # 1: teacher features of the training images computed once (7 MB per 256x256 image), not every step | 0 | auto: 1 if they take at most half the available memory; never with crop_size
cache_dir = ""  # where the decoded training images are kept, one file per data_root, category set and image_size; "": $XDG_CACHE_HOME or ~/.cache, /reverse_distillation
out_dir = "runs"  # writes <out_dir>/<category or run name>/checkpoint.pth, config.json and loss.csv
save_minutes = 10.0  # a checkpoint at most this often (written in the background), always after the last step and on Ctrl-C/SIGTERM; 0: after every optimizer step
# RD++ only (method = "rd++"), the official values:
proj_lr = 0.001  # Adam learning rate of the projection layer (OCBE + decoder keep lr)
weight_proj = 0.2  # weight of the projection loss (SSOT + 0.01 reconstruction + 0.1 contrast) / 1.11
step_every = 2  # optimizer step after every 2nd batch of an epoch (the official accumulation_steps)
accumulate = True  # each step from the summed gradients of its step_every batches, as the official code since its 2023-12-07 fix; False: the official loop before that fix, and ADer's RD++: each step from its own batch's gradient alone, the batches in between only move BatchNorm statistics
ssot = True  # compute the SSOT term; it compares the batch with a permutation of itself, so it is 0 with zero gradient up to rounding: False skips its cost
official_epochs = False  # each MVTec AD category's epochs of the official code (10 for carpet and leather ... 300) instead of epochs
resume = False  # continue from the run's checkpoint.pth if it exists
overwrite = False  # replace an existing run's checkpoint instead of refusing
debug = False  # show Python tracebacks for user errors
# -----------------------------------------------------------------------------
config_keys = list(script_settings(__file__))  # the names of the settings above: what --name=value may set

def setup_distributed(device):
    """(rank, world_size, device) under torchrun (RANK/WORLD_SIZE set), else (0, 1, the `device` setting's device)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    dev = torch.device(resolve_device(device))
    if world_size == 1:
        return 0, 1, dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), world_size, dev


def use_teacher_cache(setting, encoder, images, dev, amp, log):
    """cache_teacher (setting) as yes or no: 1, 0, or for auto whether the features of all images fit (utils/memory.py), said."""
    if setting != "auto":
        return setting == "1"
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        taps = encoder(normalize(images[:1]))  # 3 taps, each (1,C,H,W), of the dtype the cache would have
    n_bytes = len(images) * sum(t.numel() * t.element_size() for t in taps)
    keep, line = memory_decision("cache_teacher", f"the teacher's features of {len(images)} images", n_bytes, dev)
    log(line + (": computed once" if keep else ": computed at every step"))
    return keep


def main():
    global epochs, category
    apply_overrides(globals(), sys.argv[1:], config_keys)
    apply_protocol(globals(), sys.argv[1:])
    check_config({k: globals()[k] for k in config_keys})
    trained_categories = find_categories(data_root, categories) if categories else [category]
    category = trained_categories[0] if len(trained_categories) == 1 else ""  # "": a unified model
    name = run_name(trained_categories)
    if official_epochs:  # RD++
        epochs = OFFICIAL_EPOCHS[category]
    rdpp = method == "rd++"
    config = {k: globals()[k] for k in config_keys}
    config["categories"] = trained_categories
    rank, world_size, dev = setup_distributed(device)
    log = print if rank == 0 else lambda *args: None
    path = ckpt_path(out_dir, name)
    if rank == 0:  # the one process that writes; another's try could race with its removal of a folder it made
        check_outputs(f"out_dir={out_dir}", run_dir(out_dir, name), files=[os.path.basename(path), "config.json"])
    if os.path.exists(path) and not (resume or overwrite):
        raise ConfigError(f"{path}: a run already exists; pass --resume=1 to continue it or --overwrite=1 to replace it")

    set_seed(seed, deterministic)
    # the data first: a bad file fails in seconds, not after the teacher is built (or downloaded)
    images = load_train_set(data_root, trained_categories, image_size, in_memory=in_memory, cache_dir=cache_dir or default_cache_dir(), device=dev,
                            label=name)  # (N,3,H,W) uint8
    steps_per_epoch = len(images) // batch_size if drop_last else math.ceil(len(images) / batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(f"--drop_last=1: {len(images)} training images make no full batch of {batch_size}; lower batch_size")
    if rdpp and steps_per_epoch < step_every:
        raise ConfigError(f"--step_every={step_every}: an epoch of {len(images)} images has {steps_per_epoch} batches of {batch_size}, so no optimizer step would ever be taken; lower step_every or batch_size")
    checkpoint = load_checkpoint(path, dev) if resume and os.path.exists(path) else None
    if checkpoint is not None:
        for k in resume_keys(method):
            trained_with = saved_setting(checkpoint.get("config", {}), k)
            if trained_with != config[k]:
                raise ConfigError(f"--{k}={config[k]!r}: {path} was trained with {k}={trained_with!r}; resume with the same value or use another out_dir")
        if ("proj" in checkpoint) != rdpp:
            raise ConfigError(f"--method={method}: {path} is {'an RD++' if 'proj' in checkpoint else 'an RD'} checkpoint; resume with its method or use another out_dir")
        if checkpoint["step"] > epochs * steps_per_epoch:
            raise ConfigError(f"--epochs={epochs}: {path} has already trained {checkpoint['step'] // steps_per_epoch} epochs; resume with at least that many")
    elif resume:
        log(f"resume: no checkpoint at {path}, starting from scratch")

    encoder = build_encoder(backbone, weights, seed).to(dev)
    # the trained modules by their checkpoint names (the official ones); RD++: the projection layer between
    # teacher and OCBE. A fresh run initialises them from the seed; a resumed one builds them straight from
    # the checkpoint, skipping a random initialisation that would be overwritten.
    makers = {"bn": functools.partial(OCBE, backbone), "decoder": functools.partial(Decoder, backbone)}
    if rdpp:
        makers["proj"] = functools.partial(MultiProjection, backbone)
    if checkpoint is None:
        trained = {name: make().to(dev) for name, make in makers.items()}
    else:
        trained = {name: build_loaded(make, checkpoint[name]) for name, make in makers.items()}
    ocbe, decoder, proj = trained["bn"], trained["decoder"], trained.get("proj")
    param_groups = [{"params": list(ocbe.parameters()) + list(decoder.parameters())}]
    if rdpp:  # RD++: the projection layer, trained with its own learning rate
        param_groups.append({"params": list(proj.parameters()), "lr": proj_lr})
        pseudo_anomalies = SimplexPatches(crop_size or image_size, seed)  # at the size the networks see
    # fused: one kernel over all parameters instead of a loop of small ops, 4x faster on CPU, same update
    optimizer = torch.optim.Adam(param_groups, lr=lr, betas=betas, fused=True)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    decay_steps = int(lr_decay * epochs) * steps_per_epoch  # timm's StepLR decay_t, counted in batches
    step = 0  # batches done; the epoch and the batch within it follow from it
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        step = checkpoint["step"]
        log(f"resuming {path} at epoch {step // steps_per_epoch + 1}, step {step}")
        del checkpoint  # its tensors now are the modules' and the optimizer's

    # Checkpoints are copied to memory and written in the background while training goes on (one at a time).
    writer = CheckpointWriter()
    loss_log = LossLog(loss_csv_path(out_dir, name), step // steps_per_epoch) if rank == 0 else None

    def save():
        if rank == 0:
            atomic_write_json(os.path.join(run_dir(out_dir, name), "config.json"), config)  # beside its checkpoint
            writer.write(path, {**{name: module.state_dict() for name, module in trained.items()}, "optimizer": optimizer.state_dict(),
                                "epoch": step // steps_per_epoch, "step": step, "config": config})

    # Ctrl-C or SIGTERM (a scheduler's pre-emption) stop at the next optimizer step with a checkpoint saved.
    stop_signal = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, _: stop_signal.append(s))

    # teacher features -> OCBE embedding -> rebuilt features (RD++: teacher features -> projection -> OCBE -> decoder)
    student = ProjectedStudent(proj, ocbe, decoder) if rdpp else torch.nn.Sequential(ocbe, decoder)
    student.train()
    if world_size > 1:
        if dev.type == "cuda":  # batch statistics over the global batch, as one process would compute them
            student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
        # the official OCBE's conv4/bn4 never get a gradient: DDP must be told to expect unused parameters
        student = torch.nn.parallel.DistributedDataParallel(student, find_unused_parameters=True)
    if compile:
        student = torch.compile(student)
    # The teacher is frozen and there is no augmentation, so its features of a training image never change:
    # computed once (3 taps, each (N,C,H,W)), they save its forward pass at every step (a sixth of a CPU step)
    # for the same numbers. Not with crop_size: the teacher sees another window of each image at every step.
    cached = not crop_size and use_teacher_cache(cache_teacher, encoder, images, dev, amp, log)
    teacher_cache = teacher_features(encoder, images, batch_size, amp) if cached else None
    saved_at = time.monotonic()
    log(f"training {name} ({method}): {len(images)} images" + (f" of {len(trained_categories)} categories" if not category else "")
        + f", {backbone} ({weights}), {epochs} epochs of {steps_per_epoch} steps on {dev}" + (f" x {world_size} processes" if world_size > 1 else "")
        + (f", on random {crop_size}x{crop_size} crops (the teacher's features are not cached)" if crop_size else ""))
    while step < epochs * steps_per_epoch:
        epoch, first_batch = divmod(step, steps_per_epoch)
        # One permutation per epoch from (seed, epoch): a resumed run sees the same batches as an uninterrupted one.
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + epoch)).to(dev)
        t0, total, n_losses = time.time(), 0.0, 0  # the epoch's loss: the mean of its batches that ran a backward
        for i in tqdm(range(first_batch, steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=None if rank == 0 else True):
            batch = order[i * batch_size:(i + 1) * batch_size]
            shard = batch.tensor_split(world_size)[rank]  # this process's part of the global batch
            # crop_size: each image's window, from (seed, step) alone, the same on every process and after a resume
            corners = crop_corners(seed, step, len(batch), size_hw(image_size), crop_size) if crop_size else None  # (B,2)
            shard_corners = corners.tensor_split(world_size)[rank] if crop_size else None
            # RD++: an optimizer step on every step_every-th batch of the epoch, as the official loop. accumulate (the
            # official loop since 94a8df5): each batch adds its gradient and only a step zeroes them, so an epoch's
            # odd last batch joins the next epoch's first step. Otherwise (before 94a8df5, zero_grad before every
            # backward) the batches in between only move the BatchNorm statistics.
            update = not rdpp or (i + 1) % step_every == 0
            backward = update or accumulate
            pending = backward and not update  # a gradient waiting for a later step
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp), torch.set_grad_enabled(backward):
                if teacher_cache is None:
                    teacher = encoder(normalize(read_batch(images, shard, shard_corners, crop_size)))  # 3 taps, no graph kept: the teacher is frozen
                else:
                    teacher = [tap[shard] for tap in teacher_cache]  # 3 taps, each (B/world_size,C,H,W)
                noisy = shuffle = None
                if rdpp and backward:  # RD++: the teacher also encodes the batch with a simplex-noise patch per image
                    generator = step_generator(seed, step)  # this batch's noise and shuffle, whatever the process
                    noisy = pseudo_anomalies(normalize(read_batch(images, batch, corners, crop_size)), generator).tensor_split(world_size)[rank]
                    shuffle = torch.randperm(len(shard), generator=generator)
                if not backward:  # RD++ before 94a8df5, between steps: the student's forward only moves the BatchNorm statistics
                    student(teacher)
            if backward:
                # DDP: a gradient waiting for its step stays in this process (DDP decides at the forward whether the
                # backward all-reduces); the step's batch all-reduces the sum
                with student.no_sync() if world_size > 1 and pending else contextlib.nullcontext():
                    loss = batch_loss(student, encoder, teacher, noisy, shuffle, weight_proj=weight_proj, ssot=ssot, amp=amp)
                # DDP averages gradients over processes; weighting by shard size makes that the global batch mean.
                (loss * len(shard) * world_size / len(batch)).backward()
                loss = loss.detach() * len(shard) / len(batch)
                if world_size > 1:
                    dist.all_reduce(loss)
                if not torch.isfinite(loss):
                    writer.wait()  # a checkpoint being written is the last good one: it must be complete
                    raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}; stopped, {path} keeps the last saved checkpoint, if any (try a lower lr)")
                if update:
                    if clip_grad:
                        torch.nn.utils.clip_grad_norm_([p for group in param_groups for p in group["params"]], clip_grad)
                    if lr_decay:
                        for group, base_lr in zip(optimizer.param_groups, base_lrs):
                            group["lr"] = base_lr * 0.1 ** (step // decay_steps)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                total, n_losses = total + loss.item(), n_losses + 1
            step += 1
            writer.check()  # a background write that failed (a full disk) stops the run here
            # checkpoints and signals wait for the step of a pending gradient, which a checkpoint does not hold
            if not pending and time.monotonic() - saved_at >= save_minutes * 60 and step < epochs * steps_per_epoch:
                save()
                saved_at = time.monotonic()
            if world_size > 1:  # every process must stop at the same step
                stop = torch.tensor(float(bool(stop_signal)), device=dev)
                dist.all_reduce(stop)
                if stop.item() and not stop_signal:
                    stop_signal.append(signal.SIGTERM)
            if stop_signal and not pending:
                save()
                writer.wait()
                log(f"stopped by signal {stop_signal[0]} at epoch {epoch + 1}, step {step}; saved {path}, continue with --resume=1")
                sys.exit(128 + stop_signal[0])
        epoch_loss, epoch_seconds = total / max(n_losses, 1), time.time() - t0
        log(f"epoch {epoch + 1}/{epochs} | loss {epoch_loss:.4f} | {epoch_seconds:.1f}s")
        if loss_log is not None:
            loss_log.append(epoch + 1, epoch_loss, epoch_seconds)
    save()  # accumulate: the gradient of an odd last batch is dropped, as at the end of the official loop
    writer.wait()
    log(f"saved {path}")
    if world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main, lambda: debug)
