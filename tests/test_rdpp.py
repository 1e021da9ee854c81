"""RD++ (method=rd++): the projection layer's keys and shapes, the pseudo-anomalies, the losses, and the contract
with the official code: test.py scores an official RD++ checkpoint as the official evaluation does, an epoch of
train.py equals a transcription of the official training loop (as it is now, summing two batches' gradients into
each step, and as it was before its 2023-12-07 fix), and a resumed run ends bit-identical.

The references are written from the official code's formulas (tientrandinh/Revisiting-Reverse-Distillation):
torchvision transforms, opensimplex, geomloss with the official arguments, torch's own losses.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import geomloss
import numpy as np
import opensimplex
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import transforms

from conftest import ROOT, assert_same, run_main, run_sweep, table_row
from model import BACKBONES, OCBE, Decoder, MultiProjection, build_encoder
from model.checkpoint import load_checkpoint
from model.losses import projection_loss
from model.pseudo_anomalies import SimplexPatches, noise_field, step_generator
from official_rd4ad import official_evaluation, reference_images

SIZE = 96  # the smallest multiple of 32 with room for RD++'s patches (10 to SIZE/8 pixels)
RDPP = ["--method=rd++", "--backbone=resnet18", f"--image_size={SIZE}", "--weights=none", "--device=cpu"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# -----------------------------------------------------------------------------
# the modules


@pytest.mark.parametrize("backbone", BACKBONES)
def test_projection_keeps_each_taps_shape_and_has_the_official_keys(backbone):
    proj = MultiProjection(backbone)
    keys = {f"proj_{t}.proj.{i}.{p}" for t in "abc" for i in (0, 3, 6, 9) for p in ("weight", "bias")}
    assert set(proj.state_dict()) == keys  # InstanceNorm2d without affine weights or statistics, as the official layer
    c = 64 if backbone in ("resnet18", "resnet34") else 256
    assert [proj.state_dict()[f"proj_{t}.proj.0.weight"].shape[1] for t in "abc"] == [c, 2 * c, 4 * c]
    taps = [torch.randn(1, c * 2 ** k, 8 // 2 ** k, 8 // 2 ** k) for k in range(3)]
    assert [p.shape for p in proj(taps)] == [t.shape for t in taps]


def official_octaves(shape, seed):
    """The official rand_3d_octaves(shape, 6, 0.6) of a generator of this seed, evaluated for one patch."""
    generator = opensimplex.OpenSimplex(seed)
    z, y, x = (np.arange(n) for n in shape)
    noise, amplitude, frequency = np.zeros(shape), 1.0, 32.0
    for _ in range(6):
        noise += amplitude * generator.noise3array(x / frequency, y / frequency, z / frequency)
        frequency /= 2
        amplitude *= 0.6
    return noise


def test_each_patch_is_the_top_left_crop_of_one_noise_field():
    field = noise_field(40, 40, seed=5).double().numpy()
    for h, w in [(10, 10), (17, 31), (39, 12), (40, 40)]:
        assert np.allclose(official_octaves((3, h, w), 5), field[:, :h, :w], atol=1e-6), (h, w)


def test_pseudo_anomalies_are_patches_of_that_noise_added_before_normalising():
    size = 128
    pseudo = SimplexPatches(size, seed=11)
    patches = pseudo.patches(64, torch.Generator().manual_seed(0), "cpu")  # (64,3,S,S)
    sizes = set()
    for patch in patches:
        rows, cols = patch.ne(0).any(0).nonzero(as_tuple=True)
        top, left = rows.min().item(), cols.min().item()
        h, w = rows.max().item() - top + 1, cols.max().item() - left + 1
        assert 10 <= h < size // 8 and 10 <= w < size // 8
        assert top >= 1 and left >= 1 and top + h <= size - 1 and left + w <= size - 1
        assert torch.equal(patch[:, top:top + h, left:left + w], pseudo.field[:, :h, :w])  # 0.2 x the field's crop
        sizes.add((h, w))
    assert len(sizes) > 30  # the sizes vary over [10, S/8)

    x01 = torch.rand(2, 3, size, size)
    normalise = transforms.Normalize(MEAN, STD)
    noisy = pseudo(normalise(x01), torch.Generator().manual_seed(1))
    expected = normalise(x01 + pseudo.patches(2, torch.Generator().manual_seed(1), "cpu"))  # the official order
    assert torch.allclose(noisy, expected, atol=1e-5)


def official_loss_terms(noisy_teacher, projected_noisy, projected, shuffle):
    """The official Revisit_RDLoss terms (SSOT, reconstruction, contrast), summed over the three taps."""
    sinkhorn = geomloss.SamplesLoss(loss="sinkhorn", p=2, blur=0.05, reach=None, diameter=10000000, scaling=0.95,
                                    truncate=10, cost=None, kernel=None, cluster_scale=None, debias=True,
                                    potentials=False, verbose=False, backend="auto")
    cos = torch.nn.CosineSimilarity()
    contrast_loss = torch.nn.CosineEmbeddingLoss(margin=0.5)
    ssot = reconstruction = contrast = 0
    for n, pn, p in zip(noisy_teacher, projected_noisy, projected):
        b = p.shape[0]
        ssot = ssot + sinkhorn(torch.softmax(p.view(b, -1), -1), torch.softmax(p[shuffle].view(b, -1), -1))
        reconstruction = reconstruction + torch.mean(1 - cos(pn, p))
        contrast = contrast + contrast_loss(n.view(b, -1), p.view(b, -1), -torch.ones(b))
    return ssot, reconstruction, contrast


def test_projection_loss_terms_equal_the_official_ones_and_ssot_vanishes():
    torch.manual_seed(0)
    noisy_teacher = [torch.randn(4, c, s, s) for c, s in ((64, 24), (128, 12), (256, 6))]
    projected = [torch.randn_like(t, requires_grad=True) for t in noisy_teacher]
    projected_noisy = [(p.detach() + 0.3 * torch.randn_like(p)).requires_grad_() for p in projected]
    noisy_teacher[0] = projected[0].detach() * 2 + 0.1 * torch.randn_like(projected[0])  # a tap with cos > 0.5: contrast > 0
    shuffle = torch.tensor([2, 0, 3, 1])
    total, ours = projection_loss(noisy_teacher, projected_noisy, projected, shuffle)
    reference = official_loss_terms(noisy_teacher, projected_noisy, projected, shuffle)
    for name, a, b in zip(("ssot", "reconstruction", "contrast"), ours, reference):
        assert a.item() == pytest.approx(b.item(), abs=1e-5), name
    assert reference[2].item() > 0.1  # the contrast term is exercised
    assert total.item() == pytest.approx(((reference[0] + 0.01 * reference[1] + 0.1 * reference[2]) / 1.11).item(), abs=1e-5)

    # SSOT compares the batch with a permutation of itself: the same uniform point cloud, divergence 0, gradient 0
    assert abs(ours[0].item()) < 1e-6
    grads = torch.autograd.grad(ours[0], projected)
    reconstruction_grads = torch.autograd.grad(ours[1], projected)
    for g, r in zip(grads, reconstruction_grads):
        assert g.abs().max() < 1e-6 * r.abs().max()
    without = projection_loss(noisy_teacher, projected_noisy, projected, shuffle, ssot=False)[0]
    assert without.item() == pytest.approx(total.item(), abs=1e-6)


# -----------------------------------------------------------------------------
# the contract with the official code


def test_official_rdpp_checkpoint_scores_like_the_official_evaluation(data_root, tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", weights="none", seed=0)
    ocbe, decoder, proj = OCBE("resnet18"), Decoder("resnet18"), MultiProjection("resnet18")
    with torch.no_grad():  # train-mode passes so that the BatchNorm statistics are not the defaults
        for _ in range(3):
            decoder(ocbe(proj(encoder(torch.randn(4, 3, 64, 64)))))
    official = tmp_path / "rdpp_official.pth"
    torch.save({"proj": proj.state_dict(), "decoder": decoder.state_dict(), "bn": ocbe.state_dict()}, official)

    result = run_main("test.py", f"--checkpoint={official}", f"--data_root={data_root}", "--category=stripes",
                      "--backbone=resnet18", "--image_size=64", "--weights=none", f"--out_dir={tmp_path}",
                      "--batch_size=3", "--device=cpu", check=True)
    assert "stripes (rd++)" in result.stdout
    with open(tmp_path / "stripes" / "scores.csv") as f:
        ours = {row["path"]: float(row["score"]) for row in csv.DictReader(f)}
    results = json.loads((tmp_path / "stripes" / "results.json").read_text())
    assert results["method"] == "rd++"

    ref_scores, ref_image_auroc, ref_pixel_auroc = official_evaluation(encoder, ocbe, decoder, reference_images(data_root, "stripes", "test"), proj)
    assert ours.keys() == ref_scores.keys()
    for path, score in ref_scores.items():
        assert ours[path] == pytest.approx(score, abs=1e-4), path
    assert results["image_auroc"] == pytest.approx(ref_image_auroc, abs=1e-4)
    assert results["pixel_auroc"] == pytest.approx(ref_pixel_auroc, abs=1e-4)
    # scored without its projection layer (what test.py did before RD++), the same weights give other scores
    rd_scores = official_evaluation(encoder, ocbe, decoder, reference_images(data_root, "stripes", "test"))[0]
    assert max(abs(rd_scores[p] - ref_scores[p]) for p in ref_scores) > 1e-3


def official_epoch(root, batch_size, fixed):
    """One epoch of the official RD++ loop, main.py of tientrandinh/Revisiting-Reverse-Distillation, transcribed:
    at 7f2ceb7, its newest commit (fixed=True: since 94a8df5 "fix clear gradients", 2023-12-07), every batch's loss
    goes backward and after every 2nd batch both optimizers step, then zero their gradients, so a step sees the sum of
    its two batches' gradients; at ffeb286, the commit before (fixed=False), both optimizers zero their gradients
    before every backward, so a step sees its own batch's gradient alone. Two Adam optimizers with betas (0.5, 0.999):
    the projection layer's (proj_lr 0.001) and the decoder + OCBE's (distill_lr 0.005); the teacher is kept in
    autograd; loss = distillation + 0.2 x projection loss. Each batch's noise patches and SSOT shuffle are the ones
    train.py draws for it (the official dataset draws them from numpy's global state).

    Returns the trained modules by checkpoint name, their initial state dicts, and by "module.name" each parameter's
    gradients at every optimizer step and Adam's first moment at the end."""
    torch.manual_seed(42)  # train.py's order: teacher (its own seeded RNG), OCBE, decoder, projection
    encoder = build_encoder("resnet18", weights="none", seed=42)
    modules = {"bn": OCBE("resnet18"), "decoder": Decoder("resnet18"), "proj": MultiProjection("resnet18")}
    ocbe, decoder, proj = modules["bn"], modules["decoder"], modules["proj"]
    initial = {name: {k: v.clone() for k, v in module.state_dict().items()} for name, module in modules.items()}
    to_tensor = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor()])
    normalise = transforms.Normalize(MEAN, STD)
    folder = os.path.join(root, "stripes", "train", "good")
    images = torch.stack([to_tensor(Image.open(os.path.join(folder, n)).convert("RGB")) for n in sorted(os.listdir(folder))])
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(42))  # epoch 0's
    pseudo_anomalies = SimplexPatches(SIZE, 42)

    optimizer_proj = torch.optim.Adam(proj.parameters(), lr=0.001, betas=(0.5, 0.999))
    optimizer_distill = torch.optim.Adam(list(decoder.parameters()) + list(ocbe.parameters()), lr=0.005, betas=(0.5, 0.999))
    proj.train(), ocbe.train(), decoder.train()
    encoder.requires_grad_(True)
    teacher = encoder.forward.__wrapped__.__get__(encoder)  # the official code keeps the teacher's graph
    cos = torch.nn.CosineSimilarity()
    gradients = {}
    for i, rows in enumerate(order.split(batch_size)):
        b = len(rows)
        generator = step_generator(42, i)
        noise = pseudo_anomalies.patches(b, generator, "cpu")
        shuffle = torch.randperm(b, generator=generator)
        inputs, inputs_noise = teacher(normalise(images[rows])), teacher(normalise(images[rows] + noise))
        projected, projected_noise = proj(inputs), proj(inputs_noise)
        ssot, reconstruction, contrast = official_loss_terms(inputs_noise, projected_noise, projected, shuffle)
        loss_proj = (ssot + 0.01 * reconstruction + 0.1 * contrast) / 1.11
        outputs = decoder(ocbe(projected))
        loss_distill = sum(torch.mean(1 - cos(a.view(b, -1), o.view(b, -1))) for a, o in zip(inputs, outputs))
        loss = loss_distill + 0.2 * loss_proj
        if not fixed:
            optimizer_proj.zero_grad(), optimizer_distill.zero_grad()
        loss.backward()
        if (i + 1) % 2 == 0:
            for name, module in modules.items():
                for k, p in module.named_parameters():
                    if p.grad is not None:
                        gradients.setdefault(f"{name}.{k}", []).append(p.grad.clone())
            optimizer_proj.step(), optimizer_distill.step()
            if fixed:
                optimizer_proj.zero_grad(), optimizer_distill.zero_grad()
    state = {**optimizer_proj.state, **optimizer_distill.state}
    moments = {f"{name}.{k}": state[p]["exp_avg"] for name, module in modules.items() for k, p in module.named_parameters() if p in state}
    return modules, initial, gradients, moments


