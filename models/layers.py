"""The SD-BNN binary convolution and its pieces (see design/sdbnn-math.md, section 1).

`IRConv2d` is a `nn.Conv2d` whose forward binarises both operands:

    mw[o] = 0.01 * mean(weight[o])                  (detached)
    w     = weight + sigmoid(alpha)[o] * mw[o]       WSD, per output channel
    a     = x + shift                                 ASD, shift in (0, 1)
    y     = conv2d(sign(a), sign(w), zero padding)    no scaling factors, sign(0) = 0

The ASD shift is either dynamic, `dybeta(a)`: a squeeze-excitation block on the input (the released
code), or static, `sigmoid(beta)` per input channel (the form of the paper). In eval mode the
binarisation is exactly `torch.sign`; in training mode it is `BinaryQuantize`, whose gradient is the
EDE estimator, so the model trains.

Every forward here is torch.fx traceable: no Python branch depends on tensor values.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

ASD_FORMS = ("dynamic", "static")


class BinaryQuantize(torch.autograd.Function):
    """sign(x) forward; backward the EDE estimator  grad * k * t * (1 - tanh(t x)^2).

    k and t are plain numbers (the training loop anneals them); they are not learned.
    """

    @staticmethod
    def forward(ctx, x, k, t):
        ctx.save_for_backward(x)
        ctx.k, ctx.t = float(k), float(t)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        k, t = ctx.k, ctx.t
        return grad_output * k * t * (1 - torch.tanh(x * t) ** 2), None, None


class SELayer(nn.Module):
    """Squeeze-excitation: global average pool -> Linear -> ReLU -> Linear -> Sigmoid, shape (N, C, 1, 1).

    hidden = channels // reduction (at least 1); no biases. Keys: fc.0.weight, fc.2.weight.
    """

    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        pooled = x.mean(dim=(2, 3))
        return self.fc(pooled)[:, :, None, None]


class IRConv2d(nn.Conv2d):
    """The SD-BNN binary convolution (WSD + ASD), state-dict compatible with the released code.

    Parameters: weight (Cout, Cin, k, k), alpha (Cout,) and either dybeta (SELayer, asd="dynamic")
    or beta (Cin,) (asd="static"). `k` and `t` are the EDE constants, set by the training loop.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False,
                 asd="dynamic", reduction=16, binary_weights=True):
        if asd not in ASD_FORMS:
            raise ValueError(f"asd must be one of {ASD_FORMS}, not {asd!r}")
        if bias:
            raise ValueError("IRConv2d has no bias in SD-BNN")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.asd = asd
        self.binary_weights = binary_weights  # False: the "32/1" variant, float weights on binary inputs
        self.k = 10.0
        self.t = 0.1
        self.alpha = nn.Parameter(torch.zeros(out_channels))
        if asd == "dynamic":
            self.dybeta = SELayer(in_channels, reduction)
        else:
            self.beta = nn.Parameter(torch.zeros(in_channels))

    def shift(self, x):
        """The ASD shift added to the input: (N, Cin, 1, 1) if dynamic, (1, Cin, 1, 1) if static."""
        if self.asd == "dynamic":
            return self.dybeta(x)
        return torch.sigmoid(self.beta)[None, :, None, None]

    def shifted_weight(self):
        """WSD: weight + sigmoid(alpha) * 0.01 * mean(weight) per output channel (mean detached)."""
        w = self.weight
        mw = 0.01 * w.flatten(1).mean(dim=1).detach()
        return w + (torch.sigmoid(self.alpha) * mw)[:, None, None, None]

    def binarize(self, x):
        """Exactly torch.sign in eval mode; sign with the EDE gradient in training mode."""
        if self.training:
            return BinaryQuantize.apply(x, self.k, self.t)
        return torch.sign(x)

    def binarize_input(self, a):
        """The activations' binarisation, sign(x + shift): one method, so that the conversion check can
        resolve ties there (sdbnn_deploy.verify_conversion)."""
        return self.binarize(a)

    def forward(self, x):
        a = x + self.shift(x)
        bw = self.binarize(self.shifted_weight()) if self.binary_weights else self.weight
        ba = self.binarize_input(a)
        return F.conv2d(ba, bw, None, self.stride, self.padding)

    def extra_repr(self):
        return super().extra_repr() + f", asd={self.asd}" + ("" if self.binary_weights else ", float weights")


class ShortcutA(nn.Module):
    """ResNet "option A" shortcut: take every second pixel, pad channels with zeros on both sides."""

    def __init__(self, pad_channels):
        super().__init__()
        self.pad_channels = pad_channels

    def forward(self, x):
        p = self.pad_channels
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))


class TwoBinaryConvs(nn.Module):
    """conv1 (3x3, stride) + bn1 and conv2 (3x3) + bn2, under the released code's keys: the binary part of
    a CIFAR ResNet basic block (ResNet-18 and ResNet-20 differ in the shortcut and where it is added)."""

    def __init__(self, in_planes, planes, stride, asd, reduction):
        super().__init__()
        self.conv1 = IRConv2d(in_planes, planes, 3, stride=stride, padding=1, asd=asd, reduction=reduction)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = IRConv2d(planes, planes, 3, stride=1, padding=1, asd=asd, reduction=reduction)
        self.bn2 = nn.BatchNorm2d(planes)


def resnet_stages(make_block, in_planes, plan, blocks):
    """One nn.Sequential per (planes, stride) of `plan`: `blocks` blocks make_block(in_planes, planes,
    stride), the first with the stage's stride, the others with stride 1."""
    stages = []
    for planes, stride in plan:
        stage = []
        for s in (stride,) + (1,) * (blocks - 1):
            stage.append(make_block(in_planes, planes, s))
            in_planes = planes
        stages.append(nn.Sequential(*stage))
    return stages
