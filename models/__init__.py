"""The SD-BNN model zoo: PyTorch definitions whose eval forward equals the released training code.

    build("resnet20", asd="static")          -> nn.Module (train mode, as nn.Module builds it)
    ARCHITECTURES["vgg_small"](asd="dynamic")
    DEFAULT_INPUT_SHAPE["bireal18"]          -> (3, 224, 224)
    float_twin(model)                        -> the same network with plain float convs

State-dict keys match the released code without its DataParallel `module.` prefix; the layer math is
in layers.py and design/sdbnn-math.md.
"""
import copy

import torch.nn as nn

from .bireal18 import bireal18, bireal18_32w1a
from .layers import ASD_FORMS, BinaryQuantize, IRConv2d, SELayer
from .resnet18 import resnet18
from .resnet20 import resnet20
from .vgg_small import vgg_small

ARCHITECTURES = {
    "resnet20": resnet20,
    "resnet18": resnet18,
    "vgg_small": vgg_small,
    "bireal18": bireal18,
    "bireal18_32w1a": bireal18_32w1a,
}

DEFAULT_INPUT_SHAPE = {
    "resnet20": (3, 32, 32),
    "resnet18": (3, 32, 32),
    "vgg_small": (3, 32, 32),
    "bireal18": (3, 224, 224),
    "bireal18_32w1a": (3, 224, 224),
}

DEFAULT_NUM_CLASSES = {"resnet20": 10, "resnet18": 10, "vgg_small": 10, "bireal18": 1000, "bireal18_32w1a": 1000}


def build(arch, asd="static", num_classes=None, in_channels=3, reduction=None):
    """A fresh model of `arch` with ASD form `asd`; num_classes and reduction default per architecture."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    if asd not in ASD_FORMS:
        raise ValueError(f"asd must be one of {ASD_FORMS}, not {asd!r}")
    kwargs = {"asd": asd, "num_classes": num_classes or DEFAULT_NUM_CLASSES[arch], "in_channels": in_channels}
    if reduction is not None:
        kwargs["reduction"] = reduction
    return ARCHITECTURES[arch](**kwargs)


def asd_form(model):
    """"static", "dynamic", both joined by a comma, or "none": the ASD forms of a model's binary convs."""
    forms = {getattr(m, "asd", None) for m in model.modules()} - {None}
    return ",".join(sorted(forms)) or "none"


def float_twin(model):
    """A copy of `model` where every IRConv2d is a plain float nn.Conv2d with the same weight.

    No sign, no ASD, no WSD: the speed baseline. The original model is not changed.
    """
    twin = copy.deepcopy(model)
    binary = [(name, m) for name, m in twin.named_modules() if isinstance(m, IRConv2d)]
    for name, m in binary:
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                         padding=m.padding, bias=False)
        conv.weight.data.copy_(m.weight.data)
        conv.train(m.training)
        parent_name, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent_name), child, conv)
    return twin


__all__ = ["ARCHITECTURES", "DEFAULT_INPUT_SHAPE", "DEFAULT_NUM_CLASSES", "asd_form", "build", "float_twin",
           "BinaryQuantize", "IRConv2d", "SELayer", "resnet20", "resnet18", "vgg_small", "bireal18"]
