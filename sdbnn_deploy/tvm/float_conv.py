"""Register-tiled schedules for the float convs that stay float (stems, 1x1 shortcut/downsample convs) on x86.

TVM legalises a Relax conv2d to two blocks: `pad_temp` (the padded input) and `conv2d_nchw`, whose loop
nest (n, f, y, x, c, kh, kw) sums one output element at a time: a chain of dependent scalar FMAs (the
7x7/2 stem of Bi-Real-18 took 61 ms on one core). Two schedules replace it, chosen per conv shape by
conv_plan (figures: one Zen 5 core, AVX-512, the legalised conv alone, before -> after):

- "pixels": output pixels of a row in the vector lanes (two vectors), F output channels (one weight
  broadcast each; F = 8 with AVX-512, 4 otherwise) as a register tile; per tap two unaligned input loads
  feed 2*F FMAs. For stride-1 convs larger than 1x1 whose output rows fill two vectors (the 3x3 stems on
  32x32: ResNet-18 45 -> 19 us, VGG-Small 97 -> 37 us, ResNet-20 12 -> 5 us);
- "channels": output channels in the vector lanes, P output pixels of a row as a register tile; per tap
  one weight vector load feeds P FMAs whose input is a broadcast scalar, so any stride works. It needs the
  weights as HWIO (output channels contiguous): the Relax pass weights_to_hwio rewrites such convs before
  legalisation, and the constant weights are transposed once at compile time. For 1x1 and strided convs
  (ResNet-18 1x1/2 shortcuts 1.5-3.3 ms -> 27-43 us, Bi-Real-18 7x7/2 stem 61 -> 1.1 ms, its 1x1
  downsample convs 2-4.6 ms -> 60-90 us).

Both keep each output element's sum in the original order (c, kh, kw, starting from 0): the results are
bit-identical to the unscheduled loop nest. The accumulator tile lives in a buffer laid out with the
vector axis innermost, so that LLVM keeps it in registers; it is stored once per tile. The "pixels" tile
is kept under STACK_BYTES (4 channels x 2 vectors with AVX-512, not 8 x 2): TVM puts such a "global"
buffer on the stack but takes a larger or "local" one from the workspace at every iteration of the
parallel loop (VGG-Small stem + BN + hardtanh 37.6 -> 32.3 us, ResNet-18 stem 18.9 -> 16.3, one core; a
"channels" tile of half the vectors on the stack was slower than the full one from the workspace: ResNet-18
1x1/2 shortcut 30.7 -> 40.7 us, so it keeps its size). The
elementwise ops TVM fused after the conv (its BatchNorm as x * a + b, a residual add, hardtanh) are
computed by that store in the "pixels" plan (inline_elementwise_consumers: ResNet-18 stem conv + BN
35 -> 25 us), in one vectorised loop after the conv in the "channels" plan (_epilogue_loop). The outer
loops (output-channel blocks x rows) run in parallel. Applied on x86 targets only (float_lanes is None
elsewhere).
"""
import numpy as np
import tvm
from tvm import relax, s_tir
from tvm.relax.expr_functor import PyExprMutator, mutator

from sdbnn_deploy.tvm import STACK_BYTES, find_block, largest_divisor, register_scope
from sdbnn_deploy.tvm.relax_rewrite import mutator_pass

CONV_BLOCK = "conv2d_nchw"
PAD_BLOCK = "pad_temp"
MIN_PARALLEL_WORK = 1 << 14  # loop iterations below which threads cost more than they give
FLOAT_BYTES = 4


def float_lanes(target: tvm.target.Target | None) -> int | None:
    """float32 lanes of the target's widest vectors on x86 (16 AVX-512, 8 AVX2, 4 SSE); None elsewhere."""
    if target is None or target.kind.name != "llvm":
        return None
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith("x86_64"):
        return None
    mcpu = str(target.attrs.get("mcpu", "") or "")
    mattr = [str(a) for a in target.attrs.get("mattr", []) or []]
    if mcpu == "x86-64-v4" or "+avx512f" in mattr:
        return 16
    if mcpu == "x86-64-v3" or "+avx2" in mattr:
        return 8
    return 4


def accumulator_budget(lanes: int) -> int:
    """Accumulator vectors of one register tile: half the vector registers (32 zmm with AVX-512, else 16)."""
    return 16 if lanes == 16 else 8


def conv_plan(cout: int, kernel: tuple, stride_w: int, out_w: int, lanes: int) -> str | None:
    """'pixels', 'channels' or None (keep the generic schedule) for a conv of this shape; see the docstring."""
    if stride_w == 1 and kernel[0] * kernel[1] > 1 and out_w % (2 * lanes) == 0:
        return "pixels"
    if cout % lanes == 0:
        return "channels"
    return None


# ---- Relax: HWIO weights for the "channels" convs ------------------------------------------------------

