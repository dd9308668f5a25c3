"""batchnorm_as_affine: inference BatchNorm as x * a + b with PyTorch's coefficients, fused into the conv
before it on x86 (BN, residual add and hardtanh in the conv's tile store or in one loop after it)."""
import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

from sdbnn_deploy.tvm.batchnorm_affine import batchnorm_as_affine
from sdbnn_deploy.tvm.float_conv import weights_to_hwio
from sdbnn_deploy.tvm.schedule_float import relax_pipeline, schedule_float_primfunc

AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4"})


def _conv_bn_residual(cin, cout, hw, stride, rng):
    """conv -> BN (negative and zero gammas among them) -> + residual -> hardtanh, and the torch result."""
    w = rng.standard_normal((cout, cin, 3 if stride == 1 else 1, 3 if stride == 1 else 1)).astype("float32")
    gamma, beta, mean = (rng.standard_normal(cout).astype("float32") for _ in range(3))
    gamma[::5] = 0
    var = rng.uniform(0.2, 2.0, cout).astype("float32")
    pad = 1 if stride == 1 else 0
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, cin, hw, hw), "float32"))
    out_hw = hw // stride
    r = relax.Var("r", relax.TensorType((1, cout, out_hw, out_hw), "float32"))
    with bb.function("main", [x, r]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=pad))
            bn = bb.emit(relax.op.nn.batch_norm(y, *(relax.const(v) for v in (gamma, beta, mean, var)), axis=1,
                                                training=False)[0])
            out = bb.emit_output(relax.op.clip(relax.op.add(bn, r), -1.0, 1.0))
        bb.emit_func_output(out)

    def torch_result(xv, rv):
        t = [torch.from_numpy(v) for v in (xv, w, gamma, beta, mean, var, rv)]
        y = torch.nn.functional.conv2d(t[0].double(), t[1].double(), stride=stride, padding=pad)
        bn = torch.nn.functional.batch_norm(y, t[4].double(), t[5].double(), t[2].double(), t[3].double())
        return torch.clamp(bn + t[6].double(), -1, 1).numpy()
    return bb.get(), torch_result


def test_batchnorm_becomes_multiply_add():
    mod, _ = _conv_bn_residual(3, 16, 8, 1, np.random.default_rng(0))
    text = str(batchnorm_as_affine()(mod)["main"])
    assert "batch_norm" not in text and "R.multiply" in text


@pytest.mark.parametrize("cin, cout, hw, stride", [(3, 64, 32, 1), (64, 128, 32, 2)])  # ResNet-18 stem, shortcut
def test_conv_bn_residual_hardtanh_equals_torch_and_is_one_loop_nest(cin, cout, hw, stride):
    rng = np.random.default_rng(1)
    mod, torch_result = _conv_bn_residual(cin, cout, hw, stride, rng)
    x = rng.standard_normal((1, cin, hw, hw)).astype("float32")
    r = rng.standard_normal((1, cout, hw // stride, hw // stride)).astype("float32")
    expected = torch_result(x, r)
    errors = {}
    for name, pipeline in (("ours", relax_pipeline(AVX512)), ("tvm", "default")):
        vm = relax.VirtualMachine(tvm.compile(mod, target=AVX512, relax_pipeline=pipeline), tvm.cpu())
        errors[name] = np.abs(vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(r)).numpy() - expected).max()
    assert errors["ours"] <= 1e-5 and errors["ours"] <= 1.25 * errors["tvm"], errors
    with AVX512:
        passes = [batchnorm_as_affine(), weights_to_hwio(AVX512)] + cpu_pipeline.legalize_passes(AVX512)
        legalized = tvm.transform.Sequential(passes)(mod)
        conv = next(f for f in legalized.functions.values() if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in str(f))
        scheduled = str(schedule_float_primfunc(conv))
    tile = 'scope="local"' in scheduled or "_global = T.sblock_alloc_buffer" in scheduled  # the register tile
    assert tile and not any(f'sblock("{b}")' in scheduled for b in ("T_add", "T_minimum"))
    # the 3x3 stem ("pixels" plan) computes them in its store; the 1x1/2 shortcut ("channels") in one loop
    assert ('sblock("T_multiply")' in scheduled) == (stride == 2)
