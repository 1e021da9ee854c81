"""
A small SYNTHETIC anomaly-detection dataset in the exact MVTec AD folder layout.

This is NOT MVTec AD. It exists so the whole pipeline (train + test of the anomaly
detector) can run offline on a small CPU in minutes, and so tests have real files to
read. Images are procedurally generated; each defect is pasted onto a normal image
together with the exact pixel mask of what it changed.

Layout per category (same as MVTec AD):
    ROOT/CAT/train/good/000.png ...
    ROOT/CAT/test/good/000.png ...
    ROOT/CAT/test/<defect>/000.png ...
    ROOT/CAT/ground_truth/<defect>/000_mask.png ...   ('L' PNG, 0 or 255)
    ROOT/CAT/calibration/good/000.png ...             (only with --n_calibration=N: more normal images, neither
                                                       trained nor tested on, for calibrate.py)

Categories (defects):
    stripes   texture like carpet/wood: woven oriented sine stripes, RGB
              (scratch, spot, hole, color)
    disc      object like metal_nut: shaded disc with a groove on a dark background, RGB
              (scratch, spot, crack, color)
    grid_gray texture like grid: grayscale wire grid, saved as mode 'L' PNG like MVTec's
              grayscale categories, so loaders must convert to RGB
              (scratch, spot, hole, crack)
and one high-resolution category, made only when asked for (--categories=specks), at its own size:
    specks    768 x 1024 (height x width) woven fabric with SMALL defects, sized in pixels whatever the image
              size: dots 6-24 px across, scratches 12-24 px long and 2-3 px wide, stains 12-24 px across
              (dot, scratch, stain). Squeezed to 256 x 256 a 6-pixel dot is 2 pixels: what high-resolution
              training and native-size evaluation are for (docs/high_resolution.md).

Written by scripts/make_demo_data.py (its command line), and read by the tests and benchmarks:
    python scripts/make_demo_data.py                       # all categories -> data/demo
    python scripts/make_demo_data.py --out=/tmp/demo --size=64 --categories=disc --force
    python scripts/make_demo_data.py --n_calibration=200 --force   # + 200 calibration images per category
    python scripts/make_demo_data.py --categories=specks            # the high-resolution category, 768 x 1024

Every image has its own seed (from --seed, the category, the folder and the index), so regenerating with --force
writes the same train and test files, and calibration/good holds images that are in neither.

    from utils.demo_data import make_category
    make_category("data/demo", "disc", size=64, n_train=8, seed=0)
    make_category("data/demo", "specks", size=(384, 512), n_train=8, seed=0)   # (height, width); default 768 x 1024
"""

import os
import shutil
import time
import zlib

import numpy as np
from PIL import Image
from scipy import ndimage

CATEGORIES = ("stripes", "disc", "grid_gray")  # the demo's; make_dataset's default
HIGH_RESOLUTION = {"specks": (768, 1024)}  # made when asked for, at this (height, width) unless given another size
DEFECTS = {
    "stripes": ("scratch", "spot", "hole", "color"),
    "disc": ("scratch", "spot", "crack", "color"),
    "grid_gray": ("scratch", "spot", "hole", "crack"),
    "specks": ("dot", "scratch", "stain"),
}
MIN_AREA, MAX_AREA = 0.005, 0.05  # allowed defect mask coverage, fraction of the image

# -----------------------------------------------------------------------------
# normal images: float (H, W, C) in about [0, 1], plus a bool (H, W) region where
# defects may be placed (the object for object categories, everything for textures)

def _coords(size):
    # pixel centres in units of the image side, so every pattern looks the same at any size
    y, x = np.mgrid[0:size, 0:size] + 0.5
    return y / size, x / size

def _smooth_noise(rng, size, sigma):
    # unit-std low-frequency field: slow lighting / material variation between images
    f = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma * size, mode="wrap")
    return f / f.std()