@pytest.mark.parametrize("accumulate, batch_size", [(True, 2), (False, 4)], ids=["accumulate", "pre-fix"])
def test_one_epoch_equals_the_official_loop(rdpp_root, tmp_path, accumulate, batch_size):
    """train.py, one epoch with step_every=2 (accumulate: 4 batches, 2 steps; pre-fix: 2 batches, 1 step), against
    the official loop of its setting (official_epoch): the gradients each step used, as Adam's first moments, and
    every parameter and BatchNorm statistic within 1e-5."""
    run_main("train.py", f"--data_root={rdpp_root}", "--category=stripes", f"--out_dir={tmp_path}", "--epochs=1",
             f"--batch_size={batch_size}", "--seed=42", f"--accumulate={int(accumulate)}", *RDPP, check=True)
    ckpt = load_checkpoint(str(tmp_path / "stripes" / "checkpoint.pth"))
    n_steps = 8 // batch_size // 2
    assert ckpt["step"] == 8 // batch_size and set(ckpt) >= {"proj", "bn", "decoder", "optimizer"}
    assert all(state["step"].item() == n_steps for state in ckpt["optimizer"]["state"].values())
    modules, initial, gradients, moments = official_epoch(rdpp_root, batch_size, fixed=accumulate)

    # Adam's first moments hold the gradients of the steps (the sums of two batches' with accumulate): equal up to
    # float32 rounding, 1e-5 of each tensor's largest value. Not the projection convs' biases, explained below.
    names = [f"{m}.{k}" for m in ("bn", "decoder", "proj") for k, _ in modules[m].named_parameters()]  # train.py's groups
    indices = [i for group in ckpt["optimizer"]["param_groups"] for i in group["params"]]
    state = ckpt["optimizer"]["state"]
    our_moments = {name: state[i]["exp_avg"] for name, i in zip(names, indices, strict=True) if i in state}
    assert our_moments.keys() == moments.keys()  # the official conv4/bn4 never get a gradient, nor a state
    for name, moment in moments.items():
        if not (name.startswith("proj.") and name.endswith("bias")):
            assert torch.allclose(our_moments[name], moment, atol=1e-5 * moment.abs().max().item(), rtol=0), name

    # Adam moves an element by lr x m/(sqrt(v) + 1e-8): where a gradient is within a few tens of that 1e-8, the
    # rounding differences of the gradients checked above (~1e-9) become different steps (on an AVX2 CPU: 1 to 3
    # elements of the model, up to 3e-5 apart). These elements, and the projection convs' biases (each conv is
    # followed by an InstanceNorm without affine weights, which removes any per-channel constant: their true
    # gradient is 0, what they get is rounding noise), must both only stay within Adam's largest move of their
    # initial value (lr at its first step, 1.055 lr at its second with betas 0.5, 0.999); every other element
    # within 1e-5 of the official one.
    for name, module in modules.items():
        lr = 0.001 if name == "proj" else 0.005
        largest_move = lr * (1 + 1.055 * (n_steps - 1)) + 1e-6
        for k, v in module.state_dict().items():
            ours, where = ckpt[name][k], f"{name}.{k}"
            noise_driven = torch.full_like(v, name == "proj" and k.endswith("bias"), dtype=torch.bool)
            for g in gradients.get(where, []):
                noise_driven |= (g != 0) & (g.abs() < 3e-7)
            for tensor in (ours, v):
                assert ((tensor - initial[name][k]).abs() * noise_driven).max() <= largest_move, where
            assert torch.allclose(ours.float()[~noise_driven], v.float()[~noise_driven], atol=1e-5, rtol=0), where
    # the biases that differ change no output: the official projection with our biases computes the same
    official = modules["proj"]
    with_our_biases = MultiProjection("resnet18")
    with_our_biases.load_state_dict({k: ckpt["proj"][k] if k.endswith("bias") else v for k, v in official.state_dict().items()})
    taps = build_encoder("resnet18", weights="none", seed=42)(torch.rand(2, 3, SIZE, SIZE))
    for a, b in zip(with_our_biases(taps), official(taps)):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("accumulate", [True, False], ids=["accumulate", "pre-fix"])
