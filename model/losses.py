"""
The training losses: RD's teacher-student cosine loss, RD++'s loss of its projection layer, and one batch's
loss as train.py computes it (batch_loss).

    loss = cosine_loss(teacher, reconstructed)                                    # RD, scalar
    loss = loss + 0.2 * projection_loss(noisy_teacher, projected_noisy, projected, shuffle)[0]   # RD++
    loss = batch_loss(student, encoder, teacher, noisy, shuffle, weight_proj=0.2, ssot=True, amp=False)  # train.py's step

The RD++ formulas are its official code's (tientrandinh/Revisiting-Reverse-Distillation); the Sinkhorn divergence
is geomloss's, the library the official code uses, with its arguments.
"""

import geomloss
import torch
import torch.nn.functional as F


def cosine_loss(teacher_features, student_features):
    """Sum over taps of the batch mean of 1 - cos between whole flattened (C*H*W) feature maps.

    This is the official code's loss; the paper's per-pixel form (Eq. 2) is reported to score lower.
    """
    loss = 0.0
    for t, s in zip(teacher_features, student_features):
        loss = loss + (1 - F.cosine_similarity(t.flatten(1).float(), s.flatten(1).float())).mean()
    return loss


# the official SamplesLoss arguments
SINKHORN = geomloss.SamplesLoss("sinkhorn", p=2, blur=0.05, reach=None, diameter=10000000, scaling=0.95, truncate=10,
                                debias=True, backend="auto")
CONTRAST_MARGIN = 0.5


def projection_loss(noisy_teacher, projected_noisy, projected, shuffle, ssot=True):
    """RD++'s multi-task loss of the projection layer, summed over the three taps:
    SSOT: Sinkhorn divergence between the softmaxed, flattened projected normal features of the batch and the same
          batch in `shuffle` order (compactness of the normal features);
    reconstruction: mean over positions of 1 - cos along channels between projected noisy and projected normal features;
    contrast: CosineEmbeddingLoss(margin 0.5, target -1) between the flattened noisy teacher features and the projected
          normal ones (pushes anomalous signal out of the projection).
    Returns (SSOT + 0.01 reconstruction + 0.1 contrast) / 1.11 and the three terms (float32 scalars).

    A shuffled batch is the same set of points with the same uniform weights as the batch, so the (debiased) Sinkhorn
    divergence between them is 0 and so is its gradient, up to rounding: ssot=False leaves the term out (0)."""
    total_ssot = reconstruction = contrast = 0.0
    for noisy_t, noisy_p, p in zip(noisy_teacher, projected_noisy, projected):
        flat = p.flatten(1).float()  # (B,C*H*W)
        if ssot:
            total_ssot = total_ssot + SINKHORN(torch.softmax(flat, dim=-1), torch.softmax(flat[shuffle], dim=-1))
        reconstruction = reconstruction + (1 - F.cosine_similarity(noisy_p.float(), p.float(), dim=1)).mean()
        target = -torch.ones(len(flat), device=flat.device)
        contrast = contrast + F.cosine_embedding_loss(noisy_t.flatten(1).float(), flat, target, margin=CONTRAST_MARGIN)
    return (total_ssot + 0.01 * reconstruction + 0.1 * contrast) / 1.11, (total_ssot, reconstruction, contrast)


def batch_loss(student, encoder, teacher, noisy, shuffle, *, weight_proj, ssot, amp):
    """One batch's training loss, a float32 scalar with its graph: cosine_loss between the teacher's taps and the
    student's reconstruction of them (noisy, shuffle None); RD++ (noisy: the batch with a noise patch per image, ImageNet-normalised):
    + weight_proj x the projection loss, the teacher encoding the noisy images, `shuffle` the SSOT's permutation.
    The networks run under bf16 autocast with amp, the losses in float32. train.py's step; scripts/benchmark.py times it."""
    with torch.autocast(teacher[0].device.type, dtype=torch.bfloat16, enabled=amp):
        if noisy is None:
            reconstructed = student(teacher)  # 3 taps
        else:
            noisy_teacher = encoder(noisy)  # 3 taps
            reconstructed, projected, projected_noisy = student(teacher, noisy_teacher)
    if not len(teacher[0]):
        # a last batch smaller than the number of processes leaves some an empty shard: they still join
        # DDP's gradient all-reduce, with a zero loss (the cosine loss of no image is NaN)
        return sum(r.sum() for r in reconstructed)
    loss = cosine_loss(teacher, reconstructed)
    if noisy is not None:  # RD++: + the projection layer's loss
        loss = loss + weight_proj * projection_loss(noisy_teacher, projected_noisy, projected, shuffle, ssot)[0]
    return loss