def _stripes(rng, size):
    y, x = _coords(size)
    theta = np.deg2rad(30 + rng.normal(0, 2))
    u = x * np.cos(theta) + y * np.sin(theta)   # across the stripes
    v = -x * np.sin(theta) + y * np.cos(theta)  # along the stripes
    freq = 9 + rng.normal(0, 0.3)  # stripes per image side
    stripe = np.sin(2 * np.pi * freq * u + rng.uniform(0, 2 * np.pi))
    weave = np.sin(2 * np.pi * 2 * freq * v + rng.uniform(0, 2 * np.pi))  # finer cross threads
    t = 0.5 + 0.38 * stripe + 0.08 * weave
    dark = np.array([0.35, 0.22, 0.12]) + rng.normal(0, 0.02, 3)
    light = np.array([0.85, 0.70, 0.45]) + rng.normal(0, 0.02, 3)
    img = dark + (light - dark) * t[..., None]
    img *= 1 + 0.04 * _smooth_noise(rng, size, 1 / 8)[..., None]
    img += rng.normal(0, 0.015, img.shape)
    return img, np.ones((size, size), bool)

def _disc(rng, size):
    y, x = _coords(size)
    cy, cx = 0.5 + rng.uniform(-0.03, 0.03, 2)
    radius = 0.32 + rng.uniform(-0.01, 0.01)
    dy, dx = (y - cy) / radius, (x - cx) / radius
    r = np.hypot(dy, dx)
    # shade as a dome lit from the upper left: the object gets a 3D look, not a flat fill
    nz = np.sqrt(np.clip(1 - r ** 2, 0, 1))
    light = np.array([-0.5, -0.6, 1.0]) + rng.normal(0, 0.05, 3)
    light /= np.linalg.norm(light)
    lambert = np.clip(dy * light[0] + dx * light[1] + nz * light[2], 0, 1)
    shade = 0.45 + 0.55 * lambert
    shade *= 1 - 0.3 * np.exp(-(((r - 0.6) / 0.04) ** 2))  # a groove: fine structure to learn
    base = np.array([0.78, 0.58, 0.32]) * rng.uniform(0.85, 1.1) + rng.normal(0, 0.03, 3)
    obj = base * shade[..., None] + 0.25 * (lambert ** 20)[..., None]  # plus a specular spot
    bg = (0.12 + 0.04 * y + rng.normal(0, 0.01))[..., None].repeat(3, -1)
    alpha = np.clip((1 - r) * radius * size + 0.5, 0, 1)[..., None]  # 1-pixel antialiased rim
    img = bg + alpha * (obj - bg) + rng.normal(0, 0.01, (size, size, 3))
    return img, r < 0.85

def _grid_gray(rng, size):
    y, x = _coords(size)
    theta = np.deg2rad(rng.normal(0, 1))
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    period = (1 + rng.normal(0, 0.01)) / 8

    def to_line(c):  # distance to the nearest wire of one direction, in image units
        d = (c - rng.uniform(0, period)) % period
        return np.minimum(d, period - d)

    wire = np.exp(-((np.minimum(to_line(u), to_line(v)) / 0.015) ** 2))
    img = 0.7 - 0.45 * wire + 0.03 * _smooth_noise(rng, size, 1 / 8) + rng.normal(0, 0.015, (size, size))
    return img[..., None], np.ones((size, size), bool)

NORMALS = {"stripes": _stripes, "disc": _disc, "grid_gray": _grid_gray}

# -----------------------------------------------------------------------------
# defects: f(img, region, rng) -> (mask, new). The caller copies `new` into `img`
# only where `mask` is set, so the mask is exactly where the image was changed.
# Shapes are in pixels, (y, x), scaled with the image size.

def _pick(region, rng):
    # centre of a random pixel of region
    i = np.flatnonzero(region)[rng.integers(region.sum())]
    return np.array(divmod(i, region.shape[1]), dtype=np.float64) + 0.5

def _direction(angle):
    return np.array([np.sin(angle), np.cos(angle)])

def _shape(size):
    return (size, size) if isinstance(size, int) else tuple(size)

