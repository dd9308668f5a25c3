"""The TVM kernels, scheduled for x86, against the numpy references of the custom ops.

Each case builds one kernel for one shape (about 0.1-0.3 s) and runs it on this host: only targets this
host's CPU can run are run; the AVX-512 build is always compiled and its assembly checked for vpopcntq.
"""
import numpy as np
import pytest
import tvm
from tvm import te

from conftest import thresholds_on_outputs
from sdbnn_deploy.bits import pack_signs, unpack_signs
from sdbnn_deploy.ops import binarize_pack, binary_conv2d, packed_max_pool2d
from sdbnn_deploy.targets import _cpu_flags, get_target, host_target_name
from sdbnn_deploy.tvm import OP_ATTR, kernels, schedule_module, schedule_primfunc
from sdbnn_deploy.tvm.relax_import import conv_constants

HOST = host_target_name()
HOST_FLAGS = _cpu_flags("/proc/cpuinfo")
RUNNABLE = {"x86-generic": True, "x86-avx2": {"avx2", "popcnt"} <= HOST_FLAGS,
            "x86-avx512": {"avx512f", "avx512_vpopcntdq"} <= HOST_FLAGS}


def build(op: str, output: te.Tensor, inputs, target: str):
    """Compile the compute `output` of `inputs` as the importer would: tagged, scheduled for the target."""
    spec = get_target(target)
    func = te.create_prim_func(list(inputs) + [output]).with_attr(OP_ATTR, op)
    func = schedule_primfunc(func, spec.schedule, spec.params)
    return tvm.compile(func, target=tvm.target.Target(spec.tvm_target))


def run(lib, arrays, like: np.ndarray) -> np.ndarray:
    out = tvm.runtime.empty(like.shape, str(like.dtype), tvm.cpu())
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays], out)
    return out.numpy()


def random_signs(rng, shape):
    return rng.choice(np.array([-1, 1], dtype=np.int8), size=shape)


def placeholders(arrays, names):
    return [te.placeholder(a.shape, str(a.dtype), name) for a, name in zip(arrays, names)]


# ---------------------------------------------------------------- BinaryConv2d
# (Cin, Cout, k, stride, pad, H, W, mode, N): every Cin of {3, 17, 48, 80, 130}, kernels 1/3/5, strides 1/2,
# padding 0/1/2, odd sizes, images smaller than the kernel plus padding (top and bottom borders overlap),
# Cout not a multiple of the vector width, several output words in "bits".
CONV_CASES = [
    (3, 5, 3, 1, 1, 7, 9, "int", 2),
    (17, 70, 3, 2, 1, 9, 7, "bits", 1),
    (48, 9, 1, 1, 0, 5, 5, "affine", 2),
    (80, 16, 5, 1, 2, 7, 7, "bits", 1),
    (130, 70, 5, 2, 2, 9, 11, "affine", 1),
    (130, 8, 1, 2, 1, 5, 7, "int", 1),
    (17, 130, 3, 1, 0, 5, 3, "bits", 2),
    (48, 24, 5, 2, 1, 11, 9, "int", 1),
    (80, 33, 3, 1, 2, 3, 5, "affine", 1),
    (3, 64, 5, 1, 2, 3, 3, "bits", 1),
    (64, 64, 3, 1, 1, 8, 8, "bits", 1),
]


def conv_case(rng, cin, cout, k, stride, pad, h, w, mode, n):
    """Packed inputs, weights and output-stage constants (conftest.thresholds_on_outputs for bits)."""
    x = pack_signs(random_signs(rng, (n, h, w, cin)))
    wt = pack_signs(random_signs(rng, (cout, k, k, cin)))
    attrs = dict(in_channels=cin, strides=(stride, stride), pads=(pad, pad))
    if mode == "int":
        extra = []
    elif mode == "affine":
        scale = rng.standard_normal(cout).astype(np.float32)
        scale[::4] = 0.0
        extra = [scale, rng.standard_normal(cout).astype(np.float32)]
    else:
        extra = [thresholds_on_outputs(x, wt, **attrs)]
    return x, wt, extra, attrs


