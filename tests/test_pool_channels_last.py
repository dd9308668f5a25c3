"""Channels-last int convs on x86 (BinaryConv2d mode "int_nhwc") and pool_channels_last, which pools them
before their transposition to NCHW: both exact against numpy; where the rewrite applies and where not."""
import numpy as np
import pytest
import tvm
from tvm import relax, s_tir, te, tirx, topi

from sdbnn_deploy.bits import pack_signs
from sdbnn_deploy.ops import binary_conv2d
from sdbnn_deploy.targets import get_target
from sdbnn_deploy.tvm import kernels, pool_channels_last, schedule_x86
from sdbnn_deploy.tvm.schedule_float import schedule_float_primfunc
from test_tvm_kernels import HOST, build, placeholders, random_signs, run

TARGET = tvm.target.Target(get_target("x86").tvm_target)


# (Cin, Cout, k, stride, pad, H, W): VGG-Small's first int conv; Cout == OH == OW (the layouts have the same
# shape); Cout not a multiple of the lanes, odd sizes, stride 2.
@pytest.mark.parametrize("case", [(128, 128, 3, 1, 1, 32, 32), (64, 8, 3, 1, 1, 8, 8), (70, 13, 3, 2, 1, 9, 7)])
def test_int_nhwc_conv_is_the_int_conv_channels_last(case):
    cin, cout, k, stride, pad, h, w = case
    rng = np.random.default_rng(cin + cout)
    x = pack_signs(random_signs(rng, (1, h, w, cin)))
    wt = pack_signs(random_signs(rng, (cout, k, k, cin)))
    attrs = dict(in_channels=cin, strides=(stride, stride), pads=(pad, pad))
    lanes = schedule_x86.conv_lanes(get_target(HOST).params)
    arrays = [x, *kernels.prepare_conv_weights(wt, cin, (h, w), attrs["pads"], attrs["strides"], lanes)]
    tensors = placeholders(arrays, ["x", "weights", "correction"])
    output = kernels.binary_conv2d(*tensors, out_channels=cout, mode="int_nhwc", **attrs)
    want = binary_conv2d.reference(x, wt, mode="int", **attrs).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(run(build("BinaryConv2d", output, tensors, HOST), arrays, want), want)
    sch = s_tir.Schedule(te.create_prim_func(tensors + [output]))
    assert schedule_x86.conv_key(sch).endswith(":int_nhwc")


def _pool_bn_clip(channels: int, height: int, width: int, window: int, stride: int):
    """The PrimFunc of clip(a * float(pool_nchw(y)) + b), as the compile pipeline fuses it."""
    y = te.placeholder((1, height, width, channels), "int32", "y")
    a, b = (te.placeholder((1, channels, 1, 1), "float32", n) for n in "ab")
    pooled = topi.cast(pool_channels_last.pool_nchw(y, (window, window), (stride, stride)), "float32")
    out = topi.minimum(topi.maximum(topi.add(topi.multiply(pooled, a), b), tirx.const(-1.0, "float32")),
                       tirx.const(1.0, "float32"))
    return te.create_prim_func([y, a, b, out])


# (C, H, W, window, stride, our schedule): VGG-Small's pools; overlapping 3x3/2 windows over 9 x 11 (output
# rows of 5, tiles of 5 pixels); channels not a multiple of the lanes and output rows of 17 pixels (prime,
# no tile): the generic schedule.
@pytest.mark.parametrize("channels,height,width,window,stride,ours", [
    (128, 32, 32, 2, 2, True), (512, 8, 8, 2, 2, True), (32, 9, 11, 3, 2, True), (24, 6, 6, 2, 2, False),
    (32, 4, 34, 2, 2, False)])
