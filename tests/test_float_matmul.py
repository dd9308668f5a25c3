"""float_matmul: constant-weight matrix products summed in vector lanes on x86, equal to numpy within rounding."""
import numpy as np
import pytest
import tvm
from tvm import relax

from sdbnn_deploy.tvm.float_matmul import MATMUL_NT, matmul_weights_nk
from sdbnn_deploy.tvm.schedule_float import relax_pipeline

AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4"})
AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})
RPI4 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]})


def _linear(batch, k, n, transposed, seed=0):
    """x (batch, K) -> x @ W + b as the ONNX importer emits Gemm(transB=1) (permute_dims of the (N, K)
    weights) or MatMul (constant (K, N) weights); with the numpy arrays."""
    rng = np.random.default_rng(seed)
    w_nk, b = rng.standard_normal((n, k)).astype("float32"), rng.standard_normal(n).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, k), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = (bb.emit(relax.op.permute_dims(relax.const(w_nk), [1, 0])) if transposed
                 else relax.const(np.ascontiguousarray(w_nk.T)))
            out = bb.emit_output(relax.op.add(bb.emit(relax.op.matmul(x, w)), relax.const(b)))
        bb.emit_func_output(out)
    return bb.get(), w_nk, b


@pytest.mark.parametrize("batch, k, n, transposed, target", [
    (1, 8192, 10, True, AVX512),   # VGG-Small's classifier
    (1, 512, 10, True, AVX512),    # ResNet-18's
    (2, 512, 37, False, AVX512),   # MatMul, an output count that is prime (blocks of one output)
    (1, 8192, 10, True, AVX2),
    (1, 100, 10, True, AVX512),    # K not a multiple of the lanes: the generic schedule
])
def test_matmul_equals_numpy(batch, k, n, transposed, target):
    mod, w_nk, b = _linear(batch, k, n, transposed)
    x = np.random.default_rng(1).standard_normal((batch, k)).astype("float32")
    vm = relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    expected = x.astype(np.float64) @ w_nk.T.astype(np.float64) + b
    # the lanes' partial sums round differently from a serial sum: within 1e-5 of the sum of |terms|
    scale = np.abs(x).astype(np.float64) @ np.abs(w_nk.T) + np.abs(b)
    assert np.all(np.abs(got - expected) <= 1e-5 * scale)


def test_rewrite_keeps_the_weights_nk_on_x86_only():
    mod, w_nk, _ = _linear(1, 512, 10, transposed=True)
    with AVX512:
        rewritten = matmul_weights_nk(AVX512)(mod)
    funcs = {gv.name_hint: f for gv, f in rewritten.functions.items()}
    assert MATMUL_NT in funcs and "R.matmul" not in str(funcs["main"])
    call = next(b.value for b in rewritten["main"].body.blocks[0].bindings
                if isinstance(b.value.args[0], tvm.ir.GlobalVar) and b.value.args[0].name_hint == MATMUL_NT)
    assert np.array_equal(call.args[1][1].value.numpy(), w_nk)
    with RPI4:
        assert "R.matmul" in str(matmul_weights_nk(RPI4)(mod)["main"])


def test_matmul_of_two_inputs_is_left_alone():
    bb = relax.BlockBuilder()
    x, w = relax.Var("x", relax.TensorType((1, 64), "float32")), relax.Var("w", relax.TensorType((64, 10), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, w))
        bb.emit_func_output(out)
    with AVX512:
        assert "R.matmul" in str(matmul_weights_nk(AVX512)(bb.get())["main"])
