"""
Picture strips of anomaly maps, drawn with numpy and PIL only (no matplotlib, no torch: scripts/predict_onnx.py
draws its strips with it where only numpy and PIL are installed).

    from evaluation.visualize import evaluation_strip, prediction_strip, save_png
    strip = evaluation_strip(image, mask, amap, score, heat_range=(lo, hi), threshold=0.41)
    save_png("runs/bottle/images/broken_large_000.png", strip)

test.py writes them: `--save_images=K` for test images (input | ground-truth outline | heatmap), `--images=DIR`
for new images (input | heatmap, as scripts/predict_onnx.py draws them). The heatmap is the anomaly map mapped linearly from heat_range to the jet
colormap (blue = low, red = high), blended half and half with the input. The image score is printed on it,
red when it is at or above the threshold (the image is called anomalous), white otherwise.
"""

import os

import numpy as np
from PIL import Image, ImageDraw

from utils.files import atomic_write

OUTLINE_COLOR = (255, 0, 0)
HEATMAP_WEIGHT = 0.5  # share of the heatmap in the blend with the input


def jet(values):
    """The jet colormap as the usual piecewise-linear formula: values (...) in [0,1], clipped -> (...,3) uint8.
    0 is dark blue (0,0,128), 0.5 light green (128,255,128), 1 dark red (128,0,0)."""
    x = 4 * np.clip(np.asarray(values, dtype=np.float64), 0, 1)[..., None]  # (...,1)
    rgb = np.clip(1.5 - np.abs(x - np.array([3.0, 2.0, 1.0])), 0, 1)  # (...,3): red peaks at 3/4, green 1/2, blue 1/4
    return np.round(255 * rgb).astype(np.uint8)


def to_hwc(image):
    """(3,H,W) uint8 tensor -> (H,W,3) uint8 numpy array."""
    return np.ascontiguousarray(np.asarray(image).transpose(1, 2, 0))


def draw_outline(image, mask):
    """(H,W,3) uint8 copy of the image with the mask's 1-pixel inner contour (mask minus its erosion) in red."""
    from scipy.ndimage import binary_erosion  # here, so that drawing prediction strips needs no scipy

    mask = np.asarray(mask, dtype=bool)
    out = image.copy()
    out[mask & ~binary_erosion(mask)] = OUTLINE_COLOR
    return out


def overlay_heatmap(image, amap, heat_range):
    """(H,W,3) uint8: the jet-coloured map, scaled so heat_range=(lo, hi) spans the colormap, over the image."""
    lo, hi = heat_range
    heat = jet((np.asarray(amap, dtype=np.float64) - lo) / max(hi - lo, 1e-12))  # (H,W,3)
    return np.round((1 - HEATMAP_WEIGHT) * image + HEATMAP_WEIGHT * heat).astype(np.uint8)


def strip_with_score(panels, score, threshold):
    """Panels (H,W,3) side by side, the score printed on the last one on a black box for contrast."""
    strip = Image.fromarray(np.concatenate(panels, axis=1))  # (H, len(panels)*W)
    draw = ImageDraw.Draw(strip)
    text = f"score {score:.3f}"
    x, y = strip.width - panels[-1].shape[1] + 2, 2
    draw.rectangle(draw.textbbox((x, y), text), fill=(0, 0, 0))
    anomalous = threshold is not None and score >= threshold
    draw.text((x, y), text, fill=(255, 0, 0) if anomalous else (255, 255, 255))
    return strip


def evaluation_strip(image, mask, amap, score, heat_range, threshold=None):
    """PIL image 3W x H (width x height): input | input with the ground-truth outline | heatmap with the score.
    image (3,H,W) uint8, mask (H,W) bool, amap (H,W) float."""
    rgb = to_hwc(image)
    return strip_with_score([rgb, draw_outline(rgb, mask), overlay_heatmap(rgb, amap, heat_range)], score, threshold)


def prediction_strip(image, amap, score, heat_range, threshold):
    """PIL image 2W x H: input | heatmap with the score. image (3,H,W) uint8, amap (H,W) float."""
    rgb = to_hwc(image)
    return strip_with_score([rgb, overlay_heatmap(rgb, amap, heat_range)], score, threshold)


def save_png(path, picture):
    atomic_write(path, lambda f: picture.save(f, format="PNG"))


def save_prediction_strips(folder, paths, images, maps, scores, *, heat_range, threshold):
    """A prediction_strip per scored image, <folder>/<its file name>.png (.png added to other names): test.py
    --images=DIR and scripts/predict_onnx.py. images (N,3,H,W) uint8, maps (N,H,W), scores N floats.
    Returns the strips' file names."""
    names = []
    for path, image, amap, score in zip(paths, images, maps, scores):
        name = os.path.basename(path)
        names.append(name if name.lower().endswith(".png") else name + ".png")
        save_png(os.path.join(folder, names[-1]), prediction_strip(image, amap, score, heat_range, threshold))
    return names