def _polyline(points, width, size):
    # pixels whose centre is within width/2 of any segment of the polyline; size: a side, or (height, width)
    h, w = _shape(size)
    p = np.stack(np.mgrid[0:h, 0:w] + 0.5, -1)
    mask = np.zeros((h, w), bool)
    for a, b in zip(points[:-1], points[1:]):
        ab = b - a
        t = np.clip((p - a) @ ab / max(ab @ ab, 1e-9), 0, 1)
        mask |= np.linalg.norm(p - a - t[..., None] * ab, axis=-1) <= width / 2
    return mask

def _blob(centre, radius, rng, size):
    # an irregular star-shaped blob: a circle whose radius wobbles with a few harmonics
    h, w = _shape(size)
    y, x = np.mgrid[0:h, 0:w] + 0.5
    dy, dx = y - centre[0], x - centre[1]
    k = np.arange(1, 5)
    wobble = rng.normal(0, 0.15, 4) / k * np.cos(k * np.arctan2(dy, dx)[..., None] + rng.uniform(0, 2 * np.pi, 4))
    # clipped so the blob always contains its centre pixel and stays roughly round
    return np.hypot(dy, dx) <= radius * (1 + np.clip(wobble.sum(-1), -0.5, 0.5))

def _line_width(rng, size, lo, hi):
    return max(1.5, rng.uniform(lo, hi) * size / 128)

def _contrasting(img, mask, rng):
    # a defect colour clearly different from what it covers, from a small palette
    palette = np.array([[0.08, 0.08, 0.08], [0.95, 0.95, 0.92], [0.15, 0.35, 0.85],
                        [0.2, 0.65, 0.25], [0.8, 0.1, 0.1]])
    if img.shape[-1] == 1:
        palette = palette.mean(-1, keepdims=True)
    far = palette[np.abs(palette - img[mask].mean(0)).mean(-1) > 0.3]
    return far[rng.integers(len(far))]

def _scratch(img, region, rng):
    size = img.shape[0]
    angle = rng.uniform(0, 2 * np.pi)
    pts = [np.zeros(2)]
    for _ in range(3):
        angle += rng.normal(0, 0.35)  # gentle bends, like a dragged tip
        pts.append(pts[-1] + rng.uniform(0.12, 0.18) * size * _direction(angle))
    pts = np.array(pts)
    # middle of the scratch on a region pixel: little gets clipped and the mask is never empty
    pts += _pick(region, rng) - (pts[1] + pts[2]) / 2
    mask = _polyline(pts, _line_width(rng, size, 3.0, 4.0), size) & region
    # bright on dark material, dark on bright material: always visible
    value = 0.92 if img[mask].mean() < 0.5 else 0.08
    return mask, value + rng.normal(0, 0.03, img.shape)

def _spot(img, region, rng):
    size = img.shape[0]
    n = rng.integers(2, 4)
    centres, radii = [], []
    for _ in range(100):  # keep spots apart so masks have several separate regions
        if len(centres) == n:
            break
        c, r = _pick(region, rng), rng.uniform(0.03, 0.05) * size
        if all(np.linalg.norm(c - c2) > 1.5 * (r + r2) + 2 for c2, r2 in zip(centres, radii)):
            centres.append(c)
            radii.append(r)
    mask = np.zeros(region.shape, bool)
    for c, r in zip(centres, radii):
        mask |= _blob(c, r, rng, size)
    mask &= region
    colour = _contrasting(img, mask, rng)
    return mask, colour * (1 + 0.08 * _smooth_noise(rng, size, 1 / 64)[..., None])

def _hole(img, region, rng):
    size = img.shape[0]
    centre, radius = _pick(region, rng), rng.uniform(0.06, 0.09) * size
    mask = _blob(centre, radius, rng, size) & region
    # near black, deepest in the middle, like looking through a torn hole
    y, x = np.mgrid[0:size, 0:size] + 0.5
    depth = np.clip(np.hypot(y - centre[0], x - centre[1]) / radius, 0, 1)
    return mask, (0.02 + 0.08 * depth)[..., None] + rng.normal(0, 0.01, img.shape)

