"""
The decoded-image store (utils/image_store.py) and dataset.load_train_set: the store is reused while its images are
unchanged, rebuilt when one is replaced, truncated, or left half-written by a killed build, never used then; two
runs building it at once end with one good store; in memory and streamed, the same pixels.

Run: python -m pytest -q tests/test_image_store.py   (about 20 s on 2 CPU cores)
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, make_category
from dataset import StreamedImages, load_train_set, train_image_paths
from utils.image_store import open_store, store_path
from utils.images import read_image

SIZE = 32
CATEGORIES = ["disc", "stripes"]


@pytest.fixture
def data(tmp_path):
    """(data_root, cache_dir, the training image paths in training order) of two small generated categories."""
    root = tmp_path / "data"
    make_category(str(root), "stripes", size=48, n_train=5, n_test_good=1, n_test_defect=1, seed=0)
    make_category(str(root), "disc", size=48, n_train=3, n_test_good=1, n_test_defect=1, seed=1)
    paths = [p for c in CATEGORIES for p in train_image_paths(str(root), c)]
    return str(root), str(tmp_path / "cache"), paths


def decoded(paths):
    return np.stack([read_image(p, SIZE) for p in paths])  # (N,3,S,S), straight from the files


def build(data, capsys=None):
    """open_store on the data; (store, whether it decoded the images this time)."""
    root, cache, paths = data
    store = open_store(paths, root, CATEGORIES, SIZE, cache, "disc+stripes")
    built = capsys is not None and "decoding" in capsys.readouterr().out
    return store, built


def test_store_holds_the_images_in_training_order_and_is_reused(data, capsys):
    root, cache, paths = data
    store, built = build(data, capsys)
    assert built and len(store) == 8
    assert np.array_equal(store.read_all(), decoded(paths))
    assert np.array_equal(store.read([7, 0, 3]), decoded([paths[7], paths[0], paths[3]]))
    before = os.stat(store.path)
    again, built = build(data, capsys)
    assert not built and again.path == store.path
    assert (os.stat(again.path).st_ino, os.stat(again.path).st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(os.listdir(cache)) == sorted([os.path.basename(store.path), os.path.basename(store.path) + ".lock"])


def test_in_memory_and_streamed_give_the_same_batches(data):
    root, cache, paths = data
    in_memory = load_train_set(root, CATEGORIES, SIZE, in_memory="1", cache_dir=cache, device=torch.device("cpu"), label="disc+stripes")
    streamed = load_train_set(root, CATEGORIES, SIZE, in_memory="0", cache_dir=cache, device=torch.device("cpu"), label="disc+stripes")
    assert isinstance(in_memory, torch.Tensor) and isinstance(streamed, StreamedImages)
    assert torch.equal(in_memory, torch.from_numpy(decoded(paths)))
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    for index in (order[:3], order[3:], slice(2, 6)):
        assert torch.equal(streamed[index], in_memory[index])


def test_a_replaced_image_is_read_new(data, capsys):
    """An image replaced on disk, even by a same-size file given the old modification time: the store is rebuilt and
    a streaming run reads the new pixels."""
    root, cache, paths = data
    build(data, capsys)
    replaced = paths[4]  # stripes' 2nd image
    old = os.stat(replaced)
    Image.open(paths[0]).save(replaced)  # disc's first image in its place
    os.utime(replaced, ns=(old.st_atime_ns, old.st_mtime_ns))
    streamed = load_train_set(root, CATEGORIES, SIZE, in_memory="0", cache_dir=cache, device=torch.device("cpu"), label="disc+stripes")
    assert "decoding" in capsys.readouterr().out
    assert torch.equal(streamed[[4]][0], torch.from_numpy(read_image(paths[0], SIZE)))
    assert not torch.equal(streamed[[4]][0], streamed[[5]][0])


def test_a_truncated_store_is_rebuilt(data, capsys):
    root, cache, paths = data
    store, _ = build(data, capsys)
    store.close()
    with open(store.path, "r+b") as f:
        f.truncate(os.path.getsize(store.path) - 100)  # what a write cut short by a kill would leave
    rebuilt, built = build(data, capsys)
    assert built and np.array_equal(rebuilt.read_all(), decoded(paths))


def slow_builder(data):
    """A builder in its own process, decoding slowly (0.3 s per image) so that it can be killed or overlapped mid-build;
    it prints 'built' if it decoded the images itself, else 'reused', then the sum of all pixels it reads back."""
    root, cache, paths = data
    script = f"""
import io, sys, time
sys.path.insert(0, {ROOT!r})
out, sys.stdout = sys.stdout, io.StringIO()
import utils.image_store as image_store
from utils.images import read_image
image_store.read_image = lambda path, size: (time.sleep(0.3), read_image(path, size))[1]
image_store.BUILD_CHUNK = 1
store = image_store.open_store({paths!r}, {root!r}, {CATEGORIES!r}, {SIZE}, {cache!r}, "disc+stripes")
built = "decoding" in sys.stdout.getvalue()
sys.stdout = out
print("built" if built else "reused", int(store.read_all().sum(dtype="int64")), flush=True)
"""
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_build_killed_midway_leaves_nothing_used(data, capsys):
    root, cache, paths = data
    builder = slow_builder(data)
    path = store_path(cache, root, "disc+stripes", SIZE)
    deadline = time.time() + 120
    while not [n for n in (os.listdir(cache) if os.path.isdir(cache) else []) if n.endswith(".tmp")]:
        assert builder.poll() is None and time.time() < deadline, builder.communicate()
        time.sleep(0.05)
    time.sleep(0.5)  # a row or two written
    builder.send_signal(signal.SIGKILL)
    builder.wait()
    assert not os.path.exists(path)  # only the temporary file: nothing that looks like a store
    store, built = build(data, capsys)
    assert built and np.array_equal(store.read_all(), decoded(paths))
    assert not [n for n in os.listdir(cache) if n.endswith(".tmp")]  # the dead build's file is removed


def test_two_concurrent_builders_make_one_good_store(data):
    root, cache, paths = data
    builders = [slow_builder(data) for _ in range(2)]
    outputs = [b.communicate(timeout=300) for b in builders]
    assert all(b.returncode == 0 for b in builders), outputs
    words = sorted(out.split()[0] for out, _ in outputs)
    assert words == ["built", "reused"]  # the second waited for the first and used its store
    expected = int(decoded(paths).sum(dtype="int64"))
    assert all(int(out.split()[1]) == expected for out, _ in outputs)
    store, _ = build(data)
    assert np.array_equal(store.read_all(), decoded(paths))
    assert not [n for n in os.listdir(cache) if n.endswith(".tmp")]


def test_store_file_is_one_per_data_root_category_set_and_size(data, tmp_path):
    root, cache, _ = data
    names = {store_path(cache, root, "disc+stripes", SIZE), store_path(cache, root, "disc+stripes", 64),
             store_path(cache, root, "stripes", SIZE)}
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    names.add(store_path(cache, str(copy), "disc+stripes", SIZE))
    assert len(names) == 4
    assert store_path(cache, root + "/", "disc+stripes", SIZE) == store_path(cache, root, "disc+stripes", SIZE)
