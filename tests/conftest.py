import numpy as np
import pytest
import torch
import torch.nn as nn

# small inputs that every architecture takes, for fast tests
TEST_INPUT = {"resnet20": (3, 16, 16), "resnet18": (3, 32, 32), "vgg_small": (3, 32, 32), "bireal18": (3, 64, 64),
              "bireal18_32w1a": (3, 64, 64)}


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every value drawn from `seed` alone (so a test's model never depends on which tests ran before it
    in the same process): conv and linear weights, random BN statistics with negative and exactly-zero
    gammas, random WSD alphas and ASD betas."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.weight.copy_(torch.randn(c, generator=g))
                m.weight[::5] *= -1
                m.weight[::7] = 0
                m.bias.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_mean.copy_(torch.randn(c, generator=g) * 3)
                m.running_var.copy_(torch.rand(c, generator=g) * 5 + 0.1)
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.copy_(torch.randn(p.shape, generator=g) * 2)
    return model.eval()


def random_signs(rng, *shape):
    """Random +1/-1 int8 values of the given shape."""
    return rng.choice(np.array([-1, 1], dtype=np.int8), size=shape)


def conv_case(seed, n, cin, h, w, cout, k, stride, pad, mode):
    """Random packed inputs and weights of a BinaryConv2d, and the extra inputs of its mode (an affine
    scale with zero and negative gammas, or thresholds_on_outputs)."""
    from sdbnn_deploy.bits import pack_signs

    rng = np.random.default_rng(seed)
    x = pack_signs(random_signs(rng, n, h, w, cin))
    wt = pack_signs(random_signs(rng, cout, k, k, cin))
    if mode == "int":
        return x, wt, []
    if mode == "bits":
        return x, wt, [thresholds_on_outputs(x, wt, cin, (stride, stride), (pad, pad))]
    scale, bias = rng.normal(size=cout).astype(np.float32), rng.normal(size=cout).astype(np.float32)
    scale[::3] = 0.0  # zero and negative gammas
    scale[1::3] *= -1
    return x, wt, [scale, bias]


def thresholds_on_outputs(x, wt, in_channels, strides, pads):
    """Thresholds (Cout,) of a bits conv that sit on and next to its real outputs (the first and last
    pixel's y, and y + 1: y == threshold and y == threshold - 1 both occur) and on -taps and taps + 1
    (every bit set, none set), so that an off-by-one or a misplaced bit changes the result."""
    from sdbnn_deploy.ops import binary_conv2d

    cout, kh, kw = wt.shape[:3]
    y = binary_conv2d.reference(x, wt, mode="int", in_channels=in_channels, strides=strides, pads=pads)
    taps = in_channels * kh * kw
    choices = np.stack([y[0, :, 0, 0], y[0, :, 0, 0] + 1, y[0, :, -1, -1], y[0, :, -1, -1] + 1,
                        np.full(cout, -taps), np.full(cout, taps + 1)])
    return choices[np.arange(cout) % len(choices), np.arange(cout)].astype(np.int32)


@pytest.fixture(autouse=True)
def no_user_targets(tmp_path_factory, monkeypatch):
    """Every test sees an empty user folder of target descriptions, not the developer's tuned copies."""
    from sdbnn_deploy.targets import USER_TARGETS_ENV

    monkeypatch.setenv(USER_TARGETS_ENV, str(tmp_path_factory.getbasetemp() / "user-targets"))  # need not exist


@pytest.fixture
def targets_copy(tmp_path, monkeypatch):
    """A private copy of targets/ that get_target and sdbnn_deploy.tune's write_params use."""
    import shutil

    from sdbnn_deploy import targets

    folder = tmp_path / "targets"
    shutil.copytree(targets.TARGETS_DIR, folder)
    monkeypatch.setattr(targets, "TARGETS_DIR", folder)
    return folder


@pytest.fixture
def rng():
    return np.random.default_rng(0)
