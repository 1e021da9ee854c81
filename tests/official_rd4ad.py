"""
Independent transcriptions of the official RD4AD evaluation (hq-deng/RD4AD, test.py and dataset.py): how it loads a
test split and scores it. test_reproduction.py and test_rdpp.py hold this project's test.py to them. Written from the
official code's formulas with torchvision transforms, torch, numpy and scipy, independently of dataset.py,
model/encoder.py's normalize, model/scoring.py, model/anomaly_map.py and evaluation/metrics.py.
"""

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score
from torchvision import transforms

SIZE = 64  # the image size of the generated test data these helpers score (conftest.data_root)


def reference_images(data_root, category, split_glob):
    """(tensor, mask, relative path) per test image, loaded the way the official dataset class does."""
    folder = os.path.join(data_root, category)
    image_tf = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor(),
                                   transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    mask_tf = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor()])
    items = []
    for defect in sorted(os.listdir(os.path.join(folder, split_glob))):
        for name in sorted(os.listdir(os.path.join(folder, split_glob, defect))):
            path = os.path.join(folder, split_glob, defect, name)
            image = image_tf(Image.open(path).convert("RGB"))
            if defect == "good":
                mask = torch.zeros(1, SIZE, SIZE)
            else:
                mask = mask_tf(Image.open(os.path.join(folder, "ground_truth", defect, name[:-4] + "_mask.png")))
                mask = (mask > 0.5).float()
            items.append((image, mask, os.path.relpath(path, folder)))
    return items


def official_evaluation(encoder, ocbe, decoder, items, proj=None):
    """Test batch size 1, per-tap 1-cos maps summed in numpy, scipy's gaussian_filter, max = image score.
    RD++ (proj given): the decoder reads ocbe(proj(teacher)) and is compared with the unprojected teacher."""
    ocbe.eval(), decoder.eval()
    if proj is not None:
        proj.eval()
    scores, pixel_scores, pixel_labels, image_labels = {}, [], [], []
    with torch.no_grad():
        for image, mask, path in items:
            teacher = encoder(image[None])
            student = decoder(ocbe(teacher if proj is None else proj(teacher)))
            amap = np.zeros((SIZE, SIZE))
            for t, s in zip(teacher, student):
                a = 1 - F.cosine_similarity(t, s)[:, None]
                amap += F.interpolate(a, size=SIZE, mode="bilinear", align_corners=True)[0, 0].numpy()
            amap = gaussian_filter(amap, sigma=4)
            scores[path] = amap.max()
            pixel_scores.append(amap.ravel())
            pixel_labels.append(mask.numpy().astype(int).ravel())
            image_labels.append(mask.max().item())
    return scores, roc_auc_score(image_labels, list(scores.values())), roc_auc_score(np.concatenate(pixel_labels), np.concatenate(pixel_scores))