def _crack(img, region, rng):
    size = img.shape[0]
    step, heading = size / 40, rng.uniform(0, 2 * np.pi)

    def walk(start, angle, n):  # jagged but overall straight: each step deviates, none drifts
        pts = [start]
        for _ in range(n):
            pts.append(pts[-1] + step * rng.uniform(0.5, 1.0) * _direction(angle + rng.normal(0, 0.6)))
        return np.array(pts)

    centre = _pick(region, rng)
    main = np.concatenate([walk(centre, heading + np.pi, 10)[::-1], walk(centre, heading, 10)[1:]])
    branch = walk(main[rng.integers(5, 16)], heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0), 6)
    width = _line_width(rng, size, 2.2, 3.0)
    mask = (_polyline(main, width, size) | _polyline(branch, width, size)) & region
    return mask, 0.06 + rng.normal(0, 0.02, img.shape)

def _color(img, region, rng):
    size = img.shape[0]
    mask = _blob(_pick(region, rng), rng.uniform(0.07, 0.1) * size, rng, size) & region
    # rotate the hue about the grey axis (Rodrigues) and boost the saturation:
    # same texture and brightness, wrong colour
    a = rng.uniform(2 * np.pi / 3, 4 * np.pi / 3)
    k = np.ones(3) / np.sqrt(3)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx
    grey = img.mean(-1, keepdims=True)
    return mask, grey + 1.6 * (img - grey) @ rot.T

DEFECT_FNS = {"scratch": _scratch, "spot": _spot, "hole": _hole, "crack": _crack, "color": _color}

# -----------------------------------------------------------------------------
# specks: a high-resolution fabric whose defects are sized in pixels, not in image sides

def _specks(rng, shape):
    h, w = shape
    y, x = np.mgrid[0:h, 0:w] + 0.5
    phase = rng.uniform(0, 2 * np.pi, 2)
    weave = np.sin(2 * np.pi * x / 8 + phase[0]) * np.sin(2 * np.pi * y / 8 + phase[1])  # an 8-pixel weave
    shade = ndimage.gaussian_filter(rng.standard_normal((h, w)), 48, mode="wrap")
    shade /= shade.std() + 1e-9
    grey = 0.55 + 0.06 * weave + 0.03 * shade + rng.normal(0, 0.01, (h, w))
    return grey[..., None] * np.array([1.0, 0.93, 0.8]), np.ones((h, w), bool)

def _dot(img, region, rng):
    mask = np.zeros(region.shape, bool)
    for _ in range(rng.integers(1, 4)):
        mask |= _blob(_pick(region, rng), rng.uniform(3, 12), rng, region.shape)  # 6-24 px across
    return mask, _contrasting(img, mask, rng) + rng.normal(0, 0.02, img.shape)

def _short_scratch(img, region, rng):
    centre, length = _pick(region, rng), rng.uniform(12, 24)
    half = length / 2 * _direction(rng.uniform(0, np.pi))
    mask = _polyline(np.array([centre - half, centre + half]), rng.uniform(2, 3), region.shape)
    value = 0.92 if img[mask].mean() < 0.5 else 0.08
    return mask, value + rng.normal(0, 0.03, img.shape)

def _stain(img, region, rng):
    mask = _blob(_pick(region, rng), rng.uniform(6, 12), rng, region.shape)  # 12-24 px across
    return mask, img * np.array([0.75, 0.85, 1.15])  # a bluish tint, same weave

SPECKS_DEFECT_FNS = {"dot": _dot, "scratch": _short_scratch, "stain": _stain}

def _add_defect(img, region, kind, rng):
    # redraw until the defect covers a sensible area (e.g. a scratch mostly off the disc)
    for _ in range(100):
        mask, new = DEFECT_FNS[kind](img, region, rng)
        if MIN_AREA <= mask.mean() <= MAX_AREA:
            return np.where(mask[..., None], new, img), mask
    raise RuntimeError(f"could not place a '{kind}' defect covering {MIN_AREA}-{MAX_AREA} of the image")

# -----------------------------------------------------------------------------

