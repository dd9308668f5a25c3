"""fold_float_threshold: the float stem's BN + hardtanh + static-ASD sign as a signed conv and a shift."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TEST_INPUT, randomize
from sdbnn_deploy.convert import convert
from sdbnn_deploy.models import build
from sdbnn_deploy.passes.fold_float_threshold import bit_rule
from sdbnn_deploy.passes.fold_threshold import bn_coefficients


def _torch_bits(y, gamma, beta, mean, var, shift, lo, hi):
    """PyTorch's bits: sign(hardtanh(BN(y)) + s) > 0, y (N, C) float32."""
    bn = F.batch_norm(torch.from_numpy(y), torch.from_numpy(mean), torch.from_numpy(var),
                      torch.from_numpy(gamma), torch.from_numpy(beta), eps=1e-5)
    return (torch.sign(F.hardtanh(bn, lo, hi) + torch.from_numpy(shift)) > 0).numpy()


@pytest.mark.parametrize("lo, hi", [(-1.0, 1.0), (-0.25, 0.5)])
def test_bit_rule_equals_torch_away_from_the_boundary(lo, hi):
    """Negative, zero and positive gammas, shifts inside and beyond the clip: the rule direction*y + t > 0
    gives torch's bit wherever y is not within rounding (1e-5 relative) of the channel's threshold."""
    rng = np.random.default_rng(0)
    c = 64
    gamma = rng.standard_normal(c).astype(np.float32)
    gamma[::5] = 0
    beta, mean = (rng.standard_normal(c).astype(np.float32) for _ in range(2))
    var = rng.uniform(0.2, 2.0, c).astype(np.float32)
    shift = rng.uniform(-1.5, 1.5, c).astype(np.float32)
    y = (rng.standard_normal((4096, c)) * 3).astype(np.float32)
    a, b = bn_coefficients(gamma, beta, mean, var, 1e-5)
    direction, t = bit_rule(a, b, shift, lo, hi)
    ours = direction * y + t > 0
    expected = _torch_bits(y, gamma, beta, mean, var, shift, lo, hi)
    threshold = -t / np.where(direction == 0, 1, direction)
    near = np.abs(y - threshold) <= 1e-5 * np.maximum(np.abs(threshold), 1)
    assert np.array_equal(ours[~near], expected[~near])
    assert (direction == 0).any() and (direction < 0).any() and (direction > 0).any()
    assert np.all(np.abs(t[direction == 0]) == 1)


def test_static_vgg_stem_becomes_a_signed_conv_into_binarize_pack():
    model = randomize(build("vgg_small", "static"), seed=3)
    with torch.no_grad():
        model.bn0.weight[::4] *= -1
        model.bn0.weight[1::9] = 0
    result = convert(model, arch="vgg_small", input_shape=TEST_INPUT["vgg_small"], probe_batch=8)
    g = result.graph
    stem = g.nodes_of("Conv")[0]
    assert g.single_consumer(stem.outputs[0]).op == "BinarizePack"
    assert len(g.nodes_of("BatchNormalization")) == 1  # only the head's (after the last pool)
    w, orig = g.consts[stem.inputs[1]], model.conv0.weight.detach().numpy()
    gamma = model.bn0.weight.detach().numpy()
    zeroed = ~w.reshape(len(w), -1).any(1)
    negated = ~zeroed & np.all(w == -orig, axis=(1, 2, 3))
    kept = ~zeroed & np.all(w == orig, axis=(1, 2, 3))
    assert np.all(zeroed | negated | kept)  # every channel kept, negated or zeroed, nothing else
    assert np.all(zeroed[gamma == 0])  # BN(y) constant: the bit does not depend on y
    assert np.all((negated | zeroed)[gamma < 0]) and negated.any() and kept.any()
    check = result.report["check"]
    assert check["passed"] and check["binary_layers_exact"] and check["input_bit_mismatches"] == 0


@pytest.mark.parametrize("arch", ["resnet18", "resnet20", "bireal18"])
def test_stems_that_feed_the_residual_keep_their_batchnorm(arch):
    model = randomize(build(arch, "static"), seed=4)
    g = convert(model, arch=arch, input_shape=TEST_INPUT[arch], probe_batch=1).graph
    stem = g.nodes_of("Conv")[0]
    assert g.single_consumer(stem.outputs[0]).op == "BatchNormalization"
    assert np.array_equal(g.consts[stem.inputs[1]], model.conv1.weight.detach().numpy())  # not signed