def test_the_first_batch_of_a_step_counts_only_with_accumulate(rdpp_root, tmp_path, accumulate):
    """One epoch of two batches (8 images in batches of 4), then again with the first batch's images inverted. With
    accumulate the step sums both batches' gradients: the trained weights change. Pre-fix the step sees the 2nd
    batch's gradient alone: the weights are bit-identical, only the BatchNorm statistics (the 1st batch's forward
    moves them) differ."""
    changed_root = tmp_path / "changed"
    shutil.copytree(rdpp_root, changed_root)
    folder = changed_root / "stripes" / "train" / "good"
    names = sorted(os.listdir(folder))
    for i in torch.randperm(8, generator=torch.Generator().manual_seed(42))[:4]:  # train.py's first batch of epoch 1
        ImageOps.invert(Image.open(folder / names[i]).convert("RGB")).save(folder / names[i])
    trained = []
    for root in (rdpp_root, changed_root):
        out_dir = tmp_path / f"runs_{len(trained)}"
        run_main("train.py", f"--data_root={root}", "--category=stripes", f"--out_dir={out_dir}", "--epochs=1", "--batch_size=4",
                 "--seed=42", "--deterministic=1", f"--accumulate={int(accumulate)}", *RDPP, check=True)
        trained.append(load_checkpoint(str(out_dir / "stripes" / "checkpoint.pth")))
    for name, module in (("bn", OCBE("resnet18")), ("decoder", Decoder("resnet18")), ("proj", MultiProjection("resnet18"))):
        first, second = trained[0][name], trained[1][name]
        parameter_change = max((first[k] - second[k]).abs().max().item() for k, _ in module.named_parameters())
        if accumulate:
            assert parameter_change > 1e-4, name
        else:
            assert parameter_change == 0, name
            statistics_change = [k for k, _ in module.named_buffers() if not torch.equal(first[k], second[k])]
            assert name == "proj" or any(k.endswith("running_mean") for k in statistics_change), name  # proj has none


