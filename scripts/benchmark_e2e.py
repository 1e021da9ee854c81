"""
Whole-process wall time of train.py against the official RD4AD training loop, for the same work.

    $ python scripts/benchmark_e2e.py                        # 16 generated 256x256 images, 2 epochs, batch 4, 3 rounds
    $ python scripts/benchmark_e2e.py --rounds=5 --backbone=resnet18 --image_size=128

Each round runs, as separate processes and in alternating order, `python train.py ...` and this script with
--loop=official: a transcription of the cost profile of the official main.py (hq-deng/RD4AD) on the same
images, backbone (random teacher) and batch size. What it does, as the official code does it: images decoded
and transformed at every epoch by a torchvision ImageFolder + DataLoader (Resize, ToTensor, CenterCrop,
Normalize; shuffled, no worker processes); the teacher's forward pass kept in autograd (its parameters require
grad); torch's default Adam; {'bn', 'decoder'} saved with torch.save after the last epoch. Both processes pay
the same Python + torch imports and build the same networks. Prints every time and the medians' ratio.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--backbone", default="wide_resnet50_2", help="default: wide_resnet50_2")
parser.add_argument("--image_size", type=int, default=256, help="default: 256")
parser.add_argument("--n_images", type=int, default=16, help="generated training images (default: 16)")
parser.add_argument("--epochs", type=int, default=2, help="default: 2")
parser.add_argument("--batch_size", type=int, default=4, help="default: 4")
parser.add_argument("--rounds", type=int, default=3, help="runs of each, interleaved; medians are compared (default: 3)")
parser.add_argument("--loop", default="", help="official: run the official loop's transcription in this process (internal)")
parser.add_argument("--data_root", default="", help="--loop=official: the generated data (internal)")
parser.add_argument("--out", default="", help="--loop=official: the checkpoint path (internal)")
args = parser.parse_args()
CATEGORY = "stripes"


def official_loop():
    """The official main.py's training, transcribed for its costs; our networks (same modules and sizes)."""
    import torch
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    from model import build_model
    from model.losses import cosine_loss

    torch.manual_seed(111)
    transform = transforms.Compose([transforms.Resize((args.image_size, args.image_size)), transforms.ToTensor(),
                                    transforms.CenterCrop(args.image_size),
                                    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    train_data = ImageFolder(root=os.path.join(args.data_root, CATEGORY, "train"), transform=transform)
    loader = torch.utils.data.DataLoader(train_data, batch_size=args.batch_size, shuffle=True)
    encoder, ocbe, decoder = build_model(args.backbone, weights="none", seed=111)
    encoder.requires_grad_(True)  # the official teacher's parameters are never frozen
    teacher = encoder.forward.__wrapped__.__get__(encoder)  # Encoder.forward without its no_grad: the graph is kept
    optimizer = torch.optim.Adam(list(decoder.parameters()) + list(ocbe.parameters()), lr=0.005, betas=(0.5, 0.999))
    for epoch in range(args.epochs):
        ocbe.train()
        decoder.train()
        losses = []
        for image, _ in loader:
            inputs = teacher(image)
            outputs = decoder(ocbe(inputs))
            loss = cosine_loss(inputs, outputs)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        print(f"epoch [{epoch + 1}/{args.epochs}], loss:{statistics.mean(losses):.4f}")
    torch.save({"bn": ocbe.state_dict(), "decoder": decoder.state_dict()}, args.out)


def timed_process(command):
    t0 = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def compare():
    from utils.demo_data import make_category

    with tempfile.TemporaryDirectory() as tmp:
        data_root = os.path.join(tmp, "data")
        make_category(data_root, CATEGORY, size=args.image_size, n_train=args.n_images, n_test_good=1, n_test_defect=1, seed=0)
        common = [f"--backbone={args.backbone}", f"--image_size={args.image_size}", f"--epochs={args.epochs}",
                  f"--batch_size={args.batch_size}"]
        ours = [sys.executable, "train.py", f"--data_root={data_root}", f"--category={CATEGORY}", "--weights=none",
                "--device=cpu", f"--out_dir={os.path.join(tmp, 'runs')}", "--overwrite=1", *common]
        official = [sys.executable, os.path.abspath(__file__), "--loop=official", f"--data_root={data_root}",
                    f"--out={os.path.join(tmp, 'official.pth')}", *common]
        times = {"ours": [], "official": []}
        for i in range(args.rounds):
            order = [("ours", ours), ("official", official)]
            for name, command in order if i % 2 == 0 else order[::-1]:  # alternate who runs first
                times[name].append(timed_process(command))
                print(f"round {i + 1}: {name} {times[name][-1]:.1f} s", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.backbone} {args.image_size}x{args.image_size}, {args.n_images} images, {args.epochs} epochs, batch {args.batch_size}, "
          f"CPU, whole processes, medians of {args.rounds}: train.py {medians['ours']:.1f} s, official loop "
          f"{medians['official']:.1f} s, ratio {medians['ours'] / medians['official']:.2f}")


if __name__ == "__main__":
    if args.loop == "official":
        official_loop()
    else:
        compare()