def weights_to_hwio(target: tvm.target.Target) -> tvm.transform.Pass:
    """A module pass (before LegalizeOps): each NCHW/OIHW float32 conv2d with constant weights, groups 1 and
    conv_plan 'channels' gets its weights transposed to HWIO (kernel_layout="HWIO"); nothing elsewhere."""
    lanes = float_lanes(target)
    return mutator_pass("sdbnn.FloatConvWeightsToHWIO", lambda mod: _HwioRewriter(mod, lanes) if lanes else None)


@mutator
class _HwioRewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, lanes: int):
        super().__init__(mod)
        self.lanes = lanes
        self.conv2d = tvm.ir.Op.get("relax.nn.conv2d")

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call, relax.Call) and call.op.same_as(self.conv2d) and self._eligible(call)):
            return call
        a = call.attrs
        weight = call.args[1].value.numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
        return relax.op.nn.conv2d(call.args[0], relax.const(np.ascontiguousarray(weight)), strides=a.strides,
                                  padding=a.padding, dilation=a.dilation, groups=1, data_layout="NCHW",
                                  kernel_layout="HWIO", out_layout="NCHW")

    def _eligible(self, call: relax.Call) -> bool:
        a, (data, weight) = call.attrs, call.args
        if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW") or int(a.groups) != 1:
            return False
        if any(int(d) != 1 for d in a.dilation) or not isinstance(weight, tvm.ir.GenericConst):
            return False
        out = call.ty
        if str(weight.value.dtype) != "float32" or not isinstance(out, relax.TensorType) or out.shape is None:
            return False
        if str(out.dtype) not in ("float32", ""):
            return False
        try:
            out_w = int(out.shape[3])
        except TypeError:  # a symbolic width
            return False
        cout, _, kh, kw = weight.value.shape
        return conv_plan(cout, (kh, kw), int(a.strides[1]), out_w, self.lanes) == "channels"


# ---- TIR: the two register-tiled schedules -----------------------------------------------------------

def schedule_conv_function(func: tvm.tirx.PrimFunc, lanes: int) -> tvm.tirx.PrimFunc | None:
    """func with its conv2d_nchw block register-tiled (before any loop normalisation: the schedules rely on
    the legalised loop nest), or None where func has no such block or no plan applies."""
    sch = s_tir.Schedule(func)
    block = find_block(sch, CONV_BLOCK)
    if block is None:
        return None
    try:
        if is_float_conv(sch, block) and schedule_float_conv(sch, block, lanes):
            return sch.mod["main"]
    except (s_tir.ScheduleError, ValueError, RuntimeError):
        pass
    return None


def is_float_conv(sch: s_tir.Schedule, block) -> bool:
    """A legalised NCHW conv2d block: named conv2d_nchw, loops (n, f, y, x, c, kh, kw), float32."""
    stmt = sch.get(block)
    return (stmt.name_hint == CONV_BLOCK and len(stmt.iter_vars) == 7 and len(stmt.writes) == 1
            and str(stmt.writes[0].source.dtype) == "float32"
            and "".join("S" if iv.iter_type == 0 else "R" for iv in stmt.iter_vars) == "SSSSRRR")


