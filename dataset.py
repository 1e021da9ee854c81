"""
MVTec AD folder layout, read as uint8 tensors (decoded and resized once).

    DATA_ROOT/CATEGORY/train/good/*.png                  normal training images
    DATA_ROOT/CATEGORY/test/<type>/*.png                 test images; <type> 'good' is normal
    DATA_ROOT/CATEGORY/ground_truth/<type>/NNN_mask.png  a mask per anomalous test image

    from dataset import load_train_images, load_train_set, load_test_set
    images = load_train_images("data/mvtec", "bottle", 256)    # (N,3,256,256) uint8; model.encoder.normalize for the teacher
    images = load_train_set("data/mvtec", ["bottle", "cable"], 256, in_memory="auto", cache_dir=cache_dir, device=device, label="bottle+cable")
    batch = images[order[:16]]                                 # (16,3,256,256) uint8 on device, either way
    corners = crop_corners(seed, step, 16, (256, 256), 128)    # (16,2) top-left corners, from (seed, step) alone
    crops = read_batch(images, order[:16], corners, 128)        # (16,3,128,128): each image's window at its corner
    masks = load_native_masks("data/mvtec", "bottle", paths)    # eval_size=native: each test image's mask at its own size

A size is an int (a square) or [height, width] (utils/config.py): images are then (N,3,H,W).

load_train_set serves train.py the training images of one category or of several together (the unified setting:
one model on the union, in the order of the sorted categories, each category's files sorted). They are decoded
once into a file of the cache folder (utils/image_store.py) and reused by later runs; then either the whole set is kept
in memory on the training device (in_memory=1, as a tensor) or each batch is read from that file when it is needed
(in_memory=0: memory that does not grow with the number of images); auto keeps them in memory when they take at
most half of the memory available (utils/memory.py). Both give the same batches, bit for bit.

Any category name works. Images are read by utils/images.py (torch-free, shared with scripts/predict_onnx.py):
listings are sorted; grayscale, palette and RGBA images become RGB; images are resized with PIL's antialiased
bilinear filter (what torchvision's Resize does on PIL images). In a mask any non-zero value is anomalous (MVTec's
255, 0/1 masks, label indices), and masks are resized bilinearly and binarised at > 0.5. A category without a
ground_truth folder is labelled by its test folder names alone (good = normal): load_test_set returns no masks.
Problems with the data raise a ConfigError naming the file.
"""

import os
import warnings

import numpy as np
import torch
from PIL import Image

from utils.config import ConfigError, size_hw
from utils.image_store import open_store
from utils.images import IMAGE_EXTENSIONS, list_images, load_all, mask_path_for, native_size, open_image, read_images
from utils.memory import memory_decision

CROP_STREAM = 1  # crop_corners' random stream, apart from RD++'s noise draws of the same (seed, step)


def load_mask(path, size, image_path):
    """((H,W) bool tensor at size, whether the file held values other than 0 and 255): the mask binarised (any non-zero
    value is anomalous: 0/1 masks and label indices count too), resized bilinearly and binarised again at > 0.5."""
    height, width = size_hw(size)
    mask = open_image(path)
    if mask.mode not in ("1", "L"):
        raise ConfigError(f"{path}: a mask must be a binary or grayscale image, this one is {mask.mode}")
    with Image.open(image_path) as img:
        if img.size != mask.size:
            warnings.warn(f"{path}: mask is {mask.size[0]}x{mask.size[1]} but its image is {img.size[0]}x{img.size[1]}; both are resized to {width}x{height}")
    values = np.asarray(mask.convert("L"))  # (H,W) uint8
    other_values = bool(((values != 0) & (values != 255)).any())
    binary = Image.fromarray((values != 0).astype(np.uint8) * 255)
    resized = np.asarray(binary.resize((width, height), Image.Resampling.BILINEAR))
    return torch.from_numpy(resized > 127.5), other_values  # ToTensor's /255, then > 0.5


def load_images(paths, size):
    """The images at paths as one (N,3,H,W) uint8 tensor at size (utils.images.read_images)."""
    return torch.from_numpy(read_images(paths, size))


