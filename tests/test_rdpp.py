"""RD++ (method=rd++): the projection layer's keys and shapes, the pseudo-anomalies, the losses, and the contract
with the official code: test.py scores an official RD++ checkpoint as the official evaluation does, train.py's
steps equal a transcription of the official training iterations, and a resumed run ends bit-identical.

The references are written from the official code's formulas (tientrandinh/Revisiting-Reverse-Distillation):
torchvision transforms, opensimplex, geomloss with the official arguments, torch's own losses.
"""

import csv
import json
import os
import signal
import subprocess
import sys

import geomloss
import numpy as np
import opensimplex
import pytest
import torch
from PIL import Image
from torchvision import transforms

from conftest import ROOT, run_script
from make_demo_data import make_category
from model import BACKBONES, OCBE, Decoder, MultiProjection, build_encoder
from test_reproduction import official_evaluation, reference_images
from checkpoints import load_checkpoint
from model.losses import projection_loss
from pseudo_anomalies import SimplexPatches, noise_field, step_generator

SIZE = 96  # the smallest multiple of 32 with room for RD++'s patches (10 to SIZE/8 pixels)
RDPP = ["--method=rd++", "--backbone=resnet18", f"--image_size={SIZE}", "--weights=none", "--device=cpu"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def rdpp_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rdpp_data")
    make_category(str(root), "stripes", size=SIZE, n_train=8, n_test_good=2, n_test_defect=1, seed=3)
    return str(root)


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
    field = noise_field(40, seed=5).double().numpy()
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

    result = run_script("test.py", f"--checkpoint={official}", f"--data_root={data_root}", "--category=stripes",
                        "--backbone=resnet18", "--image_size=64", "--weights=none", f"--out_dir={tmp_path}",
                        "--batch_size=3", "--device=cpu")
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


def test_two_batches_equal_the_official_iterations(rdpp_root, tmp_path):
    """train.py, one epoch of 2 batches with step_every=2, against the official loop: zero_grad, backward, and an
    Adam step (projection lr 0.001, OCBE + decoder lr 0.005) only after the 2nd batch; the teacher in autograd."""
    run_script("train.py", f"--data_root={rdpp_root}", "--category=stripes", f"--out_dir={tmp_path}", "--epochs=1",
               "--batch_size=4", "--seed=42", *RDPP)
    ckpt = load_checkpoint(str(tmp_path / "stripes" / "checkpoint.pth"))
    assert ckpt["step"] == 2 and set(ckpt) >= {"proj", "bn", "decoder", "optimizer"}

    torch.manual_seed(42)  # train.py's order: teacher (its own seeded RNG), OCBE, decoder, projection
    encoder = build_encoder("resnet18", weights="none", seed=42)
    ocbe, decoder, proj = OCBE("resnet18"), Decoder("resnet18"), MultiProjection("resnet18")
    to_tensor = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor()])
    normalise = transforms.Normalize(MEAN, STD)
    folder = os.path.join(rdpp_root, "stripes", "train", "good")
    images = torch.stack([to_tensor(Image.open(os.path.join(folder, n)).convert("RGB")) for n in sorted(os.listdir(folder))])
    order = torch.randperm(8, generator=torch.Generator().manual_seed(42))
    generator = step_generator(42, 1)  # the noise and shuffle of the batch that is stepped on
    noise = SimplexPatches(SIZE, 42).patches(4, generator, "cpu")
    shuffle = torch.randperm(4, generator=generator)

    optimizer_proj = torch.optim.Adam(proj.parameters(), lr=0.001, betas=(0.5, 0.999))
    optimizer_distill = torch.optim.Adam(list(decoder.parameters()) + list(ocbe.parameters()), lr=0.005, betas=(0.5, 0.999))
    proj.train(), ocbe.train(), decoder.train()
    encoder.requires_grad_(True)
    teacher = encoder.forward.__wrapped__.__get__(encoder)  # the official code keeps the teacher's graph
    cos = torch.nn.CosineSimilarity()
    for i, (rows, patches) in enumerate([(order[:4], torch.zeros_like(noise)), (order[4:], noise)]):
        inputs, inputs_noise = teacher(normalise(images[rows])), teacher(normalise(images[rows] + patches))
        projected, projected_noise = proj(inputs), proj(inputs_noise)
        ssot, reconstruction, contrast = official_loss_terms(inputs_noise, projected_noise, projected, shuffle)
        loss_proj = (ssot + 0.01 * reconstruction + 0.1 * contrast) / 1.11
        outputs = decoder(ocbe(projected))
        loss_distill = sum(torch.mean(1 - cos(a.view(4, -1), b.view(4, -1))) for a, b in zip(inputs, outputs))
        loss = loss_distill + 0.2 * loss_proj
        optimizer_proj.zero_grad(), optimizer_distill.zero_grad()
        loss.backward()
        if (i + 1) % 2 == 0:
            optimizer_proj.step(), optimizer_distill.step()

    for name, module in (("proj", proj), ("bn", ocbe), ("decoder", decoder)):
        for k, v in module.state_dict().items():
            if name == "proj" and k.endswith("bias"):
                # each conv is followed by an InstanceNorm without affine weights, which removes any per-channel
                # constant: these biases change no output, their true gradient is 0, and Adam's first step turns
                # its rounding noise into +-lr. Both must only stay within that step of the initial value.
                assert (ckpt[name][k] - v).abs().max() <= 2 * 0.001 + 1e-6, f"{name}.{k}"
                continue
            assert torch.allclose(ckpt[name][k].float(), v.float(), atol=1e-5, rtol=0), f"{name}.{k}"
    projected_ours, projected_official = MultiProjection("resnet18"), proj
    projected_ours.load_state_dict(ckpt["proj"])
    taps = teacher(normalise(images[:2]))
    for a, b in zip(projected_ours(taps), projected_official(taps)):
        assert torch.allclose(a, b, atol=1e-5)  # the biases that differ change nothing