def make_sample(name, folder, index, size=128, seed=0):
    """
    The image ROOT/name/folder/{index:03d}.png, e.g. folder="test/scratch".
    Returns (image, mask, clean) uint8 arrays: image and clean are (H, W, 3), or (H, W)
    for a grayscale category; clean is the normal image before the defect was pasted;
    mask is (H, W) with 0/255, or None for good images.
    Every image has its own seed, so a file never depends on how many others were made
    (nor on which other categories were generated).
    """
    kind = folder.split("/")[-1]
    if name not in DEFECTS or kind not in ("good",) + DEFECTS[name]:
        raise ValueError(f"unknown category/folder {name}/{folder}")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(folder.encode()), index])
    if name in HIGH_RESOLUTION:  # size: (height, width); defects of any size in pixels, always on the fabric
        clean, region = _specks(rng, _shape(size))
        mask, new = (None, None) if kind == "good" else SPECKS_DEFECT_FNS[kind](clean, region, rng)
        image = clean if kind == "good" else np.where(mask[..., None], new, clean)
    else:
        clean, region = NORMALS[name](rng, size)
        image, mask = (clean, None) if kind == "good" else _add_defect(clean, region, kind, rng)

    def to_uint8(a):
        a = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
        return a[..., 0] if a.shape[-1] == 1 else a

    return to_uint8(image), None if mask is None else mask.astype(np.uint8) * 255, to_uint8(clean)

def make_category(root, name, *, size=None, n_train=40, n_test_good=8, n_test_defect=4, seed=0, force=False, n_calibration=0):
    """Write ROOT/NAME/... (n_test_defect images per defect kind, n_calibration in calibration/good); skip it if it
    exists unless force. size: a side, or (height, width); None: 128, or a high-resolution category's own size."""
    if name not in DEFECTS:
        raise ValueError(f"unknown category {name!r}, expected one of {tuple(DEFECTS)}")
    size = size or HIGH_RESOLUTION.get(name, 128)
    final = os.path.join(root, name)
    if os.path.exists(final) and not force:
        print(f"{name}: {final} exists, skipping (--force to regenerate)")
        return
    t0 = time.time()
    # build next to the final folder and rename at the end: an interrupted run leaves only
    # a hidden .tmp folder, never a half-written category that looks complete
    tmp = os.path.join(root, f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = [("train/good", n_train), ("test/good", n_test_good)]
    jobs += [(f"test/{d}", n_test_defect) for d in DEFECTS[name]]
    if n_calibration:
        jobs.append(("calibration/good", n_calibration))
    for folder, n in jobs:
        os.makedirs(os.path.join(tmp, folder), exist_ok=True)
        for i in range(n):
            image, mask, _ = make_sample(name, folder, i, size, seed)
            Image.fromarray(image).save(os.path.join(tmp, folder, f"{i:03d}.png"))
            if mask is not None:
                gt = os.path.join(tmp, "ground_truth", folder.split("/")[-1])
                os.makedirs(gt, exist_ok=True)
                Image.fromarray(mask).save(os.path.join(gt, f"{i:03d}_mask.png"))
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    n_defect = n_test_defect * len(DEFECTS[name])
    calibration = f", {n_calibration} calibration good" if n_calibration else ""
    print(f"{name}: {n_train} train, {n_test_good} test good, {n_defect} test defect "
          f"({', '.join(DEFECTS[name])}){calibration} -> {final} in {time.time() - t0:.2f}s")

def make_dataset(root, categories=CATEGORIES, *, size=None, n_train=40, n_test_good=8, n_test_defect=4, seed=0,
                 force=False, n_calibration=0):
    unknown = [c for c in categories if c not in DEFECTS]
    if unknown:  # fail before writing anything
        raise ValueError(f"unknown categories {unknown}, expected some of {tuple(DEFECTS)}")
    os.makedirs(root, exist_ok=True)
    for name in categories:
        make_category(root, name, size=size, n_train=n_train, n_test_good=n_test_good, n_test_defect=n_test_defect, seed=seed, force=force,
                      n_calibration=n_calibration)
