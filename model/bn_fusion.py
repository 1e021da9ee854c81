"""
The one-class bottleneck embedding (OCBE, the official module `bn`): multi-scale feature fusion of the
teacher's three taps, then ResNet blocks that squeeze them into one compact embedding.

    from model.bn_fusion import OCBE
    ocbe = OCBE("wide_resnet50_2")
    z = ocbe([f1, f2, f3])  # (B,256,64,64), (B,512,32,32), (B,1024,16,16) -> (B,2048,8,8)

State-dict keys equal the official code's (conv1..conv4, bn1..bn4, bn_layer.*), so official
checkpoints load strictly. conv4/bn4 exist there but are never used in forward; they are kept for that.
"""

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck

# backbone -> (block, number of OCE blocks, width_per_group), as the official code builds its BN_layer
OCBE_CONFIGS = {
    "resnet18": (BasicBlock, 2, 64),
    "resnet34": (BasicBlock, 3, 64),
    "resnet50": (Bottleneck, 3, 64),
    "wide_resnet50_2": (Bottleneck, 3, 128),
    "wide_resnet101_2": (Bottleneck, 3, 128),
}


def init_weights(module):
    """Kaiming-normal convs, unit BatchNorm: the official init. ConvTranspose2d is not a Conv2d and keeps torch's."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv3x3_s2(in_channels, out_channels):
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=False)


class OCBE(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        block, n_blocks, width_per_group = OCBE_CONFIGS[backbone]
        c = 64 * block.expansion  # channels of the teacher's layer1 tap; layer2 has 2c, layer3 4c
        # multi-scale feature fusion: bring layer1 and layer2 down to layer3's resolution and width
        self.conv1, self.bn1 = conv3x3_s2(c, 2 * c), nn.BatchNorm2d(2 * c)
        self.conv2, self.bn2 = conv3x3_s2(2 * c, 4 * c), nn.BatchNorm2d(4 * c)
        self.conv3, self.bn3 = conv3x3_s2(2 * c, 4 * c), nn.BatchNorm2d(4 * c)
        # unused in forward, kept so that official checkpoints load with strict key matching
        self.conv4 = nn.Conv2d(16 * c, 8 * c, kernel_size=1, bias=False)
        self.bn4 = nn.BatchNorm2d(8 * c)
        self.relu = nn.ReLU(inplace=True)
        # one-class embedding: ResNet blocks from the 3 concatenated taps (12c channels) to 8c channels, stride 2
        out_channels = 512 * block.expansion
        downsample = nn.Sequential(
            nn.Conv2d(12 * c, out_channels, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(out_channels)
        )
        blocks = [block(12 * c, 512, stride=2, downsample=downsample, base_width=width_per_group)]
        blocks += [block(out_channels, 512, base_width=width_per_group) for _ in range(1, n_blocks)]
        self.bn_layer = nn.Sequential(*blocks)
        init_weights(self)

    def forward(self, features):
        f1, f2, f3 = features
        f1 = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(f1))))))  # (B,4c,H/16,W/16)
        f2 = self.relu(self.bn3(self.conv3(f2)))  # (B,4c,H/16,W/16)
        fused = torch.cat([f1, f2, f3], dim=1)  # (B,12c,H/16,W/16)
        return self.bn_layer(fused)  # (B,8c,H/32,W/32)