def x86_conv(x, wt, extra, mode, lanes, in_channels, strides, pads):
    """(arrays, placeholders, output) of a conv with the output of `mode`, for "bits" as the importer emits
    it on x86 (relax_import.compute_mode): "bits_limits", the thresholds folded into the correction."""
    h, w = x.shape[1:3]
    thresholds = extra[0] if mode == "bits" else None
    blocked, correction, compute = conv_constants(kernels, wt, in_channels, (h, w), pads, strides, lanes, mode,
                                                  thresholds)
    compute = mode if compute == "int_nhwc" else compute  # (the NCHW int output the reference gives)
    if compute == "bits_limits":
        extra = []
    arrays = [x, blocked, correction] + list(extra)
    tensors = placeholders(arrays, ["x", "weights", "correction", "e0", "e1"])
    output = kernels.binary_conv2d(*tensors, in_channels=in_channels, out_channels=wt.shape[0], strides=strides,
                                   pads=pads, mode=compute)
    return arrays, tensors, output


def check_conv(case, target, seed=0):
    cin, cout, k, stride, pad, h, w, mode, n = case
    rng = np.random.default_rng(seed)
    x, wt, extra, attrs = conv_case(rng, *case)
    lanes = schedule_module(get_target(target).schedule).conv_lanes(get_target(target).params)
    arrays, tensors, output = x86_conv(x, wt, extra, mode, lanes, **attrs)
    lib = build("BinaryConv2d", output, tensors, target)
    want = binary_conv2d.reference(x, wt, *extra, mode=mode, **attrs)
    got = run(lib, arrays, want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    return lib


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"cin{c[0]}-cout{c[1]}-k{c[2]}-s{c[3]}-p{c[4]}-{c[7]}"
                                                   for c in CONV_CASES])
def test_binary_conv2d_host(case):
    check_conv(case, HOST)


@pytest.mark.parametrize("target", ["x86-avx2", "x86-generic"])
@pytest.mark.parametrize("case", [CONV_CASES[1], CONV_CASES[4], CONV_CASES[5]], ids=["bits", "affine", "int"])
def test_binary_conv2d_narrower_vectors(case, target):
    if not RUNNABLE[target]:
        pytest.fail(f"an x86-64 host that cannot run {target}?")
    check_conv(case, target, seed=1)


def test_x86_targets_params_reach_the_schedule():
    """The targets' [params] tables use the names schedule_x86 reads (an unknown name is an error)."""
    x86 = schedule_module("x86")
    assert [x86.conv_lanes(get_target(t).params) for t in ("x86-avx512", "x86-avx2", "x86-generic")] == [8, 4, 2]
    with pytest.raises(ValueError, match="unknown schedule parameters"):
        x86.conv_lanes({"vector_words": 4})


def test_affine_output_is_two_float32_roundings_not_a_fused_multiply_add():
    """y * scale + bias rounds twice, as the reference and onnxruntime do; an FMA differs in the last bit."""
    case = (130, 70, 5, 2, 2, 9, 11, "affine", 1)
    for seed in range(3):
        check_conv(case, HOST, seed=seed)


def test_avx512_build_uses_vpopcntq():
    """Compiled only: this host may lack AVX-512."""
    case = (64, 64, 3, 1, 1, 8, 8, "bits", 1)
    x, wt, extra, attrs = conv_case(np.random.default_rng(0), *case)
    blocked, correction = kernels.prepare_conv_weights(wt, 64, (8, 8), (1, 1), (1, 1), 8)
    tensors = placeholders([x, blocked, correction] + extra, ["x", "weights", "correction", "thresholds"])
    output = kernels.binary_conv2d(*tensors, out_channels=64, mode="bits", **attrs)
    asm = build("BinaryConv2d", output, tensors, "x86-avx512").mod.inspect_source("asm")
    assert "vpopcntq" in asm and "zmm" in asm


def test_correction_table_matches_zero_padding():
    """With all activations +1, y = (sum of all weights) - correction at every output position."""
    rng = np.random.default_rng(3)
    cin, cout, k, s, p, h, w = 17, 5, 3, 2, 2, 4, 7
    wt = pack_signs(random_signs(rng, (cout, k, k, cin)))
    x = pack_signs(np.ones((1, h, w, cin), dtype=np.int8))
    _, correction = kernels.prepare_conv_weights(wt, cin, (h, w), (p, p), (s, s), 1)
    y = binary_conv2d.reference(x, wt, in_channels=cin, strides=(s, s), pads=(p, p), mode="int")[0]
    weight_sum = unpack_signs(wt, cin).astype(np.int64).sum(axis=(1, 2, 3))
    _, top_h, bottom_h = kernels.border_bounds(h, k, s, p)
    _, top_w, bottom_w = kernels.border_bounds(w, k, s, p)
    for i in range(y.shape[1]):
        for j in range(y.shape[2]):
            rc = kernels.border_class(i, top_h, bottom_h)
            cc = kernels.border_class(j, top_w, bottom_w)
            np.testing.assert_array_equal(y[:, i, j], weight_sum - correction[rc, cc, :cout])


