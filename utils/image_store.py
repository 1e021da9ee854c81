"""
The training images decoded once: one file of uint8 pixels per (data_root, category set, image size) in a cache
folder, built on first use and reused by later runs, read whole into memory or batch by batch from the disk.

    store = open_store(paths, data_root, categories, 256, cache_dir)  # builds or rebuilds it first if needed
    batch = store.read([4, 17, 2])             # (3,3,256,256) uint8 numpy array, rows in the order asked
    images = store.read_all()                  # (N,3,256,256) uint8 numpy array
    crops = store.read_crops([4, 17], [(0, 8), (32, 0)], 128)   # (2,3,128,128): each row's window at (top, left)

dataset.load_train_set puts a torch face on it (StreamedImages below) for train.py. The file is

    b"RDSTORE1" | header length (8 bytes, little-endian) | JSON header | zero padding to 4096 | N x 3 x H x W uint8

and its header records what it was built from: data_root, the categories, image_size and, per image, its path
relative to data_root, size, modification and status-change times (st_ctime changes whenever a file is written or
replaced, even by a copy that restores the old modification time). A store is used only if its header equals the
one computed from the images now and the file holds all N rows; otherwise it is rebuilt. Building writes a
temporary file and renames it over the store (utils.files.atomic_write), so a killed build leaves the previous
store or none, never a partial one; an exclusive lock (fcntl.flock, released by the kernel when its process dies)
makes a second run that wants the same store wait and then use the first one's instead of building it again.

Rows are read with os.preadv at their offsets, not through a memory mapping: the page cache keeps what fits in
memory either way, but the pages of a mapping count in the process's resident memory once touched, and a
streaming run's memory must not grow with the number of images it has read.
"""

import fcntl
import glob
import hashlib
import json
import os
import sys

import numpy as np
from tqdm import tqdm

from utils.config import ConfigError, size_hw
from utils.files import atomic_write
from utils.images import load_all, read_image

MAGIC = b"RDSTORE1"
ALIGN = 4096  # the pixels start on a page boundary
FORMAT_VERSION = 1
BUILD_CHUNK = 64  # images decoded (on a few threads) and written at a time: the memory a build needs


def default_cache_dir():
    """$XDG_CACHE_HOME/reverse_distillation, or ~/.cache/reverse_distillation (where torch keeps its weights too)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "reverse_distillation")


def store_path(cache_dir, data_root, label, size):
    """<cache_dir>/<data_root's name>-<label>-<size>px-<12 hex digits of the absolute data_root, label, size>.rdstore
    (<size>: 256, or 768x1024 for a height and width): one file per (dataset, category set, size), whatever the images' state."""
    root = os.path.realpath(data_root)
    key = hashlib.sha256(json.dumps([root, label, size, FORMAT_VERSION]).encode()).hexdigest()[:12]
    size_text = "x".join(map(str, size_hw(size))) if isinstance(size, list) else size
    return os.path.join(cache_dir, f"{os.path.basename(root) or 'data'}-{label}-{size_text}px-{key}.rdstore")


