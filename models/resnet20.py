"""ResNet-20 for CIFAR-10 (`resnet20_1w1a` of the released SD-BNN code), state-dict compatible.

conv1 3->16 + bn1 + hardtanh (full precision), three stages of three blocks with 16, 32, 64 channels,
then avg-pool over the whole map -> BatchNorm1d(64) (bn2) -> linear. Every binary conv has its own
residual:

    out = hardtanh(bn1(conv1(x)) + shortcut(x))
    out = hardtanh(bn2(conv2(out)) + out)

The downsampling shortcut is the parameter-free "option A" (`layers.ShortcutA`).
"""
import torch.nn as nn
import torch.nn.functional as F

from .layers import ShortcutA, TwoBinaryConvs, resnet_stages


class BasicBlock(TwoBinaryConvs):
    """Two binary 3x3 convs, each with BN, its own residual and a hardtanh."""

    def __init__(self, in_planes, planes, stride, asd, reduction):
        super().__init__(in_planes, planes, stride, asd, reduction)
        if stride != 1 or in_planes != planes:
            self.shortcut = ShortcutA(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.hardtanh(self.bn1(self.conv1(x)) + self.shortcut(x))
        return F.hardtanh(self.bn2(self.conv2(out)) + out)


class ResNet20(nn.Module):
    def __init__(self, asd="static", num_classes=10, in_channels=3, reduction=16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1, self.layer2, self.layer3 = resnet_stages(
            lambda i, p, s: BasicBlock(i, p, s, asd, reduction), 16, ((16, 1), (32, 2), (64, 2)), 3)
        self.bn2 = nn.BatchNorm1d(64)
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.hardtanh(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.shape[3]).flatten(1)
        return self.linear(self.bn2(out))


def resnet20(asd="static", num_classes=10, in_channels=3, reduction=16):
    """SD-BNN ResNet-20; the SE reduction of dynamic ASD is 16 as in the released CIFAR code."""
    return ResNet20(asd, num_classes, in_channels, reduction)