def image_folder(folder, setting):
    """The sorted image paths of a folder of unlabelled images given as --<setting>=folder (predict.py, calibrate.py);
    a ConfigError if it is not a folder or holds no images."""
    if not os.path.isdir(folder):
        raise ConfigError(f"{setting}={folder}: no such folder")
    paths = list_images(folder)
    if not paths:
        raise ConfigError(f"{setting}={folder}: holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def category_dir(data_root, category):
    if not os.path.isdir(data_root):
        raise ConfigError(f"data_root={data_root}: no such folder")
    folder = os.path.join(data_root, category)
    if not category or not os.path.isdir(folder):
        found = sorted(d for d in os.listdir(data_root) if os.path.isdir(os.path.join(data_root, d)))
        raise ConfigError(f"category={category}: no folder {folder} (found: {', '.join(found) or 'none'})")
    return folder


def train_image_paths(data_root, category):
    """Sorted paths of the images of CATEGORY/train/good."""
    folder = os.path.join(category_dir(data_root, category), "train", "good")
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder}: missing; training needs normal images in CATEGORY/train/good")
    paths = list_images(folder)
    if not paths:
        raise ConfigError(f"{folder}: holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def load_train_images(data_root, category, size):
    """All images of CATEGORY/train/good as one (N,3,H,W) uint8 tensor at size."""
    return load_images(train_image_paths(data_root, category), size)


def find_categories(data_root, names):
    """The sorted category names of a --categories value: 'a,b,c', or 'all' for every folder of data_root that has
    train/good. Each must be a folder of data_root."""
    if names == "all":
        if not os.path.isdir(data_root):
            raise ConfigError(f"data_root={data_root}: no such folder")
        found = sorted(d for d in os.listdir(data_root) if os.path.isdir(os.path.join(data_root, d, "train", "good")))
        if not found:
            raise ConfigError(f"--categories=all: no folder of data_root={data_root} has train/good")
        return found
    found = sorted(set(c.strip() for c in names.split(",") if c.strip()))
    if not found:
        raise ConfigError(f"--categories={names}: expected comma-separated category names, or all")
    for c in found:
        category_dir(data_root, c)
    return found


class StreamedImages:
    """The training images as train.py indexes them, read from the store at each batch: images[index] with a slice,
    a list or an int64 tensor of positions -> (B,3,H,W) uint8 tensor on `device`, like the in-memory tensor's."""

    def __init__(self, store, device):
        self.store, self.device = store, device

    def __len__(self):
        return len(self.store)

    def __getitem__(self, index):
        rows = range(len(self.store))[index] if isinstance(index, slice) else torch.as_tensor(index).tolist()
        return torch.from_numpy(self.store.read(rows)).to(self.device)

    def crops(self, rows, corners, size):
        """read_batch's windows, read from the store (utils.image_store.ImageStore.read_crops)."""
        return torch.from_numpy(self.store.read_crops(rows, corners, size)).to(self.device)


def crop_corners(seed, step, n, image_hw, size):
    """(n,2) int64 top-left corners (top, left) of n size x size windows of (H,W) images, uniform over every
    position, drawn from (seed, step) alone: a resumed run, or another process, draws the same ones."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, CROP_STREAM]).generate_state(1)[0]))
    top = torch.randint(0, image_hw[0] - size + 1, (n,), generator=generator)
    left = torch.randint(0, image_hw[1] - size + 1, (n,), generator=generator)
    return torch.stack([top, left], dim=1)


def read_batch(images, rows, corners=None, size=0):
    """images[rows] (the in-memory tensor or StreamedImages), or with `size` (B,3,size,size) uint8: for each image
    its window with top-left corner corners[i] = (top, left). The same pixels either way, so in_memory 0 and 1 train
    alike."""
    if not size:
        return images[rows]
    rows, corners = torch.as_tensor(rows).tolist(), torch.as_tensor(corners).tolist()
    if isinstance(images, StreamedImages):
        return images.crops(rows, corners, size)
    return torch.stack([images[r, :, top:top + size, left:left + size] for r, (top, left) in zip(rows, corners)])


def load_train_set(data_root, categories, size, *, in_memory, cache_dir, device, label):
    """The train/good images of the categories, in training order: an (N,3,H,W) uint8 tensor on device
    (in_memory=1), a StreamedImages (0), or whichever of the two fits (auto); see the module docstring. The store is
    <cache_dir>/<data_root's name>-<label>-<size>px-<key>.rdstore (utils.image_store.store_path); train.py's label is
    the run's name (utils.runs.run_name)."""
    paths = [p for c in categories for p in train_image_paths(data_root, c)]
    store = open_store(paths, data_root, categories, size, cache_dir, label)
    if in_memory == "auto":
        keep, line = memory_decision("in_memory", f"the {len(paths)} training images", len(paths) * 3 * int(np.prod(size_hw(size))), device)
        print(line + (": kept in memory" if keep else f": read batch by batch from {store.path}"))
    else:
        keep = in_memory == "1"
    if not keep:
        return StreamedImages(store, device)
    images = torch.from_numpy(store.read_all())
    store.close()
    return images.to(device)


def load_test_set(data_root, category, size):
    """The test split: images (N,3,H,W) uint8, masks (N,H,W) bool, labels (N,) int64 (1 = anomalous) and
    each image's path relative to the category folder (e.g. 'test/broken_large/000.png').

    A category without a ground_truth folder has image labels only (from the folder names: good is normal, any
    other type anomalous): its masks are None."""
    folder = category_dir(data_root, category)
    test_folder = os.path.join(folder, "test")
    if not os.path.isdir(test_folder):
        raise ConfigError(f"{test_folder}: missing; testing needs CATEGORY/test/<type>/ images")
    has_masks = os.path.isdir(os.path.join(folder, "ground_truth"))
    image_paths, mask_paths, labels = [], [], []
    for defect in sorted(os.listdir(test_folder)):
        defect_folder = os.path.join(test_folder, defect)
        if not os.path.isdir(defect_folder):
            continue
        paths = list_images(defect_folder)
        masks = [None if defect == "good" or not has_masks else mask_path_for(folder, defect, p) for p in paths]
        for image, mask in zip(paths, masks):
            if mask is not None and not os.path.isfile(mask):
                raise ConfigError(f"{image}: anomalous test image without its mask {mask}")
        if defect != "good" and has_masks:
            check_orphan_masks(folder, defect, paths)
        image_paths += paths
        mask_paths += masks
        labels += [int(defect != "good")] * len(paths)
    if not image_paths:
        raise ConfigError(f"{test_folder}: holds no test images")
    images = load_images(image_paths, size)
    labels = torch.tensor(labels, dtype=torch.int64)
    relative = [os.path.relpath(p, folder) for p in image_paths]
    if not has_masks:
        return images, None, labels, relative
    empty = (torch.zeros(size_hw(size), dtype=torch.bool), False)
    loaded = load_all(lambda m, p: empty if m is None else load_mask(m, size, p), mask_paths, image_paths)
    n_other = sum(other for _, other in loaded)
    if n_other:
        print(f"{os.path.join(folder, 'ground_truth')}: {n_other} of {int(labels.sum())} masks hold values other than 0 and 255 "
              "(e.g. 0/1 or label indices): read as binary, non-zero = anomalous")
    return images, torch.stack([m for m, _ in loaded]), labels, relative


def check_orphan_masks(folder, defect, image_paths):
    """A mask without its image means the data is not what the user thinks it is: say so."""
    mask_folder = os.path.join(folder, "ground_truth", defect)
    if not os.path.isdir(mask_folder):
        return
    expected = {os.path.basename(mask_path_for(folder, defect, p)) for p in image_paths}
    for name in sorted(os.listdir(mask_folder)):
        if name.lower().endswith(IMAGE_EXTENSIONS) and name not in expected:
            raise ConfigError(f"{os.path.join(mask_folder, name)}: mask without its test image in {os.path.join(folder, 'test', defect)}")


def load_native_masks(data_root, category, paths):
    """Each test image's mask at its own size, not resized (eval_size=native): a list of (H_i,W_i) bool arrays,
    any non-zero value anomalous; a good image's is all False at that image's size. paths: load_test_set's."""
    folder = category_dir(data_root, category)
    masks = []
    for path in paths:
        defect = os.path.basename(os.path.dirname(path))
        image_path = os.path.join(folder, path)
        if defect == "good":
            masks.append(np.zeros(native_size(image_path), dtype=bool))
        else:
            masks.append(np.asarray(open_image(mask_path_for(folder, defect, image_path)).convert("L")) != 0)  # (H_i,W_i)
    return masks
