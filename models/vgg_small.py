"""VGG-Small for CIFAR-10 (`vgg_small_1w1a` of the released SD-BNN code), state-dict compatible.

conv0 3->128 + bn0 + hardtanh (full precision), then five binary 3x3 convs
128->128, 128->256, 256->256, 256->512, 512->512. After convs 1, 3 and 5 comes a 2x2 max-pool, and
the pool sits BEFORE the BatchNorm:  conv -> [maxpool] -> bn -> hardtanh.
Head: flatten (512 x 4 x 4 for 32x32 inputs) -> fc.
"""
import torch.nn as nn

from .layers import IRConv2d

# (in, out, max-pool after the conv?) of the five binary convs conv1..conv5
BINARY_CONVS = ((128, 128, True), (128, 256, False), (256, 256, True), (256, 512, False), (512, 512, True))


class VGGSmall(nn.Module):
    def __init__(self, asd="static", num_classes=10, in_channels=3, reduction=16):
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, 128, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(128)
        for i, (cin, cout, _) in enumerate(BINARY_CONVS, start=1):
            setattr(self, f"conv{i}", IRConv2d(cin, cout, 3, padding=1, asd=asd, reduction=reduction))
            setattr(self, f"bn{i}", nn.BatchNorm2d(cout))
        self.pooling = nn.MaxPool2d(kernel_size=2, stride=2)
        self.nonlinear = nn.Hardtanh()
        self.fc = nn.Linear(512 * 4 * 4, num_classes)

    def forward(self, x):
        x = self.nonlinear(self.bn0(self.conv0(x)))
        for i, (_, _, pool) in enumerate(BINARY_CONVS, start=1):
            x = getattr(self, f"conv{i}")(x)
            if pool:
                x = self.pooling(x)
            x = self.nonlinear(getattr(self, f"bn{i}")(x))
        return self.fc(x.flatten(1))


def vgg_small(asd="static", num_classes=10, in_channels=3, reduction=16):
    """SD-BNN VGG-Small for 32x32 inputs; the SE reduction of dynamic ASD is 16 as in the released code."""
    return VGGSmall(asd, num_classes, in_channels, reduction)
