"""The classifier's matrix product (Gemm / MatMul with constant weights) on x86: summed in vector lanes.

TVM legalises R.matmul(x, W) with W (K, N) to one block whose loop nest sums each output serially over k,
and for Gemm(transB=1) it first folds the transpose of the (N, K) weights into a constant (K, N): the
weights of one output are then N floats apart. With N = 10 (the Linear 8192 -> 10 of VGG-Small) the
generic schedule (output row below the reduction) is a chain of dependent scalar FMAs: 7.9 us.

Here the weights stay (N, K) (the Relax pass matmul_weights_nk, before legalisation, replaces such a
matmul by the compute MATMUL_NT, out[i, j] = sum_k x[i, k] * W[j, k]), and schedule_matmul_function sums
each output in `lanes` partial sums (rfactor over k mod lanes): per step of `lanes` k's, one vector load
of x feeds one vector FMA per output of a block of up to accumulator_budget outputs, whose partial sums
stay in registers; then each output adds up its lanes. 1x8192 @ 8192x10: 7.9 -> ~1.5 us (one core).

The order of the additions changes (lanes partial sums, then their sum, as onnxruntime's GEMM does): the
result differs from the serial sum by rounding, about 1e-7 relative. Applied on x86 targets only.
"""
import numpy as np
import tvm
from tvm import relax, s_tir, te
from tvm.relax.expr_functor import PyExprMutator, mutator

from sdbnn_deploy.tvm import find_block, largest_divisor
from sdbnn_deploy.tvm.float_conv import accumulator_budget, float_lanes
from sdbnn_deploy.tvm.relax_rewrite import mutator_pass

MATMUL_NT = "matmul_nt"  # the name of the compute's block and PrimFunc


def matmul_weights_nk(target: tvm.target.Target) -> tvm.transform.Pass:
    """A module pass (before LegalizeOps): each 2-D float32 R.matmul(x, W) with constant weights, given
    as W (K, N) or as permute_dims of a constant (N, K), becomes a call of MATMUL_NT on the (N, K) weights
    (x86 targets; nothing elsewhere)."""
    x86 = float_lanes(target) is not None
    return mutator_pass("sdbnn.MatmulWeightsNK", lambda mod: _MatmulRewriter(mod) if x86 else None)


def matmul_nt(x: te.Tensor, w: te.Tensor) -> te.Tensor:
    """out[i, j] = sum_k x[i, k] * w[j, k]."""
    k = te.reduce_axis((0, x.shape[1]), name="k")
    return te.compute((x.shape[0], w.shape[0]), lambda i, j: te.sum(x[i, k] * w[j, k], axis=k), name=MATMUL_NT)


@mutator
class _MatmulRewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.matmul = tvm.ir.Op.get("relax.matmul")
        self.permute_dims = tvm.ir.Op.get("relax.permute_dims")

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call, relax.Call) and call.op.same_as(self.matmul)):
            return call
        x, weights = call.args[0], self._weights_nk(call.args[1])
        if weights is None or not _is_2d_float32(x.ty) or str(call.ty.dtype) != "float32":
            return call
        return self.builder_.call_te(matmul_nt, x, relax.const(weights), primfunc_name_hint=MATMUL_NT)

    def _weights_nk(self, expr: relax.Expr) -> np.ndarray | None:
        """The (N, K) weights of a matmul's second operand, or None if it is not constant."""
        bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        if isinstance(bound, relax.Call) and bound.op.same_as(self.permute_dims):
            axes = bound.attrs.axes
            inner = bound.args[0]
            if isinstance(inner, tvm.ir.GenericConst) and _is_2d_float32(inner.ty) and (
                    axes is None or [int(a) for a in axes] == [1, 0]):
                return inner.value.numpy()
            return None
        if isinstance(expr, tvm.ir.GenericConst) and _is_2d_float32(expr.ty):
            return np.ascontiguousarray(expr.value.numpy().T)
        return None


def _is_2d_float32(ty) -> bool:
    return isinstance(ty, relax.TensorType) and ty.ndim == 2 and str(ty.dtype) == "float32" and ty.shape is not None


def schedule_matmul_function(func: tvm.tirx.PrimFunc, lanes: int) -> tvm.tirx.PrimFunc | None:
    """func with its MATMUL_NT block summed in vector lanes (module docstring), or None where it has no
    such block or K is not a multiple of `lanes`."""
    sch = s_tir.Schedule(func)
    block = find_block(sch, MATMUL_NT)
    if block is None:
        return None
    _, j, k = sch.get_loops(block)
    n, depth = int(sch.get(j).extent), int(sch.get(k).extent)
    if depth % lanes:
        return None
    outputs = largest_divisor(n, accumulator_budget(lanes))
    try:
        _lanes_partial_sums(sch, block, outputs, lanes)
    except (s_tir.ScheduleError, ValueError, RuntimeError):
        return None
    return sch.mod["main"]


def _lanes_partial_sums(sch: s_tir.Schedule, block, outputs: int, lanes: int) -> None:
    """Loop order (i, j_outer, k_steps, j_inner, lane): `outputs` x `lanes` partial sums in registers."""
    _, j, k = sch.get_loops(block)
    sch.split(j, [None, outputs])
    sch.split(k, [None, lanes])
    partial = sch.rfactor(sch.get_loops(block)[-1], 2)  # partial sums (M, N, lanes), the lanes innermost
    _, j_outer, j_inner, steps, lane = sch.get_loops(partial)
    sch.reorder(steps, j_inner, lane)
    sch.unroll(j_inner)
    sch.vectorize(lane)
    store = sch.cache_write(partial, 0, "local")
    sch.reverse_compute_at(store, j_outer)
    sch.decompose_reduction(partial, steps)