def expected_header(paths, data_root, categories, size):
    """The header a store of these images must have: what it was built from, each image's file state included."""
    root = os.path.realpath(data_root)
    images = []
    for path in paths:
        st = os.stat(path)
        images.append([os.path.relpath(os.path.realpath(path), root), st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    return {"version": FORMAT_VERSION, "data_root": root, "categories": list(categories), "image_size": size,
            "shape": [len(paths), 3, *size_hw(size)], "dtype": "uint8", "images": images}


def encode_header(header):
    """MAGIC, length and JSON header padded with zeros so that the pixels start at a multiple of ALIGN."""
    text = json.dumps(header, separators=(",", ":")).encode()
    prefix = MAGIC + len(text).to_bytes(8, "little") + text
    return prefix + bytes(-len(prefix) % ALIGN)


def read_header(f):
    """(header, offset of the pixels) of an open store file, or None if it is not a complete store's start."""
    start = f.read(16)
    if len(start) != 16 or start[:8] != MAGIC:
        return None
    length = int.from_bytes(start[8:], "little")
    try:
        header = json.loads(f.read(length))
    except ValueError:  # cut short, or not JSON
        return None
    return header, 16 + length + (-(16 + length) % ALIGN)


class ImageStore:
    """An open, checked store: reads rows by position from a file descriptor held open, so a store rebuilt by
    another run meanwhile (renamed over this one) does not change what this one reads."""

    def __init__(self, path, fd, offset, shape):
        self.path, self.fd, self.offset = path, fd, offset
        self.n, self.height, self.width = shape[0], shape[2], shape[3]
        self.row_bytes = 3 * self.height * self.width

    def __len__(self):
        return self.n

    def read(self, indices, out=None):
        """Rows `indices` (ints in [0, N)) as a (B,3,H,W) uint8 array, in the order given; into `out` if given."""
        out = np.empty((len(indices), 3, self.height, self.width), np.uint8) if out is None else out
        for row, i in zip(out, indices):
            if not 0 <= i < self.n:
                raise IndexError(f"image {i} of a store of {self.n}")
            if os.preadv(self.fd, [row], self.offset + i * self.row_bytes) != self.row_bytes:
                raise ConfigError(f"{self.path}: shorter than its header says (truncated while in use?); run again to rebuild it")
        return out

    def read_crops(self, indices, corners, size):
        """For each row of `indices`, its size x size window with top-left corner (top, left) of `corners`:
        a (B,3,size,size) uint8 array. A row is read whole (one read), then cut: memory stays one image."""
        row = np.empty((1, 3, self.height, self.width), np.uint8)
        out = np.empty((len(indices), 3, size, size), np.uint8)
        for crop, i, (top, left) in zip(out, indices, corners):
            self.read([i], out=row)
            crop[:] = row[0, :, top:top + size, left:left + size]
        return out

    def read_all(self):
        """All rows as one (N,3,H,W) uint8 array."""
        out = np.empty((self.n, 3, self.height, self.width), np.uint8)
        rows = max(1, 2**30 // self.row_bytes)  # a read of at most 1 GiB at a time (Linux stops one at 2 GiB)
        for start in range(0, self.n, rows):
            part = out[start:start + rows]
            if os.preadv(self.fd, [part], self.offset + start * self.row_bytes) != part.nbytes:
                raise ConfigError(f"{self.path}: shorter than its header says (truncated while in use?); run again to rebuild it")
        return out

    def close(self):
        os.close(self.fd)


def open_checked(path, header):
    """The store at path as an ImageStore if it is complete and its header is `header`, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(os.dup(fd), "rb") as f:
        found = read_header(f)
    n_bytes = int(np.prod(header["shape"]))
    if found is None or found[0] != header or os.fstat(fd).st_size != found[1] + n_bytes:
        os.close(fd)
        return None
    return ImageStore(path, fd, found[1], header["shape"])


def build(path, paths, header):
    """Decode and resize the images into a temporary file beside path, then rename it to path (atomic_write)."""
    size = header["image_size"]

    def write(f):
        f.write(encode_header(header))
        # on stdout, so that an error after it is still the one line of stderr; in a log file (not a terminal) a line
        # every 30 s rather than a redraw every 0.1 s
        with tqdm(total=len(paths), desc="decoding", unit="img", file=sys.stdout,
                  mininterval=1 if sys.stdout.isatty() else 30) as bar:
            for i in range(0, len(paths), BUILD_CHUNK):
                chunk = paths[i:i + BUILD_CHUNK]
                for image in load_all(read_image, chunk, [size] * len(chunk)):  # (3,H,W) uint8 each
                    f.write(image.data)
                bar.update(len(chunk))

    atomic_write(path, write)


def open_store(paths, data_root, categories, size, cache_dir, label):
    """The store of these images (paths under data_root, in training order) at this size, built or rebuilt first
    if there is none, it is incomplete, or any image changed since it was built. `label` names the category set in
    the file name."""
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cache_dir={cache_dir}: cannot create it ({e.strerror}); pass --cache_dir=<a writable folder>") from None
    if not os.access(cache_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"cache_dir={cache_dir}: not writable; pass --cache_dir=<a writable folder>")
    path = store_path(cache_dir, data_root, label, size)
    header = expected_header(paths, data_root, categories, size)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait here, then find its store
        store = open_checked(path, header)
        if store is not None:
            return store
        for leftover in glob.glob(os.path.join(cache_dir, "." + os.path.basename(path) + ".*.tmp")):
            os.unlink(leftover)  # a killed build's temporary file: nobody else writes while we hold the lock
        needed = len(encode_header(header)) + int(np.prod(header["shape"]))
        free = os.statvfs(cache_dir).f_bavail * os.statvfs(cache_dir).f_frsize
        if needed > free:
            raise ConfigError(f"cache_dir={cache_dir}: the decoded images need {needed / 2**30:.2f} GiB, "
                              f"{free / 2**30:.2f} GiB are free; free some or pass --cache_dir=<a folder with room>")
        print(f"decoding {len(paths)} training images at {'x'.join(map(str, size_hw(size)))} into {path} ({needed / 2**30:.2f} GiB), once")
        build(path, paths, header)
        store = open_checked(path, header)
    if store is None:  # an image changed while it was being decoded
        raise ConfigError(f"{path}: the training images changed while they were being decoded; run again")
    return store