def test_pool_nchw_scheduled_equals_numpy(channels, height, width, window, stride, ours):
    rng = np.random.default_rng(channels + width)
    y = rng.integers(-600, 600, (1, height, width, channels)).astype(np.int32)
    a = (rng.standard_normal((1, channels, 1, 1)) / 100).astype(np.float32)
    b = rng.standard_normal((1, channels, 1, 1)).astype(np.float32)
    func = _pool_bn_clip(channels, height, width, window, stride)
    assert (pool_channels_last.schedule_channels_last_pool(func, 16) is not None) == ours
    with TARGET:
        lib = tvm.compile(schedule_float_primfunc(func), target=TARGET)
    oh, ow = (height - window) // stride + 1, (width - window) // stride + 1
    windows = np.stack([y[:, r:r + stride * oh:stride, s:s + stride * ow:stride] for r in range(window)
                        for s in range(window)])
    pooled = windows.max(axis=0).transpose(0, 3, 1, 2).astype(np.float32)
    want = np.clip(pooled * a + b, -1, 1)
    got = tvm.runtime.empty(want.shape, "float32", tvm.cpu())
    lib(*[tvm.runtime.tensor(v) for v in (y, a, b)], got)
    # a * x + b: the float path, one rounding (a fused multiply-add) or two
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2.5e-7)


def _pool_of_transposed(dtype: str, axes, padding=(0, 0, 0, 0), shape=(1, 8, 8, 32), window=(2, 2),
                        strides=(2, 2)) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    y = relax.Var("y", relax.TensorType(shape, dtype))
    with bb.function("main", [y]):
        with bb.dataflow():
            t = bb.emit(relax.op.permute_dims(y, axes))
            out = bb.emit_output(relax.op.nn.max_pool2d(t, window, strides, padding))
        bb.emit_func_output(out)
    return bb.get()


def _rewritten(*args, **kwargs) -> tvm.IRModule:
    return pool_channels_last.pool_channels_last()(_pool_of_transposed(*args, **kwargs))


# (shape NHWC, window, strides, dtype): windows other than their strides, odd sizes, batch 2, narrow ints
@pytest.mark.parametrize("shape, window, strides, dtype", [
    ((2, 9, 11, 16), (3, 3), (2, 2), "int32"),
    ((1, 7, 8, 24), (2, 3), (1, 2), "int16"),
    ((1, 6, 6, 8), (3, 3), (1, 1), "uint8"),
])
def test_rewritten_module_equals_the_pool_of_the_transposition(shape, window, strides, dtype):
    """The rewritten Relax module, compiled, gives what TVM's own transpose + max_pool2d gives (and numpy):
    pool_size and strides reach pool_nchw in their places."""
    mod = _pool_of_transposed(dtype, [0, 3, 1, 2], shape=shape, window=window, strides=strides)
    rewritten = pool_channels_last.pool_channels_last()(mod)
    assert "pool_channels_last" in [str(g.name_hint) for g in rewritten.functions]
    info = np.iinfo(dtype)
    y = np.random.default_rng(5).integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    results = []
    for m in (mod, rewritten):
        vm = relax.VirtualMachine(tvm.compile(m, target=TARGET), tvm.cpu())
        results.append(vm["main"](tvm.runtime.tensor(y)).numpy())
    (kh, kw), (sh, sw) = window, strides
    oh, ow = (shape[1] - kh) // sh + 1, (shape[2] - kw) // sw + 1
    want = np.stack([y[:, r:r + sh * oh:sh, s:s + sw * ow:sw] for r in range(kh) for s in range(kw)]).max(0)
    np.testing.assert_array_equal(results[0], want.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(results[1], results[0])


def test_rewrites_the_pool_of_a_transposed_integer_tensor_only():
    def kernels_of(mod):
        return sorted(str(g.name_hint) for g, f in mod.functions.items() if isinstance(f, tirx.PrimFunc))

    assert kernels_of(_rewritten("int32", [0, 3, 1, 2])) == ["pool_channels_last"]
    assert kernels_of(_rewritten("float32", [0, 3, 1, 2])) == []  # floats (NaN ordering): not ours
    assert kernels_of(_rewritten("int32", [0, 3, 2, 1])) == []
    assert kernels_of(_rewritten("int32", [0, 3, 1, 2], padding=(1, 1, 1, 1))) == []
    assert kernels_of(_rewritten("int32", [0, 3, 1, 2], shape=(tirx.Var("n", "int64"), 8, 8, 32))) == []
