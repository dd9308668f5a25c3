"""max_pool_before_cast: max-pool of a cast integer tensor pools the integers first, bit-identical."""
import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

from sdbnn_deploy.tvm.pool_before_cast import max_pool_before_cast
from sdbnn_deploy.tvm.schedule_float import relax_pipeline, schedule_float_primfunc

AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4"})


def _cast_then_pool(shape, padding=0, ceil_mode=False):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.astype(x, "float32"))
            out = bb.emit_output(relax.op.nn.max_pool2d(y, pool_size=2, strides=2, padding=padding,
                                                        ceil_mode=ceil_mode))
        bb.emit_func_output(out)
    return bb.get()


def test_pool_reads_the_integers_and_the_cast_follows():
    text = str(max_pool_before_cast()(_cast_then_pool((1, 512, 8, 8)))["main"])
    assert text.index("R.nn.max_pool2d") < text.index("R.astype") and text.count("R.astype") == 1


def test_padded_pool_is_left_alone():
    text = str(max_pool_before_cast()(_cast_then_pool((1, 8, 8, 8), padding=1))["main"])
    assert text.index("R.astype") < text.index("R.nn.max_pool2d")


def _scheduled(mod) -> str:
    with AVX512:
        legalized = tvm.transform.Sequential([max_pool_before_cast()] + cpu_pipeline.legalize_passes(AVX512))(mod)
        return "".join(str(schedule_float_primfunc(f)) for f in legalized.functions.values()
                       if isinstance(f, tvm.tirx.PrimFunc))


@pytest.mark.parametrize("shape, ceil_mode, in_rows", [((1, 512, 8, 8), False, True), ((2, 16, 7, 9), True, True),
                                                       ((1, 4, 80, 80), False, False)])
def test_compiled_result_equals_numpy_bit_for_bit(shape, ceil_mode, in_rows):
    """Values beyond 2**24 round when cast: max and the (monotone) cast still commute exactly. Rows of at
    most 4 vectors (not 80 int32) whose windows tile them (ceil_mode pads 9 to 10) are pooled as whole rows
    in the vector lanes."""
    assert ("_rf" in _scheduled(_cast_then_pool(shape, ceil_mode=ceil_mode))) == in_rows
    rng = np.random.default_rng(0)
    x = rng.integers(-2**31, 2**31 - 1, shape, dtype=np.int64).astype(np.int32)
    x.flat[::7] = 2**24 + 1  # ties after rounding
    vm = relax.VirtualMachine(tvm.compile(_cast_then_pool(shape, ceil_mode=ceil_mode), target=AVX512,
                                          relax_pipeline=relax_pipeline(AVX512)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    n, c, h, w = shape
    oh, ow = ((size - 1) // 2 + 1 if ceil_mode else size // 2 for size in (h, w))  # 2x2 windows, stride 2
    padded = np.full((n, c, 2 * oh, 2 * ow), -np.inf, np.float32)
    padded[:, :, :h, :w] = x.astype(np.float32)
    expected = padded.reshape(n, c, oh, 2, ow, 2).max((3, 5))
    assert got.dtype == np.float32 and np.array_equal(got, expected)


def test_head_pool_cast_bn_hardtanh_is_one_loop_and_exact():
    """VGG-Small's head: int32 -> cast -> 2x2 max-pool -> BN (x * a + b) -> hardtanh, all on one output row."""
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((2, 64, 1, 1)).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 64, 8, 8), "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            pooled = bb.emit(relax.op.nn.max_pool2d(bb.emit(relax.op.astype(x, "float32")), pool_size=2, strides=2))
            affine = relax.op.add(relax.op.multiply(pooled, relax.const(a)), relax.const(b))
            out = bb.emit_output(relax.op.clip(affine, -1.0, 1.0))
        bb.emit_func_output(out)
    scheduled = _scheduled(bb.get())
    assert "_rf" in scheduled and 'sblock("T_multiply")' not in scheduled and 'sblock("T_add")' not in scheduled
    data = rng.integers(-300, 300, (1, 64, 8, 8)).astype(np.int32)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=AVX512, relax_pipeline=relax_pipeline(AVX512)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(data)).numpy()
    pooled = data.astype(np.float32).reshape(1, 64, 4, 2, 4, 2).max((3, 5))
    np.testing.assert_allclose(got, np.clip(pooled * a + b, -1, 1), rtol=0, atol=1e-6)
