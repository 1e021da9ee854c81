"""
RD++'s multi-projection layer (the official module `proj`): a trainable filter between the frozen teacher and
the OCBE, one stack of four 3x3 convs per teacher tap (C -> C/2 -> C/4 -> C/2 -> C, each followed by
InstanceNorm2d and LeakyReLU), so that the student is fed compact, anomaly-free features.

    from model.projection import MultiProjection
    proj = MultiProjection("wide_resnet50_2")
    p1, p2, p3 = proj([f1, f2, f3])  # same shapes as the teacher's taps: (B,256,64,64), (B,512,32,32), (B,1024,16,16)
    student = ProjectedStudent(proj, ocbe, decoder)  # train.py's RD++ student: teacher taps -> projection -> OCBE -> decoder

Tien et al., "Revisiting Reverse Distillation for Anomaly Detection", CVPR 2023 (official code
tientrandinh/Revisiting-Reverse-Distillation). State-dict keys equal the official ones
(proj_a/proj_b/proj_c.proj.{0,3,6,9}.weight/bias), so official RD++ checkpoints load strictly. The convs keep
torch's default init and their biases, and InstanceNorm2d has no affine weights or statistics, as there.
"""

import torch.nn as nn

from model.bn_fusion import OCBE_CONFIGS


class ProjectionStack(nn.Module):
    def __init__(self, channels):
        super().__init__()
        widths = [channels, channels // 2, channels // 4, channels // 2, channels]
        layers = []
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.InstanceNorm2d(c_out), nn.LeakyReLU()]
        self.proj = nn.Sequential(*layers)

    def forward(self, x):
        return self.proj(x)  # (B,C,H,W) -> (B,C,H,W)


class MultiProjection(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        block = OCBE_CONFIGS[backbone][0]
        c = 64 * block.expansion  # channels of the teacher's layer1 tap; layer2 has 2c, layer3 4c
        self.proj_a, self.proj_b, self.proj_c = ProjectionStack(c), ProjectionStack(2 * c), ProjectionStack(4 * c)

    def forward(self, features):
        f1, f2, f3 = features
        return [self.proj_a(f1), self.proj_b(f2), self.proj_c(f3)]


class ProjectedStudent(nn.Module):
    """RD++'s trainable part as one module (one forward for DDP): teacher taps -> projection -> OCBE -> decoder,
    plus the projection of the noisy teacher taps that the projection loss needs."""

    def __init__(self, proj, ocbe, decoder):
        super().__init__()
        self.proj, self.ocbe, self.decoder = proj, ocbe, decoder

    def forward(self, teacher, noisy_teacher=None):
        """teacher -> reconstructed taps; (teacher, noisy_teacher) -> (reconstructed, projected, projected noisy)."""
        projected = self.proj(teacher)  # 3 taps, the teacher's shapes
        reconstructed = self.decoder(self.ocbe(projected))
        if noisy_teacher is None:
            return reconstructed
        return reconstructed, projected, self.proj(noisy_teacher)
