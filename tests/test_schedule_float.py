"""schedule_float: the generic float-op schedules keep results exact and do parallelise/vectorise."""
import numpy as np
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.script import ir as I, relax as R

from sdbnn_deploy.tvm.schedule_float import relax_pipeline, schedule_float_primfunc


@I.ir_module
class Head:
    @R.function
    def main(x: R.Tensor((1, 64, 16, 16), "float32"), w: R.Tensor((16384, 10), "float32"),
             b: R.Tensor((10,), "float32")):
        with R.dataflow():
            y = R.clip(R.multiply(x, R.const(0.5, "float32")), -1.0, 1.0)
            z = R.add(R.matmul(R.reshape(y, (1, 16384)), w), b)
            R.output(z)
        return z


def _legalized(mod, target):
    with target:
        return tvm.transform.Sequential(cpu_pipeline.library_dispatch_passes(target)
                                        + cpu_pipeline.legalize_passes(target))(mod)


def test_scheduled_functions_are_parallel_or_vectorised():
    target = tvm.target.Target("llvm")
    mod = _legalized(Head, target)
    texts = [str(schedule_float_primfunc(f)) for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert texts and any("T.vectorized" in t for t in texts) and any("T.parallel" in t for t in texts)


def test_pipeline_result_equals_numpy():
    target = tvm.target.Target("llvm")
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype("float32") for s in [(1, 64, 16, 16), (16384, 10), (10,)])
    vm = relax.VirtualMachine(tvm.compile(Head, target=target, relax_pipeline=relax_pipeline(target)), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(a) for a in (x, w, b)]).numpy()
    expected = np.clip(x * 0.5, -1, 1).reshape(1, 16384) @ w + b
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


# ---- float convs (float_conv.py): register-tiled on x86, results equal to the plain loop nest -------------

import pytest  # noqa: E402
import torch  # noqa: E402

from sdbnn_deploy.tvm import float_conv  # noqa: E402

AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4"})
RPI4 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]})
# the float convs of our models: (Cin, H, W, Cout, kernel, stride, pad), batch 1 unless given
REAL_CONVS = {
    "resnet18 stem": (3, 32, 32, 64, 3, 1, 1),
    "resnet18 shortcut 64->128": (64, 32, 32, 128, 1, 2, 0),
    "resnet18 shortcut 256->512": (256, 8, 8, 512, 1, 2, 0),
    "bireal18 stem 7x7/2": (3, 224, 224, 64, 7, 2, 3),
    "bireal18 downsample 256->512": (256, 7, 7, 512, 1, 1, 0),
    "resnet20 stem, batch 2": (3, 16, 16, 16, 3, 1, 1, 2),
    "no plan (10 channels)": (8, 9, 9, 10, 3, 1, 1),
}


def _conv_module(shape, weight):
    cin, h, w, cout, k, stride, pad, *batch = shape
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch[0] if batch else 1, cin, h, w), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.conv2d(x, relax.const(weight), strides=stride, padding=pad))
        bb.emit_func_output(y)
    return bb.get()


def _run(mod, target, x):
    vm = relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target)), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


X86_LEVELS = {"avx512": AVX512, "avx2": tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"}),
              "sse": tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})}
CASES = [(name, "avx512") for name in REAL_CONVS] + [(name, level) for level in ("avx2", "sse") for name in
                                                      ("resnet18 stem", "resnet18 shortcut 64->128")]


@pytest.mark.parametrize("name, level", CASES)
def test_float_conv_equals_torch_and_the_plain_loop_nest(name, level, monkeypatch):
    shape, target = REAL_CONVS[name], X86_LEVELS[level]
    cin, h, w, cout, k, stride, pad, *batch = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch[0] if batch else 1, cin, h, w)).astype("float32")
    weight = rng.standard_normal((cout, cin, k, k)).astype("float32")
    got = _run(_conv_module(shape, weight), target, x)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(weight).double(),
                                          stride=stride, padding=pad).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    if cin * h * w <= 64 * 32 * 32:  # the same sums in the same order as TVM's loop nest: bit-identical
        monkeypatch.setattr("sdbnn_deploy.tvm.schedule_float.float_lanes", lambda target: None)
        monkeypatch.setattr(float_conv, "float_lanes", lambda target: None)
        assert np.array_equal(got, _run(_conv_module(shape, weight), target, x))