def test_folded_limits_give_the_bits_of_every_count():
    """count > limit exactly where y = taps - 2*count - correction < threshold, for every count of [0, taps],
    corrections of [-taps, taps] and thresholds up to int32's extremes; padded channels get limits too."""
    taps = 27
    rng = np.random.default_rng(5)
    correction = rng.integers(-taps, taps + 1, size=(3, 2, 16)).astype(np.int32)
    thresholds = np.concatenate([[np.iinfo(np.int32).min, np.iinfo(np.int32).max, -taps - 1, taps + 1],
                                 rng.integers(-taps - 3, taps + 4, size=9)]).astype(np.int32)
    limits = kernels.fold_thresholds(correction, thresholds, taps)
    assert limits.dtype == np.int32 and limits.shape == correction.shape
    assert limits.min() >= -1 and limits.max() <= taps
    counts = np.arange(taps + 1).reshape(-1, 1, 1, 1)
    y = taps - 2 * counts - correction[None, ..., :len(thresholds)].astype(np.int64)
    np.testing.assert_array_equal(counts > limits[None, ..., :len(thresholds)], y < thresholds)


def test_bits_limits_needs_lanes_that_divide_a_word():
    """Each block's bits are put in place as (block % (64 / lanes)) * lanes + lane."""
    x = te.placeholder((1, 4, 4, 1), "uint64", "x")
    weights = te.placeholder((3, 3, 3, 1, 3), "uint64", "weights")
    limits = te.placeholder((3, 3, 9), "int32", "limits")
    with pytest.raises(ValueError, match="lanes that divide 64"):
        kernels.binary_conv2d(x, weights, limits, in_channels=64, out_channels=9, strides=(1, 1), pads=(1, 1),
                              mode="bits_limits")


# ---------------------------------------------------------------- BinarizePack
@pytest.mark.parametrize("channels,h,w,per_sample", [(3, 5, 7, False), (64, 3, 3, True), (130, 3, 5, False),
                                                     (17, 1, 9, True)])
def test_binarize_pack(channels, h, w, per_sample):
    rng = np.random.default_rng(channels)
    n = 2
    x = rng.standard_normal((n, channels, h, w)).astype(np.float32)
    shift = rng.standard_normal((n, channels) if per_sample else (channels,)).astype(np.float32)
    # Ties: x + shift == 0 must give -1 (bit 1); also +0 and -0.
    x[0, :, 0, 0] = -(shift[0] if per_sample else shift)
    x[-1, 0, -1, -1] = -0.0
    tensors = placeholders([x, shift], ["x", "shift"])
    lib = build("BinarizePack", kernels.binarize_pack(*tensors), tensors, HOST)
    want = binarize_pack.reference(x, shift)
    np.testing.assert_array_equal(run(lib, [x, shift], want), want)


# ---------------------------------------------------------------- PackedMaxPool2d
@pytest.mark.parametrize("channels,h,w,k,s", [(17, 7, 5, 2, 2), (64, 6, 6, 3, 1), (130, 9, 7, 3, 2)])
def test_packed_max_pool2d(channels, h, w, k, s):
    rng = np.random.default_rng(channels)
    x = pack_signs(random_signs(rng, (2, h, w, channels)))
    mask = pack_signs(random_signs(rng, (channels,)))
    tensors = placeholders([x, mask], ["x", "min_mask"])
    lib = build("PackedMaxPool2d", kernels.packed_max_pool2d(*tensors, kernel_shape=(k, k), strides=(s, s)),
                tensors, HOST)
    want = packed_max_pool2d.reference(x, mask, channels=channels, kernel_shape=(k, k), strides=(s, s))
    np.testing.assert_array_equal(run(lib, [x, mask], want), want)
