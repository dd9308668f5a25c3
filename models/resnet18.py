"""ResNet-18 for CIFAR-10 (`resnet18_1w1a` of the released SD-BNN code), state-dict compatible.

conv1 3->64 + bn1 + hardtanh (full precision), four stages of two blocks with 64, 128, 256, 512
channels, then avg-pool over the whole map (4x4 for 32x32 inputs) -> BatchNorm1d(512) (bn2) -> linear.

    out = hardtanh(bn2(conv2(hardtanh(bn1(conv1(x))))) + shortcut(x))

The shortcut is a full-precision 1x1 conv + BN (keys shortcut.0, shortcut.1) where the shape changes.
"""
import torch.nn as nn
import torch.nn.functional as F

from .layers import TwoBinaryConvs, resnet_stages


class BasicBlock(TwoBinaryConvs):
    def __init__(self, in_planes, planes, stride, asd, reduction):
        super().__init__(in_planes, planes, stride, asd, reduction)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x):
        out = F.hardtanh(self.bn1(self.conv1(x)))
        return F.hardtanh(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, asd="static", num_classes=10, in_channels=3, reduction=16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet_stages(
            lambda i, p, s: BasicBlock(i, p, s, asd, reduction), 64, ((64, 1), (128, 2), (256, 2), (512, 2)), 2)
        self.linear = nn.Linear(512, num_classes)
        self.bn2 = nn.BatchNorm1d(512)

    def forward(self, x):
        out = F.hardtanh(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, out.shape[3]).flatten(1)
        return self.linear(self.bn2(out))


def resnet18(asd="static", num_classes=10, in_channels=3, reduction=16):
    """SD-BNN ResNet-18 for CIFAR; the SE reduction of dynamic ASD is 16 as in the released code."""
    return ResNet18(asd, num_classes, in_channels, reduction)
