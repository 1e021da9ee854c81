"""
The student decoder (the official module `decoder`): the teacher's ResNet mirrored. Three stages, each
starting with a block that doubles the resolution with a 2x2 transposed conv, rebuild the teacher's taps.

    from model.de_resnet import Decoder
    decoder = Decoder("wide_resnet50_2")
    f1, f2, f3 = decoder(z)  # (B,2048,8,8) -> (B,256,64,64), (B,512,32,32), (B,1024,16,16)

State-dict keys equal the official code's (layer{1,2,3}.{i}.conv*/bn*, layer{k}.0.upsample.*).
"""

import torch.nn as nn

from model.bn_fusion import init_weights


def deconv2x2(in_channels, out_channels):
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)


def conv3x3(in_channels, out_channels):
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)


class DeBasicBlock(nn.Module):
    """torchvision's BasicBlock, except that an upsampling block's first conv is a 2x2 transposed conv."""

    expansion = 1

    def __init__(self, in_channels, planes, upsample=None, base_width=64):
        super().__init__()
        self.conv1 = deconv2x2(in_channels, planes) if upsample is not None else conv3x3(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = upsample

    def forward(self, x):
        identity = x if self.upsample is None else self.upsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DeBottleneck(nn.Module):
    """torchvision's Bottleneck, except that an upsampling block's 3x3 conv is a 2x2 transposed conv."""

    expansion = 4

    def __init__(self, in_channels, planes, upsample=None, base_width=64):
        super().__init__()
        width = planes * base_width // 64
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = deconv2x2(width, width) if upsample is not None else conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = upsample

    def forward(self, x):
        identity = x if self.upsample is None else self.upsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# backbone -> (block, blocks per stage, width_per_group); stage k gets the teacher's layer-k block count,
# as in the official de_resnet (so the deepest stage of wide_resnet101_2's decoder has 23 blocks)
DECODER_CONFIGS = {
    "resnet18": (DeBasicBlock, (2, 2, 2), 64),
    "resnet34": (DeBasicBlock, (3, 4, 6), 64),
    "resnet50": (DeBottleneck, (3, 4, 6), 64),
    "wide_resnet50_2": (DeBottleneck, (3, 4, 6), 128),
    "wide_resnet101_2": (DeBottleneck, (3, 4, 23), 128),
}


def make_stage(block, in_channels, planes, n_blocks, base_width):
    out_channels = planes * block.expansion
    upsample = nn.Sequential(deconv2x2(in_channels, out_channels), nn.BatchNorm2d(out_channels))
    blocks = [block(in_channels, planes, upsample=upsample, base_width=base_width)]
    blocks += [block(out_channels, planes, base_width=base_width) for _ in range(1, n_blocks)]
    return nn.Sequential(*blocks)


class Decoder(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        block, n_blocks, base_width = DECODER_CONFIGS[backbone]
        c = 512 * block.expansion  # the OCBE's output channels
        self.layer1 = make_stage(block, c, 256, n_blocks[0], base_width)
        self.layer2 = make_stage(block, c // 2, 128, n_blocks[1], base_width)
        self.layer3 = make_stage(block, c // 4, 64, n_blocks[2], base_width)
        init_weights(self)

    def forward(self, z):
        f3 = self.layer1(z)  # (B,c/2,2h,2w): mirrors the teacher's layer3
        f2 = self.layer2(f3)  # (B,c/4,4h,4w)
        f1 = self.layer3(f2)  # (B,c/8,8h,8w)
        return [f1, f2, f3]  # in the teacher's order
