"""The reproduction contract: test.py matches the official evaluation, train.py's step matches the official
training step, and a saved checkpoint reloads in a new process to the same scores.

The references here are written from the official code's formulas with torchvision transforms, torch and scipy,
independently of dataset.py, model/encoder.py's normalize, model/scoring.py, model/anomaly_map.py and evaluation/metrics.py.
"""

import csv
import json
import os

import pytest
import torch
from PIL import Image
from torchvision import transforms

from conftest import SMALL, run_main
from model import OCBE, Decoder, build_encoder
from official_rd4ad import SIZE, official_evaluation, reference_images


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A random teacher saved in torchvision's state-dict format, standing in for the ImageNet file."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    import torchvision
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return str(path)


def test_official_checkpoint_parity(data_root, teacher_file, tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", weights=teacher_file)
    ocbe, decoder = OCBE("resnet18"), Decoder("resnet18")
    with torch.no_grad():  # a few train-mode passes so the BatchNorm statistics are not the defaults
        for _ in range(3):
            decoder(ocbe(encoder(torch.randn(4, 3, SIZE, SIZE))))
    bn_state = dict(ocbe.state_dict(), **{"memory.weight": torch.zeros(3)})  # official extras must be dropped
    official = tmp_path / "official.pth"
    torch.save({"bn": bn_state, "decoder": decoder.state_dict()}, official)

    run_main("test.py", f"--checkpoint={official}", f"--data_root={data_root}", "--category=stripes",
             "--backbone=resnet18", f"--image_size={SIZE}", f"--weights={teacher_file}", f"--out_dir={tmp_path}",
             "--batch_size=3", "--device=cpu", check=True)
    with open(tmp_path / "stripes" / "scores.csv") as f:
        ours = {row["path"]: float(row["score"]) for row in csv.DictReader(f)}
    results = json.loads((tmp_path / "stripes" / "results.json").read_text())

    ref_scores, ref_image_auroc, ref_pixel_auroc = official_evaluation(encoder, ocbe, decoder, reference_images(data_root, "stripes", "test"))
    assert ours.keys() == ref_scores.keys()
    for path, score in ref_scores.items():
        assert ours[path] == pytest.approx(score, abs=1e-4), path
    assert results["image_auroc"] == pytest.approx(ref_image_auroc, abs=1e-4)
    assert results["pixel_auroc"] == pytest.approx(ref_pixel_auroc, abs=1e-4)


@pytest.mark.parametrize("cache_teacher", [True, False])
def test_one_step_matches_official_protocol(data_root, teacher_file, tmp_path, cache_teacher):
    n_train = len(os.listdir(os.path.join(data_root, "stripes", "train", "good")))
    run_main("train.py", f"--data_root={data_root}", "--category=stripes", f"--out_dir={tmp_path}", "--epochs=1",
             f"--batch_size={n_train}", "--seed=42", *SMALL, f"--weights={teacher_file}", f"--cache_teacher={int(cache_teacher)}", check=True)
    ckpt = torch.load(tmp_path / "stripes" / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["step"] == 1

    # The official step: same init seed, teacher features WITH autograd (as the official code), Adam(lr 0.005,
    # betas (0.5, 0.999)), the flattened cosine loss; the batch in train.py's epoch-0 order.
    torch.manual_seed(42)
    encoder = build_encoder("resnet18", weights=teacher_file, seed=42)
    ocbe, decoder = OCBE("resnet18"), Decoder("resnet18")
    teacher_before = {k: v.clone() for k, v in encoder.state_dict().items()}
    tf = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    folder = os.path.join(data_root, "stripes", "train", "good")
    images = torch.stack([tf(Image.open(os.path.join(folder, n)).convert("RGB")) for n in sorted(os.listdir(folder))])
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(42))
    optimizer = torch.optim.Adam(list(decoder.parameters()) + list(ocbe.parameters()), lr=0.005, betas=(0.5, 0.999))
    ocbe.train(), decoder.train()
    encoder.requires_grad_(True)
    x = images[order]
    teacher = encoder.forward.__wrapped__(encoder, x)  # bypass no_grad: the official code keeps the graph
    student = decoder(ocbe(teacher))
    cos = torch.nn.CosineSimilarity()
    loss = sum(torch.mean(1 - cos(t.view(t.shape[0], -1), s.view(s.shape[0], -1))) for t, s in zip(teacher, student))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    for name, module in (("bn", ocbe), ("decoder", decoder)):
        for k, v in module.state_dict().items():
            assert torch.allclose(ckpt[name][k].float(), v.float(), atol=1e-6, rtol=0), f"{name}.{k}"
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k  # the teacher never changes, BatchNorm statistics included


def test_checkpoint_reloads_to_same_scores(data_root, tmp_path):
    """Scores computed in memory right after training equal test.py's in a new process from the saved file."""
    import train
    from dataset import load_test_set, load_train_images
    from model import build_model
    from model.encoder import normalize
    from model.losses import cosine_loss
    from model.scoring import inference_network, predict
    from utils.io import save_checkpoint
    from utils.runs import ckpt_path

    torch.manual_seed(1)
    encoder, ocbe, decoder = build_model("resnet18", weights="none", seed=1)
    optimizer = torch.optim.Adam(list(ocbe.parameters()) + list(decoder.parameters()), lr=0.005, betas=(0.5, 0.999))
    images = load_train_images(data_root, "stripes", SIZE)
    ocbe.train(), decoder.train()
    for i in range(3):
        teacher = encoder(normalize(images[i * 2:i * 2 + 4]))
        loss = cosine_loss(teacher, decoder(ocbe(teacher)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_images, _, _, paths = load_test_set(data_root, "stripes", SIZE)
    _, before = predict(inference_network(encoder, ocbe, decoder), test_images, batch_size=5)

    config = {k: getattr(train, k) for k in train.config_keys}
    config.update(data_root=data_root, category="stripes", backbone="resnet18", weights="none", seed=1,
                  image_size=SIZE, out_dir=str(tmp_path))
    save_checkpoint(ckpt_path(str(tmp_path), "stripes"), {"bn": ocbe.state_dict(), "decoder": decoder.state_dict(),
                    "optimizer": optimizer.state_dict(), "epoch": 1, "step": 3, "config": config})
    run_main("test.py", f"--checkpoint={ckpt_path(str(tmp_path), 'stripes')}", "--device=cpu", "--batch_size=2", check=True)
    with open(tmp_path / "stripes" / "scores.csv") as f:
        after = {row["path"]: float(row["score"]) for row in csv.DictReader(f)}
    assert list(after) == paths
    for path, score in zip(paths, before.tolist()):
        assert after[path] == pytest.approx(score, abs=1e-6), path


def test_train_then_test_smoke(trained):
    out_dir, checkpoint = trained
    result = run_main("test.py", f"--checkpoint={checkpoint}", check=True)
    assert "image_auroc" in result.stdout
    results = json.loads(open(os.path.join(out_dir, "stripes", "results.json")).read())
    for key in ("image_auroc", "pixel_auroc", "image_f1", "pixel_aupro"):
        assert 0.0 <= results[key] <= 1.0
    assert set(json.load(open(os.path.join(out_dir, "stripes", "config.json")))) >= {"lr", "betas", "seed", "epochs"}