def _scheduled_conv_text(shape, target):
    weight = np.zeros(shape[3:4] + shape[0:1] + shape[4:5] * 2, "float32")
    with target:
        rewritten = float_conv.weights_to_hwio(target)(_conv_module(shape, weight))
        legalized = tvm.transform.Sequential(cpu_pipeline.legalize_passes(target))(rewritten)
        funcs = [f for f in legalized.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
        return str(rewritten), str(schedule_float_primfunc(funcs[0]))


@pytest.mark.parametrize("name, plan", [("resnet18 stem", "pixels"), ("resnet18 shortcut 64->128", "channels"),
                                        ("bireal18 stem 7x7/2", "channels")])
def test_float_conv_plans_on_x86(name, plan):
    module, scheduled = _scheduled_conv_text(REAL_CONVS[name], AVX512)
    assert ('kernel_layout="HWIO"' in module) == (plan == "channels")
    assert "T.vectorized" in scheduled and "T.parallel" in scheduled
    # the accumulator tile: a "pixels" one under STACK_BYTES ("global": the stack), a "channels" one "local"
    assert ('scope="local"' in scheduled) == (plan == "channels")
    assert ("conv2d_nchw_global = T.sblock_alloc_buffer" in scheduled) == (plan == "pixels")


def test_float_convs_untouched_on_aarch64():
    assert float_conv.float_lanes(RPI4) is None
    module, scheduled = _scheduled_conv_text(REAL_CONVS["resnet18 shortcut 64->128"], RPI4)
    assert 'kernel_layout="OIHW"' in module and 'scope="local"' not in scheduled


def test_float_lanes_per_x86_level():
    assert [float_conv.float_lanes(tvm.target.Target({"kind": "llvm", "mcpu": cpu}))
            for cpu in ("x86-64-v4", "x86-64-v3", "x86-64")] == [16, 8, 4]


def _mean_module(shape):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.mean(x, axis=[2, 3]))
        bb.emit_func_output(y)
    return bb.get()


@pytest.mark.parametrize("shape, in_lanes", [((2, 16, 16, 16), True), ((1, 64, 4, 4), False)])
def test_se_mean_is_vectorised_and_equals_numpy(shape, in_lanes, monkeypatch):
    """A long mean (>= 4 vectors per channel) is summed in vector lanes (rounding differs from the serial
    sum); a short one sums 8 channels side by side, each in the serial order (bit-identical)."""
    x = np.random.default_rng(2).standard_normal(shape).astype("float32")
    with AVX512:
        legalized = tvm.transform.Sequential(cpu_pipeline.legalize_passes(AVX512))(_mean_module(shape))
        func = next(f for f in legalized.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
        scheduled = str(schedule_float_primfunc(func))
    # the outputs (and rfactor's partial sums) accumulate in small caches: "global", so on the stack
    assert "x_red_global = T.sblock_alloc_buffer" in scheduled and 'scope="local"' not in scheduled
    assert ("_rf" in scheduled) == in_lanes
    got = _run(_mean_module(shape), AVX512, x)
    np.testing.assert_allclose(got, x.astype("float64").mean((2, 3)), rtol=1e-6, atol=1e-7)
    if not in_lanes:
        monkeypatch.setattr("sdbnn_deploy.tvm.schedule_float.float_lanes", lambda target: None)
        assert np.array_equal(got, _run(_mean_module(shape), AVX512, x))


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pooling_windows_side_by_side_equal_numpy(pool):
    shape = (1, 8, 32, 32)  # Bi-Real's 3x3/2 max-pool after the stem; its 2x2 average pools before downsampling
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = (relax.op.nn.max_pool2d(x, pool_size=3, strides=2, padding=1) if pool == "max"
                 else relax.op.nn.avg_pool2d(x, pool_size=2, strides=2))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    with AVX512:
        legalized = tvm.transform.Sequential(cpu_pipeline.legalize_passes(AVX512))(bb.get())
        func = next(f for f in legalized.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
        scheduled = str(schedule_float_primfunc(func))
    assert "_global = T.sblock_alloc_buffer" in scheduled and "T.vectorized" in scheduled  # a register tile
    data = np.random.default_rng(3).standard_normal(shape).astype("float32")
    got = _run(bb.get(), AVX512, data)
    if pool == "max":
        padded = np.pad(data, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        windows = [padded[:, :, i:i + 32:2, j:j + 32:2] for i in range(3) for j in range(3)]
        np.testing.assert_array_equal(got, np.max(windows, axis=0))
    else:
        np.testing.assert_allclose(got, data.reshape(1, 8, 16, 2, 16, 2).mean((3, 5)), rtol=1e-6, atol=1e-6)


def test_register_tiles_below_stack_bytes_are_global():
    """TVM puts a small "global" buffer on the stack (registers) and takes every "local" one from the
    workspace: register tiles under STACK_BYTES are "global"."""
    from sdbnn_deploy.tvm import STACK_BYTES, register_scope
    assert register_scope(4) == register_scope(STACK_BYTES - 1) == "global"
    assert register_scope(STACK_BYTES) == "local"
