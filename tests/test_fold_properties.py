"""The fold math alone, property-based over random shapes: zero mismatches against PyTorch.

A two-layer SD-BNN block  IRConv2d -> BN -> [MaxPool] -> Hardtanh -> IRConv2d(static) -> BN  exercises
WSD folding, packing with Cin not a multiple of 64, zero padding, strides, threshold folding with
negative and zero gammas, channel flips under a max-pool, and the equality boundary.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdbnn_deploy.convert import convert
from sdbnn_deploy.verify_conversion import check_conversion
from sdbnn_deploy.models.layers import IRConv2d
from sdbnn_deploy.passes.fold_threshold import sign_table, thresholds_from_table


class Block(nn.Module):
    def __init__(self, cin, cmid, k, stride, pad, pool, asd):
        super().__init__()
        self.conv_a = IRConv2d(cin, cmid, k, stride=stride, padding=pad, asd=asd, reduction=4)
        self.bn_a = nn.BatchNorm2d(cmid)
        self.pool = nn.MaxPool2d(2, 2) if pool else nn.Identity()
        self.act = nn.Hardtanh()
        self.conv_b = IRConv2d(cmid, 5, 3, padding=1, asd="static")
        self.bn_b = nn.BatchNorm2d(5)

    def forward(self, x):
        return self.bn_b(self.conv_b(self.act(self.bn_a(self.pool(self.conv_a(x)))))).flatten(1)


def _block(cin, cmid, k, stride, pad, pool, asd, seed, boundary):
    torch.manual_seed(seed)
    m = Block(cin, cmid, k, stride, pad, pool, asd).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (m.conv_a.alpha, m.conv_b.alpha):
            p.copy_(torch.randn(p.shape, generator=g))
        if asd == "static":
            m.conv_a.beta.copy_(torch.randn(cin, generator=g))
        for bn in (m.bn_a, m.bn_b):
            c = bn.num_features
            bn.weight.copy_(torch.randn(c, generator=g))
            bn.weight[::3] *= -1
            bn.weight[1::4] = 0
            bn.bias.copy_(torch.randn(c, generator=g))
            bn.running_mean.copy_(torch.randn(c, generator=g) * 4)
            bn.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.2)
        if boundary:
            # exact arithmetic: BN(y) = 0.5*y - 0.5 - 0.5*y0 and s = sigmoid(0) = 0.5, so BN(y) + s == 0 at y = y0
            k_total = cin * k * k
            y0 = torch.randint(-k_total, k_total + 1, (cmid,), generator=g).float()
            y0 = y0 - (y0 - k_total) % 2  # reachable parity
            m.bn_a.eps = 0.0
            m.bn_a.running_var.fill_(1.0)
            m.bn_a.running_mean.zero_()
            m.bn_a.weight.copy_(torch.where(torch.arange(cmid) % 2 == 0, 0.5, -0.5))
            m.bn_a.bias.copy_(-0.5 - m.bn_a.weight * y0)
            m.conv_b.beta.zero_()
    return m


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cin=st.sampled_from([3, 17, 48, 80]), cmid=st.sampled_from([1, 7, 65]), k=st.sampled_from([1, 3, 5]),
       stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1, 2]), hw=st.sampled_from([(7, 9), (9, 5), (8, 11)]),
       pool=st.booleans(), asd=st.sampled_from(["static", "dynamic"]), boundary=st.booleans(),
       seed=st.integers(0, 10_000))
def test_folded_block_matches_pytorch_bit_for_bit(cin, cmid, k, stride, pad, hw, pool, asd, boundary, seed):
    h, w = hw
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    if oh < 2 or ow < 2:
        return  # the shape leaves nothing for the pool; hypothesis draws others
    m = _block(cin, cmid, k, stride, pad, pool, asd, seed, boundary)
    probe = np.random.default_rng(seed).standard_normal((3, cin, h, w)).astype(np.float32)
    result = convert(m, input_shape=(cin, h, w), probe=probe)
    layers = {r["name"]: r for r in result.report["layers"] if r["kind"] == "binary"}
    # the binary convs equal PyTorch's on the same inputs, and every deployed sign equals torch.sign
    # wherever torch.sign is not 0
    assert all(r["conv_mismatches"] == 0 for r in layers.values()), layers
    assert all(r["input_bit_mismatches"] == 0 for r in layers.values()), layers
    if asd == "static":
        assert result.graph.nodes_of("BinaryConv2d")[0].attrs["mode"] == "bits"
    if not boundary:
        assert layers["conv_b"]["input_ties"] == 0
        assert result.report["check"]["passed"], result.report["check"]["failure"]


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 300), a=st.floats(-4, 4, width=32), b=st.floats(-50, 50, width=32),
       s=st.floats(0.0078125, 0.9921875, width=32), lo=st.sampled_from([-1.0]), hi=st.sampled_from([1.0]))
def test_thresholds_reproduce_the_sign_table(k, a, b, s, lo, hi):
    """+1 iff (flipped ? -y : y) >= T holds at every reachable y, for any BN slope, including 0."""
    table = sign_table(np.float32([a]), np.float32([b]), lo, hi, np.float32([s]), k)
    t, flipped = thresholds_from_table(table, k)
    ys = np.arange(-k, k + 1)
    got = (np.where(flipped[0], -ys, ys) >= t[0])
    assert np.array_equal(got, table[0])
    assert flipped[0] == (a < 0 and not table[0].all() and table[0].any())


def test_sign_table_matches_torch_at_exact_boundaries():
    """At an exact zero of BN(y) + s torch.sign gives 0; the deployed rule gives -1 (documented)."""
    a, b, s = np.float32([0.5]), np.float32([-2.0]), np.float32([0.5])  # zero at y = 3
    table = sign_table(a, b, -1.0, 1.0, s, 5)
    ys = torch.arange(-5, 6, dtype=torch.float32)
    torch_sign = torch.sign(torch.clamp(0.5 * ys - 2.0, -1, 1) + 0.5).numpy()
    assert torch_sign[3 + 5] == 0 and not table[0][3 + 5]
    assert np.array_equal(table[0][torch_sign != 0], torch_sign[torch_sign != 0] > 0)


def test_ties_are_resolved_as_deployed_and_counted():
    """x + shift == 0 exactly: torch.sign gives 0, the deployment -1. The check runs PyTorch with those bits
    resolved as deployed, passes, counts them, and still reports the error without resolving them."""
    m = _block(17, 7, 3, 1, 1, False, "static", seed=3, boundary=True)
    probe = np.random.default_rng(3).standard_normal((3, 17, 9, 9)).astype(np.float32)
    report = convert(m, input_shape=(17, 9, 9), probe=probe).report
    check = report["check"]
    conv_b = next(r for r in report["layers"] if r["name"] == "conv_b")
    assert conv_b["input_ties"] > 0 and check["input_ties_resolved"] == conv_b["input_ties"]
    assert check["passed"], check["failure"]
    assert check["input_bit_mismatches"] == 0 and check["binary_layers_exact"]
    assert check["relative_logit_error"] <= 1e-4 < check["relative_logit_error_without_resolving_ties"]


@pytest.mark.parametrize("offset", [0.0, 1e-2])
def test_a_shift_off_by_more_than_rounding_fails_the_check(offset):
    """The tie band resolves rounding only: a deployed shift moved by 1e-2 (>> NEAR_TIE) makes bits differ."""
    m = _block(17, 7, 3, 1, 1, False, "static", seed=5, boundary=False)
    probe = np.random.default_rng(5).standard_normal((3, 17, 9, 9)).astype(np.float32)
    result = convert(m, input_shape=(17, 9, 9), probe=probe)
    g = result.graph
    pack = g.nodes_of("BinarizePack")[0]
    g.consts[pack.inputs[1]] = g.consts[pack.inputs[1]] + np.float32(offset)
    check = check_conversion(m, g, result.onnx_model, probe, 1e-4)
    assert check["passed"] == (offset == 0.0), check["failure"]
    if offset:
        conv_a = next(r for r in check["layers"] if r["name"] == "conv_a")
        assert conv_a["input_bit_mismatches"] > 0 and conv_a["input_near_ties"] == 0


@pytest.mark.parametrize("offset", [0.0, 2e-6])
def test_a_shift_moved_within_the_tie_band_fails_on_near_ties(offset):
    """Inputs within 1e-6 of conv_a's threshold and a deployed shift moved by 2e-6 (inside NEAR_TIE's band,
    so every differing bit is "resolved"): the near-tie count, not a mismatch, fails the check."""
    m = _block(17, 7, 3, 1, 1, False, "static", seed=5, boundary=False)
    probe = np.random.default_rng(5).standard_normal((3, 17, 9, 9)).astype(np.float32)
    shift = torch.sigmoid(m.conv_a.beta).detach().numpy()
    near = np.random.default_rng(1).uniform(-1e-6, 1e-6, probe[:, :, :4].shape).astype(np.float32)
    probe[:, :, :4] = -shift[None, :, None, None] + near
    result = convert(m, input_shape=(17, 9, 9), probe=probe)
    g = result.graph
    pack = g.nodes_of("BinarizePack")[0]
    g.consts[pack.inputs[1]] = g.consts[pack.inputs[1]] + np.float32(offset)
    check = check_conversion(m, g, result.onnx_model, probe, 1e-4)
    conv_a = next(r for r in check["layers"] if r["name"] == "conv_a")
    assert conv_a["input_bit_mismatches"] == 0
    assert check["passed"] == (offset == 0.0), check["failure"]
    if offset:
        assert conv_a["input_near_ties"] > 8 and "within rounding of the threshold" in check["failure"]