def schedule_float_conv(sch: s_tir.Schedule, block, lanes: int) -> bool:
    """Schedule a conv2d_nchw block by its conv_plan; False (sch untouched) where no plan applies."""
    stmt = sch.get(block)
    _, cout, _, out_w, _, kh, kw = (int(iv.dom.extent) for iv in stmt.iter_vars)
    weight = next(r for r in stmt.reads if r.source.name != PAD_BLOCK)
    hwio = linear_coefficient(weight.region[3].min, stmt.iter_vars[1].var) == 1  # B[kh, kw, c, f], not B[f, c, kh, kw]
    stride_w = _stride_w(stmt)
    plan = conv_plan(cout, (kh, kw), stride_w, out_w, lanes) if stride_w else None
    budget = accumulator_budget(lanes)
    if plan == "channels" and hwio:
        pixels = largest_divisor(out_w, budget)
        vectors = largest_divisor(cout // lanes, max(1, budget // pixels))
        store = _register_tile(sch, block, lanes_axis="f", vectors=vectors, lanes=lanes, other=pixels)
    elif plan == "pixels" and not hwio:  # a tile under STACK_BYTES: on the stack, not from the workspace
        channels = largest_divisor(cout, min(budget // 2, (STACK_BYTES - 1) // (2 * lanes * FLOAT_BYTES)))
        store = _register_tile(sch, block, lanes_axis="x", vectors=2, lanes=lanes, other=channels)
    else:
        return False
    _inline_plain_padding(sch)
    if plan == "pixels":
        inline_elementwise_consumers(sch, store)
    else:
        _epilogue_loop(sch, store, lanes)
    return True


def _stride_w(stmt) -> int | None:
    """The x stride of the input access pad_temp[n, c, y*sh + kh, x*sw + kw] (None if not of that form)."""
    read = next((r for r in stmt.reads if r.source.name == PAD_BLOCK), None)
    if read is None:
        return None
    return linear_coefficient(read.region[3].min, stmt.iter_vars[3].var)


def linear_coefficient(expr, var) -> int | None:
    """The constant factor of `var` in a sum of variables times constants (None for any other form)."""
    if isinstance(expr, tvm.tirx.Var):
        return 1 if expr.same_as(var) else 0
    if isinstance(expr, tvm.tirx.IntImm):
        return 0
    if isinstance(expr, tvm.tirx.Add):
        a, b = linear_coefficient(expr.a, var), linear_coefficient(expr.b, var)
        return None if a is None or b is None else a + b
    if isinstance(expr, tvm.tirx.Mul):
        for const, other in ((expr.a, expr.b), (expr.b, expr.a)):
            if isinstance(const, tvm.tirx.IntImm):
                inner = linear_coefficient(other, var)
                return None if inner is None else int(const.value) * inner
    return None


def _register_tile(sch: s_tir.Schedule, block, lanes_axis: str, vectors: int, lanes: int, other: int):
    """Loop order (n, f_outer, y, x_outer, c, kh, kw, tile...) with the tile accumulated in registers;
    returns the block that stores the tile.

    lanes_axis "f": tile = (f_mid=vectors, x_inner=other, f_inner=lanes), f_inner vectorised;
    lanes_axis "x": tile = (f_inner=other, x_mid=vectors, x_inner=lanes), x_inner vectorised.
    """
    n, f, y, x, c, kh, kw = sch.get_loops(block)
    work = 1
    for loop in (n, f, y, x, c, kh, kw):
        work *= int(sch.get(loop).extent)
    if lanes_axis == "f":
        f_outer, f_mid, f_inner = sch.split(f, [None, vectors, lanes])
        x_outer, x_inner = sch.split(x, [None, other])
        sch.reorder(n, f_outer, y, x_outer, c, kh, kw, f_mid, x_inner, f_inner)
        sch.unroll(f_mid)
        sch.unroll(x_inner)
        sch.vectorize(f_inner)
    else:
        f_outer, f_inner = sch.split(f, [None, other])
        x_outer, x_mid, x_inner = sch.split(x, [None, vectors, lanes])
        sch.reorder(n, f_outer, y, x_outer, c, kh, kw, f_inner, x_mid, x_inner)
        sch.unroll(f_inner)
        sch.unroll(x_mid)
        sch.vectorize(x_inner)
    if work >= MIN_PARALLEL_WORK:
        sch.parallel(sch.fuse(f_outer, y))
    store = sch.cache_write(block, 0, register_scope(vectors * lanes * other * FLOAT_BYTES))
    sch.reverse_compute_at(store, x_outer)
    if lanes_axis == "f":  # the accumulators' vector axis innermost: (n, f, y, x) -> (n, y, x, f)
        sch.transform_layout(block, ("write", 0), lambda n_, f_, y_, x_: (n_, y_, x_, f_))
        sch.unroll(sch.get_loops(store)[-1])
    else:
        sch.vectorize(sch.get_loops(store)[-1])
    sch.decompose_reduction(block, c)
    return store


def inline_elementwise_consumers(sch: s_tir.Schedule, store) -> None:
    """The elementwise ops fused after a block (after a conv: its BN as x * a + b, a residual add,
    hardtanh) computed by that block (the "pixels" plan: the store of the accumulator tile, rows in the
    lanes as in NCHW), one by one while TVM allows it: no pass over the block's output."""
    while True:
        consumers = sch.get_consumers(store)
        if len(consumers) != 1:
            return
        try:
            sch.reverse_compute_inline(consumers[0])
        except s_tir.ScheduleError:
            return


def _epilogue_loop(sch: s_tir.Schedule, store, lanes: int) -> None:
    """The "channels" plan stores its tile with channels in the lanes, across the NCHW rows: there the
    elementwise ops after the conv become one loop of their own over the output (one block, the rows
    vectorised; not parallel: a second parallel region cost more than it gave, 1 thread) instead
    (ResNet-18 1x1/2 shortcut + BN + residual + hardtanh: inlined into the store 46 us, as this loop
    36 us, one core)."""
    consumers = sch.get_consumers(store)
    if len(consumers) != 1:
        return
    epilogue = consumers[0]
    inline_elementwise_consumers(sch, epilogue)
    row = sch.get_loops(epilogue)[-1]
    extent = int(sch.get(row).extent)
    if extent % lanes == 0 and extent > lanes:
        row = sch.split(row, [None, lanes])[1]
    if extent <= lanes or extent % lanes == 0:
        sch.vectorize(row)


def _inline_plain_padding(sch: s_tir.Schedule) -> None:
    """pad_temp without padding (a 1x1 conv's copy of its input) is inlined: the conv reads the input."""
    try:
        pad = sch.get_sblock(PAD_BLOCK)
    except (s_tir.ScheduleError, ValueError, RuntimeError):
        return
    value = sch.get(pad).body.value
    if isinstance(value, tvm.ir.expr.TensorLoad):
        sch.compute_inline(pad)