def test_a_resumed_run_ends_bit_identical(rdpp_root, tmp_path):
    """Stopped by SIGINT after the first batch of epoch 2 (one that only moves BatchNorm statistics), resumed."""
    train = [f"--data_root={rdpp_root}", "--category=stripes", "--epochs=2", "--batch_size=2", "--seed=3", "--deterministic=1", *RDPP]
    run_script("train.py", *train, f"--out_dir={tmp_path / 'whole'}")
    out_dir = tmp_path / "resumed"
    process = subprocess.Popen([sys.executable, "train.py", *train, f"--out_dir={out_dir}"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for line in process.stdout:
            if line.startswith("epoch 1/2"):
                process.send_signal(signal.SIGINT)
                break
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGINT, stderr
    stopped = load_checkpoint(str(out_dir / "stripes" / "checkpoint.pth"))
    assert 4 < stopped["step"] < 8
    run_script("train.py", *train, f"--out_dir={out_dir}", "--resume=1")
    final = load_checkpoint(str(out_dir / "stripes" / "checkpoint.pth"))
    whole = load_checkpoint(str(tmp_path / "whole" / "stripes" / "checkpoint.pth"))
    for part in ("proj", "bn", "decoder"):
        for k, v in whole[part].items():
            assert torch.equal(final[part][k], v), f"{part}.{k}"
    assert final["step"] == whole["step"] == 8


# -----------------------------------------------------------------------------
# settings and errors


def test_rdpp_errors_are_one_line(rdpp_root, data_root, tmp_path):
    def error(*args):
        result = run_script(*args, check=False)
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
    run_script("train.py", f"--data_root={rdpp_root}", "--category=stripes", f"--out_dir={tmp_path / 'rd'}", "--epochs=1",
               "--batch_size=4", "--backbone=resnet18", f"--image_size={SIZE}", "--weights=none", "--device=cpu")
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


def test_rd_stays_the_default_and_the_official_epochs_cover_mvtec():
    import train
    from known_datasets import MVTEC_AD, OFFICIAL_EPOCHS
    assert train.method == "rd" and train.epochs == 200
    assert set(OFFICIAL_EPOCHS) == set(MVTEC_AD.categories)
    assert OFFICIAL_EPOCHS["carpet"] == OFFICIAL_EPOCHS["leather"] == 10 and max(OFFICIAL_EPOCHS.values()) == 300


def test_torchrun_and_amp_train_rdpp(rdpp_root, tmp_path):
    """Two processes (gloo) train RD++ and end with the same parameters, projection included; bf16 autocast trains
    and the checkpoint scores."""
    from test_distributed import RECORD_RANKS
    script, record_dir = tmp_path / "record_ranks.py", tmp_path / "ranks"
    script.write_text(RECORD_RANKS)
    record_dir.mkdir()
    common = [f"--data_root={rdpp_root}", "--category=stripes", "--epochs=1", "--batch_size=3", *RDPP]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, RECORD_DIR=str(record_dir))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                             *common, f"--out_dir={tmp_path / 'ddp'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    rank0, rank1 = (torch.load(record_dir / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert len(rank0) == len(rank1) > 0 and all(torch.equal(a, b) for a, b in zip(rank0, rank1))
    assert "proj" in load_checkpoint(str(tmp_path / "ddp" / "stripes" / "checkpoint.pth"))

    run_script("train.py", *common, f"--out_dir={tmp_path / 'amp'}", "--amp=1")
    result = run_script("test.py", f"--checkpoint={tmp_path / 'amp' / 'stripes' / 'checkpoint.pth'}", "--amp=1")
    assert "stripes (rd++)" in result.stdout


def test_sweep_passes_the_method_on_and_labels_the_table(rdpp_root, tmp_path):
    from test_sweep import run_sweep, table_row
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
