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
