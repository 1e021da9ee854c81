"""
Reading images the one way the project reads them, with numpy and PIL only (no torch): dataset.py builds its
tensors on it, scripts/predict_onnx.py reads a folder with it where torch is not installed, and
scripts/prepare_dataset.py checks the layout it writes with it (mask_path_for: where a test image's mask is).

    from utils.images import list_images, read_images
    images = read_images(list_images("new/"), 256)  # (N,3,256,256) uint8 numpy array, RGB
    images = read_images(paths, [768, 1024])          # (N,3,768,1024): a size is an int (a square) or [height, width]

Listings are sorted and keep the files with an image extension; grayscale, palette and RGBA images become RGB;
images are resized with PIL's antialiased bilinear filter (what torchvision's Resize does on PIL images).
An unreadable file raises a ConfigError naming it.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from utils.config import ConfigError, size_hw
from utils.files import first_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder):
    """Sorted paths of the image files of a folder; other files are ignored, and counted in a printed note."""
    names = sorted(os.listdir(folder))
    images = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
    n_other = sum(n not in images and os.path.isfile(os.path.join(folder, n)) for n in names)
    if n_other:
        print(f"{folder}: ignored {n_other} non-image files")
    return [os.path.join(folder, n) for n in images]


def mask_path_for(category_folder, defect, image_path):
    """The mask of the test image image_path of type `defect` in the MVTec AD layout: ground_truth/<type>/<stem>_mask.png."""
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return os.path.join(category_folder, "ground_truth", defect, stem + "_mask.png")


def open_image(path):
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here with its name
            return img
    except Image.UnidentifiedImageError:
        detail = "empty file" if os.path.getsize(path) == 0 else "not in an image format PIL reads"
        raise ConfigError(f"{path}: unreadable image ({detail})") from None
    except Exception as e:
        raise ConfigError(f"{path}: unreadable image ({first_line(e)})") from None


def native_size(path):
    """(height, width) of the image at path, from its header alone."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except Exception as e:
        raise ConfigError(f"{path}: unreadable image ({first_line(e)})") from None


def read_image(path, size):
    """(3,H,W) uint8 RGB array at size (H,W) (an int: a square), C-contiguous: a transposed view would make np.stack
    keep PIL's channels-last strides, and torch then computes in another memory format, with other roundings."""
    height, width = size_hw(size)
    img = open_image(path).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1))


def load_all(function, *args):
    """Run function over the argument lists on a few threads (PIL releases the GIL while decoding)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(function, *args))


def read_images(paths, size):
    """The images at paths as one (N,3,H,W) uint8 array."""
    return np.stack(load_all(read_image, paths, [size] * len(paths)))
