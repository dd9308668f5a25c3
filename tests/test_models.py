"""The model zoo against an independent numpy forward (tests/reference_forward.py), and the binary conv."""
import numpy as np
import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from conftest import TEST_INPUT  # small test inputs: (C, H, W) per architecture
from reference_forward import forward as reference_forward
from sdbnn_deploy.models import ARCHITECTURES, DEFAULT_INPUT_SHAPE, IRConv2d, build, float_twin


def randomize(model, seed, calibration_input):
    """Random weights everywhere, random BN gammas (negative and exactly zero ones too) and biases,
    random alpha/beta, weight channels with a non-zero mean so WSD matters, and BN running statistics
    taken from a calibration batch and then perturbed, so activations have a trained model's scale
    (the ASD shift in (0, 1) then really moves signs)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, IRConv2d):
                cout = m.out_channels
                m.weight.copy_(randn(*m.weight.shape) + randn(cout, 1, 1, 1, scale=0.5))
                m.alpha.copy_(randn(cout, scale=2.0))
                if m.asd == "static":
                    m.beta.copy_(randn(m.in_channels, scale=2.0))
                else:
                    for lin in (m.dybeta.fc[0], m.dybeta.fc[2]):
                        lin.weight.copy_(randn(*lin.weight.shape, scale=2.0 / np.sqrt(lin.in_features)))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(randn(*m.weight.shape, scale=0.5))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(randn(*m.weight.shape, scale=1.0 / np.sqrt(m.weight[0].numel())))
                if m.bias is not None:
                    m.bias.copy_(randn(*m.bias.shape))
        for m in bns:
            gamma = randn(m.num_features)
            gamma[::5] = 0.0
            m.weight.copy_(gamma)
            m.bias.copy_(randn(m.num_features, scale=0.3))
            m.momentum = 1.0  # the calibration batch sets the running statistics
        model.train()
        model(calibration_input)
        for m in bns:
            std = m.running_var.sqrt()
            m.running_mean.add_(randn(m.num_features, scale=0.3) * std)
            m.running_var.mul_(torch.rand(m.num_features, generator=g, dtype=torch.float64) * 1.5 + 0.5)
            m.momentum = 0.1
    return model.eval()


def make(arch, asd, seed=0, dtype=torch.float64):
    """A randomised model of `arch` in eval mode and a test batch of 2 (both in `dtype`)."""
    g = torch.Generator().manual_seed(seed + 1)
    calibration = torch.randn((4,) + TEST_INPUT[arch], generator=g, dtype=torch.float64)
    x = torch.randn((2,) + TEST_INPUT[arch], generator=g, dtype=torch.float64)
    model = randomize(build(arch, asd).to(torch.float64), seed, calibration)
    return model.to(dtype), x.to(dtype)


def relative_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("asd", ["static", "dynamic"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_eval_forward_equals_numpy_reference(arch, asd):
    model, x = make(arch, asd, seed=len(arch))
    with torch.no_grad():
        got = model(x).numpy()
    want = reference_forward(model.state_dict(), arch, asd, x.numpy())
    assert got.shape == want.shape
    assert np.all(np.isfinite(want)) and np.linalg.norm(want) > 0
    assert relative_l2(got, want) < 1e-4
    assert np.array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.parametrize("asd", ["static", "dynamic"])
def test_float32_resnet20_equals_reference(asd):
    model, x = make("resnet20", asd, seed=3, dtype=torch.float32)
    with torch.no_grad():
        got = model(x).numpy()
    want = reference_forward(model.state_dict(), "resnet20", asd, x.numpy())
    assert relative_l2(got, want) < 1e-4
    assert np.array_equal(got.argmax(1), want.argmax(1))


def test_reference_catches_a_wrong_model():
    """The comparison has teeth: negating one layer's ASD beta changes the output well beyond the tolerance."""
    model, x = make("resnet20", "static", seed=5)
    want = reference_forward(model.state_dict(), "resnet20", "static", x.numpy())
    with torch.no_grad():
        model.layer1[0].conv1.beta.mul_(-1)
        assert relative_l2(model(x).numpy(), want) > 1e-2