# Runs train.main() and sends itself SIGINT during the forward pass of the SIGINT_AT_BATCH-th batch of the run (from
# 1): Ctrl-C arriving while that batch trains, at a batch chosen by the test.
SIGINT_AT_BATCH = """
import os
import signal

import train

class Interrupted(train.ProjectedStudent):
    batches = 0

    def forward(self, *args):
        Interrupted.batches += 1
        if Interrupted.batches == int(os.environ["SIGINT_AT_BATCH"]):
            os.kill(os.getpid(), signal.SIGINT)
        return super().forward(*args)

train.ProjectedStudent = Interrupted
train.main()
"""


@pytest.mark.slow  # a signal to a training process
@pytest.mark.parametrize("accumulate", [True, False], ids=["accumulate", "pre-fix"])
def test_sigint_between_the_batches_of_a_step_resumes_bit_identical(rdpp_root, tmp_path, accumulate):
    """8 images in batches of 3: 3 batches an epoch, so with accumulate the last batch of epoch 1 and the first two
    of epoch 2 add up to one step (the official loop zeroes gradients only after a step). SIGINT comes during the
    3rd batch: with accumulate the run goes on to that step and saves there (step 5); pre-fix no gradient waits and
    it saves after the batch (step 3). Resumed, both end bit-identical to an uninterrupted run."""
    train = [f"--data_root={rdpp_root}", "--category=stripes", "--epochs=2", "--batch_size=3", "--seed=3", "--deterministic=1",
             f"--accumulate={int(accumulate)}", *RDPP]
    run_main("train.py", *train, f"--out_dir={tmp_path / 'whole'}", check=True)
    script, out_dir = tmp_path / "sigint_at_batch.py", tmp_path / "resumed"
    script.write_text(SIGINT_AT_BATCH)
    result = subprocess.run([sys.executable, str(script), *train, f"--out_dir={out_dir}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env=dict(os.environ, PYTHONPATH=ROOT, SIGINT_AT_BATCH="3"))
    assert result.returncode == 128 + signal.SIGINT, result.stderr
    stop_epoch, stop_step = (2, 5) if accumulate else (1, 3)
    assert f"stopped by signal {int(signal.SIGINT)} at epoch {stop_epoch}, step {stop_step}" in result.stdout
    assert load_checkpoint(str(out_dir / "stripes" / "checkpoint.pth"))["step"] == stop_step
    run_main("train.py", *train, f"--out_dir={out_dir}", "--resume=1", check=True)
    final = load_checkpoint(str(out_dir / "stripes" / "checkpoint.pth"))
    whole = load_checkpoint(str(tmp_path / "whole" / "stripes" / "checkpoint.pth"))
    for key in ("proj", "bn", "decoder", "optimizer", "step"):
        assert_same(final[key], whole[key], key)
    assert final["step"] == 6


# -----------------------------------------------------------------------------
# settings and errors


def test_rdpp_errors_are_one_line(rdpp_root, data_root, tmp_path):
    def error(script, *args):  # in this process (run_main): importing torch is most of what a subprocess costs
        result = run_main(script, *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        return result.stderr.strip()

    assert "--image_size=64: must be at least 96 for rd++" in error("train.py", f"--data_root={data_root}", "--category=stripes",
                                                                   f"--out_dir={tmp_path}", "--method=rd++", "--image_size=64")
    assert "--method='rdpp': must be rd or rd++" in error("train.py", f"--data_root={data_root}", "--method=rdpp")
    assert "--official_epochs=True: must be used only for the MVTec AD categories" in error(
        "train.py", f"--data_root={rdpp_root}", "--category=stripes", "--official_epochs=1", *RDPP)
    assert "--step_every=2: an epoch of 8 images has 1 batches" in error(
        "train.py", f"--data_root={rdpp_root}", "--category=stripes", f"--out_dir={tmp_path}", "--batch_size=8", *RDPP)

    # an RD checkpoint resumed as RD++ (and the other way round), a config that contradicts the keys
    run_main("train.py", f"--data_root={rdpp_root}", "--category=stripes", f"--out_dir={tmp_path / 'rd'}", "--epochs=1",
             "--batch_size=4", "--backbone=resnet18", f"--image_size={SIZE}", "--weights=none", "--device=cpu", check=True)
    path = tmp_path / "rd" / "stripes" / "checkpoint.pth"
    assert "is an RD checkpoint; resume with its method" in error(
        "train.py", f"--data_root={rdpp_root}", "--category=stripes", f"--out_dir={tmp_path / 'rd'}", "--resume=1", "--epochs=2", "--batch_size=4", *RDPP)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["method"] = "rd++"
    torch.save(ckpt, path)
    assert "its config says method=rd++, but it lacks RD++'s projection layer" in error("test.py", f"--checkpoint={path}")
    ckpt["proj"] = MultiProjection("wide_resnet50_2").state_dict()
    torch.save(ckpt, path)
    assert "does not fit backbone=resnet18" in error("test.py", f"--checkpoint={path}")
    # an RD++ checkpoint from before the accumulate setting existed was trained without it, and resumes so only
    del ckpt["config"]["accumulate"]
    torch.save(ckpt, path)
    assert f"--accumulate=True: {path} was trained with accumulate=False" in error(
        "train.py", f"--data_root={rdpp_root}", "--category=stripes", f"--out_dir={tmp_path / 'rd'}", "--resume=1", "--epochs=2", "--batch_size=4", *RDPP)


def test_rd_stays_the_default_and_the_official_epochs_cover_mvtec():
    import train
    from utils.known_datasets import MVTEC_AD, OFFICIAL_EPOCHS
    assert train.method == "rd" and train.epochs == 200
    assert set(OFFICIAL_EPOCHS) == set(MVTEC_AD.categories)
    assert OFFICIAL_EPOCHS["carpet"] == OFFICIAL_EPOCHS["leather"] == 10 and max(OFFICIAL_EPOCHS.values()) == 300


@pytest.mark.slow  # a sweep: a process per run
def test_sweep_passes_the_method_on_and_labels_the_table(rdpp_root, tmp_path):
    out_dir = tmp_path / "runs"
    args = [f"--data_root={rdpp_root}", f"--out_dir={out_dir}", "--categories=stripes", "--epochs=1", "--batch_size=4", *RDPP]
    first = run_sweep(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "proj" in load_checkpoint(str(out_dir / "stripes" / "checkpoint.pth"))
    results_md = (out_dir / "results.md").read_text()
    assert results_md.startswith("# RD++")
    assert table_row(results_md, "Image-Level AUC", "ours, RD++ (resnet18)")[1] != "-"
    assert "skip stripes: results.json exists" in run_sweep(*args).stdout  # done with these settings
    rd = run_sweep(*[a for a in args if a != "--method=rd++"], "--table_only=1")  # an RD table does not count it
    assert table_row((out_dir / "results.md").read_text(), "Image-Level AUC", "ours, RD (resnet18)")[1] == "-", rd.stdout
