"""max_pool_before_cast: max-pool the integer outputs of a binary conv before they are cast to float.

VGG-Small's last binary conv feeds the classifier through Cast -> MaxPool -> BN -> hardtanh (PyTorch's
order: pool, then BN; the pool does not commute with a BN of negative gamma). Its int32 outputs are cast
to float (a pass over 512x8x8 values), then pooled. Any cast is monotone (rounding to the nearest float
never reverses an order), so max and cast commute exactly: max(float(a), float(b)) == float(max(a, b)).
This Relax pass (before legalisation) rewrites

    max_pool2d(astype(y, float))  =>  astype(max_pool2d(y), float)       y of an integer dtype, no padding

so the pool reads the integers and the cast, now over the pooled values only, fuses with the BN and clip
after it into one elementwise loop. Without padding every window holds real values, so the padding value
(-inf for floats, the dtype's minimum for integers) never matters. Results are bit-identical.

schedule_integer_pool (x86, from schedule_float's pass) then schedules that pool of short rows, which the
generic pooling schedule leaves one output at a time, with whole input rows in the vector lanes.
"""
import tvm
from tvm import relax, s_tir
from tvm.relax.expr_functor import PyExprMutator, mutator

from sdbnn_deploy.tvm import find_block
from sdbnn_deploy.tvm.float_conv import inline_elementwise_consumers, linear_coefficient
from sdbnn_deploy.tvm.relax_rewrite import mutator_pass


def max_pool_before_cast() -> tvm.transform.Pass:
    """A module pass: the rewrite of the module docstring on every Relax function."""
    return mutator_pass("sdbnn.MaxPoolBeforeCast", _PoolRewriter)


@mutator
class _PoolRewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.max_pool2d = tvm.ir.Op.get("relax.nn.max_pool2d")
        self.astype = tvm.ir.Op.get("relax.astype")

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call, relax.Call) and call.op.same_as(self.max_pool2d)):
            return call
        cast = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else None
        if not (isinstance(cast, relax.Call) and cast.op.same_as(self.astype) and _integer(cast.args[0].ty)):
            return call
        a = call.attrs
        if any(int(p) for p in a.padding):
            return call
        pooled = relax.op.nn.max_pool2d(cast.args[0], pool_size=a.pool_size, strides=a.strides, padding=a.padding,
                                        dilation=a.dilation, ceil_mode=a.ceil_mode,
                                        count_include_pad=a.count_include_pad, layout=a.layout,
                                        out_layout=a.out_layout)
        return relax.op.astype(self.builder_.emit(pooled), cast.attrs.dtype)


def _integer(ty) -> bool:
    return isinstance(ty, relax.TensorType) and str(ty.dtype).startswith(("int", "uint"))


# ---- TIR: the pool of the integers, whole input rows in vector lanes -----------------------------------

POOL_BLOCK = "pool_max"


def schedule_integer_pool(func: tvm.tirx.PrimFunc, lanes: int) -> tvm.tirx.PrimFunc | None:
    """func with its integer max-pool block reduced row by row in vectors, or None where it has no such
    block or the pool is not of the form below (then the generic schedule applies).

    Form: windows kh x kw with strides (kh, kw), no padding, output rows of ow * kw == the input's width,
    at most 4 * lanes values (VGG-Small's head: 2x2/2 over 512x8x8, rows of 8 int32). The window's column
    offset r1 is split off (rfactor): per output row, kh input rows are max-ed lane by lane as whole
    vectors (the input row is contiguous), then the kw columns of each window out of those registers; the
    cast and the BN and hardtanh after it are done on the same row. 8192 outputs: generic (one output at a time) 8 -> 1 us, one core.
    Max of integers does not depend on the order: bit-identical."""
    sch = s_tir.Schedule(func)
    pool = find_block(sch, POOL_BLOCK)
    if pool is None or not _whole_row_windows(sch.get(pool), lanes):
        return None
    try:
        _rows_in_vectors(sch, pool)
    except (s_tir.ScheduleError, ValueError, RuntimeError):
        return None
    return sch.mod["main"]


def _whole_row_windows(block, lanes: int) -> bool:
    """An integer NCHW pool (n, c, oh, ow, r0, r1) with strides == window and rows ow * kw == W <= 4*lanes."""
    if "".join("S" if iv.iter_type == 0 else "R" for iv in block.iter_vars) != "SSSSRR" or len(block.reads) != 1:
        return False
    if not str(block.writes[0].source.dtype).startswith(("int", "uint")):
        return False
    _, _, oh, ow, r0, r1 = block.iter_vars
    source, rows, cols = block.reads[0].source, block.reads[0].region[2].min, block.reads[0].region[3].min
    kh, kw, out_w = int(r0.dom.extent), int(r1.dom.extent), int(ow.dom.extent)
    return (linear_coefficient(rows, oh.var) == kh and linear_coefficient(rows, r0.var) == 1
            and linear_coefficient(cols, ow.var) == kw and linear_coefficient(cols, r1.var) == 1
            and int(source.shape[3]) == out_w * kw <= 4 * lanes)


def _rows_in_vectors(sch: s_tir.Schedule, pool) -> None:
    """rfactor over r1: partial[.., ow, r1] = max over r0 (vectorised over the row (ow, r1)), then the max
    over r1 with ow in lanes, and every consumer (the cast, with the elementwise ops after it) on the same
    output row; all in registers."""
    consumers = sch.get_consumers(pool)
    *_, r1 = sch.get_loops(pool)
    partial = sch.rfactor(r1, 4)
    _, _, oh, ow, r0, r1 = sch.get_loops(partial)
    sch.reorder(r0, ow, r1)
    sch.vectorize(sch.fuse(ow, r1))
    sch.decompose_reduction(partial, r0)
    sch.set_scope(partial, 0, "local")
    sch.reverse_compute_at(pool, oh)
    columns, out = sch.get_loops(pool)[-2:]
    sch.vectorize(out)
    sch.decompose_reduction(pool, columns)
    sch.set_scope(pool, 0, "local")
    for consumer in consumers:
        inline_elementwise_consumers(sch, consumer)  # the BN (x * a + b) and hardtanh after the cast
        sch.reverse_compute_at(consumer, oh)
        sch.vectorize(sch.get_loops(consumer)[-1])