@pytest.mark.parametrize("asd", ["static", "dynamic"])
def test_binary_conv_eval_is_exact_sign_conv(asd):
    """On integer inputs and weights the eval output is conv2d(sign(x + shift), sign(w)) exactly."""
    g = torch.Generator().manual_seed(7)
    conv = IRConv2d(5, 4, 3, stride=2, padding=1, asd=asd, reduction=2).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-3, 4, conv.weight.shape, generator=g).float())
        conv.alpha.copy_(torch.randn(4, generator=g))
    x = torch.randint(-3, 4, (2, 5, 7, 7), generator=g).float()
    with torch.no_grad():
        y = conv(x)
        shift = conv.shift(x)
    # shift is in (0, 1), the WSD shift is below 0.01 * 3: integers keep their sign, zeros go to +1
    assert torch.all((shift > 0) & (shift < 1))
    signs_x = torch.where(x >= 0, 1.0, -1.0)
    signs_w = torch.where(conv.weight > 0, 1.0, -1.0)
    mean_sign = torch.sign(conv.weight.flatten(1).mean(1))[:, None, None, None]
    signs_w = torch.where(conv.weight == 0, mean_sign, signs_w)  # a zero weight takes the sign of the WSD shift
    want = F.conv2d(signs_x, signs_w, stride=2, padding=1)
    assert torch.equal(y, want)
    assert torch.equal(y, y.round()) and y.abs().max() <= 5 * 9


@pytest.mark.parametrize("asd", ["static", "dynamic"])
def test_training_mode_backpropagates(asd):
    model = build("resnet20", asd, in_channels=1).train()
    out = model(torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    out.square().sum().backward()
    conv = model.layer2[0].conv1
    grads = [conv.weight.grad, conv.alpha.grad]
    grads.append(conv.beta.grad if asd == "static" else conv.dybeta.fc[0].weight.grad)
    for grad in grads:
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_binary_quantize_gradient_is_ede():
    conv = IRConv2d(2, 2, 1, asd="static").train()
    conv.k, conv.t = 2.0, 0.5
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    conv.binarize(x).sum().backward()
    assert torch.allclose(x.grad, 2.0 * 0.5 * (1 - torch.tanh(0.5 * x.detach()) ** 2))


def test_state_dict_keys_match_released_code():
    static = build("resnet20", "static").state_dict()
    dynamic = build("resnet20", "dynamic").state_dict()
    assert static["layer1.0.conv1.beta"].shape == (16,)
    assert dynamic["layer1.0.conv1.dybeta.fc.0.weight"].shape == (1, 16)
    assert dynamic["layer3.2.conv2.dybeta.fc.2.weight"].shape == (64, 4)
    assert static["bn2.running_var"].shape == (64,) and static["linear.weight"].shape == (10, 64)
    vgg = build("vgg_small", "static").state_dict()
    assert vgg["conv0.weight"].shape == (128, 3, 3, 3) and vgg["fc.weight"].shape == (10, 8192)
    r18 = build("resnet18", "dynamic").state_dict()
    assert r18["layer2.0.shortcut.0.weight"].shape == (128, 64, 1, 1) and "layer1.0.shortcut.0.weight" not in r18
    bireal = build("bireal18", "dynamic").state_dict()
    assert bireal["layer2.0.downsample.1.weight"].shape == (128, 64, 1, 1)
    assert bireal["layer1.0.binary_conv.dybeta.fc.0.weight"].shape == (8, 64)  # reduction 8 on ImageNet
    assert bireal["layer4.3.prelu.weight"].shape == (512,) and bireal["fc.weight"].shape == (1000, 512)
    assert not any(k.endswith((".k", ".t")) for k in static)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_fx_traces_eval_model(arch):
    model = build(arch, "dynamic").eval()
    x = torch.randn((2,) + TEST_INPUT[arch], generator=torch.Generator().manual_seed(0))
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    assert DEFAULT_INPUT_SHAPE[arch][0] == 3


def test_resnet20_runs_on_default_and_small_inputs():
    model = build("resnet20", "static", num_classes=7, in_channels=1).eval()
    for hw in (16, 32):
        assert model(torch.randn(1, 1, hw, hw)).shape == (1, 7)


def test_float_twin_is_plain_float_convs():
    model, x = make("resnet20", "static", seed=2, dtype=torch.float32)
    twin = float_twin(model).eval()
    assert not any(isinstance(m, IRConv2d) for m in twin.modules())
    assert any(isinstance(m, IRConv2d) for m in model.modules())  # the original is untouched
    conv = twin.layer1[0].conv1
    assert type(conv) is nn.Conv2d and torch.equal(conv.weight, model.layer1[0].conv1.weight)
    h = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(conv(h), F.conv2d(h, model.layer1[0].conv1.weight, padding=1), atol=1e-5)
        assert twin(x).shape == (2, 10)
        assert not torch.allclose(twin(x), model(x))
