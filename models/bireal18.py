"""Bi-Real ResNet-18 for ImageNet (`birealnet18` of the released SD-BNN code).

Full-precision stem: conv1 7x7/2 (3->64) -> bn1 -> maxpool 3x3/2 (no activation), then four stages
of four blocks (64, 128, 256, 512 channels). Each block has ONE binary 3x3 conv and its own residual:

    out = prelu(bn1(binary_conv(x)) + downsample(x))

downsample = AvgPool2d(2, stride) -> 1x1 float conv -> BN (keys downsample.1, downsample.2) in the
first block of stages 2-4; elsewhere the identity. Head: adaptive average pool to 1x1 -> fc
(so 64x64 test inputs work as well as 224x224).

Our keys name the binary conv like every other model here (binary_conv.weight of shape
(Cout, Cin, 3, 3), binary_conv.dybeta.*); the released ImageNet layout (flat `weights`, SE block named
`beta`) is converted by sdbnn_deploy.checkpoint. The SE reduction of dynamic ASD is 8, as in the
released ImageNet code.
"""
import torch.nn as nn

from .layers import IRConv2d, resnet_stages


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride, asd, reduction, binary_weights=True):
        super().__init__()
        self.binary_conv = IRConv2d(in_planes, planes, 3, stride=stride, padding=1, asd=asd, reduction=reduction,
                                    binary_weights=binary_weights)
        self.bn1 = nn.BatchNorm2d(planes)
        self.prelu = nn.PReLU(planes)
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=stride),
                nn.Conv2d(in_planes, planes, 1, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.downsample = nn.Identity()

    def forward(self, x):
        return self.prelu(self.bn1(self.binary_conv(x)) + self.downsample(x))


class BiReal18(nn.Module):
    def __init__(self, asd="static", num_classes=1000, in_channels=3, reduction=8, binary_weights=True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet_stages(
            lambda i, p, s: BasicBlock(i, p, s, asd, reduction, binary_weights), 64,
            ((64, 1), (128, 2), (256, 2), (512, 2)), 4)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def bireal18(asd="static", num_classes=1000, in_channels=3, reduction=8):
    """SD-BNN Bi-Real ResNet-18 for 224x224 ImageNet inputs."""
    return BiReal18(asd, num_classes, in_channels, reduction)


def bireal18_32w1a(asd="static", num_classes=1000, in_channels=3, reduction=8):
    """The released "32/1" ImageNet model: the first training stage, float weights, binary activations.

    Its state dict looks like the 1/1 model's (the WSD alpha is there, unused), so the loader cannot
    tell them apart: name it with --arch bireal18_32w1a.
    """
    return BiReal18(asd, num_classes, in_channels, reduction, binary_weights=False)
