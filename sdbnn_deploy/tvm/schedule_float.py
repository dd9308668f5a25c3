"""Schedules for the standard float ops that TVM leaves unscheduled on CPU (convs, Gemm, BatchNorm, adds,
clips, pooling, means), and the Relax pipeline that applies them.

tvm.compile's "default" Relax pipeline for a CPU target legalises every op to a plain loop nest: one
thread, no vectors, no fusion (BatchNorm, then max, then min, each a pass over memory). relax_pipeline()
is TVM's CPU pipeline (dispatch, legalise, fold constants, fuse, lower, finalise) with Relax rewrites
before legalisation (max_pool_before_cast: an integer conv output is pooled before its cast, exact;
pool_channels_last: a channels-last one also before its transposition to NCHW, exact;
batchnorm_as_affine: BatchNorm as x * a + b; weights_to_hwio and matmul_weights_nk: weight layouts,
below) and one pass added after fusion: every PrimFunc that is not one of our kernels (those carry
OP_ATTR and are scheduled per target by schedule_x86 / schedule_arm) gets the generic schedule below.
Each block of such a function:

- elementwise blocks are inlined into elementwise consumers where TVM allows it (a fused chain such as
  BatchNorm -> max -> min becomes one loop nest); a producer of a reduction (the padding of a conv)
  stays its own block, since a condition inside the vectorised reduction would scalarise it;
- an elementwise block's innermost loop is split by the widest of 16, 8 or 4 that divides it and the
  inner part vectorised;
- a matrix product (one reduction axis) puts its output row below the reduction, accumulated in
  registers (_row_below_reduction); on x86 one with constant weights (the classifier) is summed in vector
  lanes instead (float_matmul.py: its weights kept (N, K) by matmul_weights_nk, a Relax pass before
  legalisation);
- on x86 a conv (a function with a conv2d_nchw block) gets a register-tiled schedule from float_conv.py
  instead (its weights made HWIO by weights_to_hwio, a Relax pass before legalisation, where its plan puts
  output channels in the vector lanes); a reduction of one input (pooling window, the SE block's mean)
  reduces several outputs side by side, a long mean in vector lanes (_plain_reduction);
- any other reduction keeps its loop order (LLVM vectorises the plain loop nest);
- the outer spatial loops (up to two, fused) run in parallel when the block does enough work.

It only reorders loops: every output element is computed by the same operations in the same order,
except a long mean and a constant-weight matmul on x86 (partial sums in vector lanes: rounding differs,
see _plain_reduction and float_matmul.py).
A block whose schedule TVM refuses is left as it was.
The first rewrite before legalisation, fuse_se_block, makes a dynamic-ASD conv's SE block one kernel and
lets it and the BinarizePack read the conv's output before its hardtanh (se_block.py); between FuseOps and
FuseTIR, merge_se_into_producer puts that kernel into the fused add and hardtanh that write its input,
whose sum sum_in_producer then computes inside the producer's loops; after the schedules,
merge_binarize_into_se puts each BinarizePack into the call of the kernel that computes its shift
(se_block.py).
"""
import tvm
from tvm import relax, s_tir
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.s_tir.dlight import normalize_prim_func

from sdbnn_deploy.tvm import OP_ATTR, register_scope
from sdbnn_deploy.tvm.se_block import (fuse_se_block, merge_binarize_into_se, merge_se_into_producer,
                                       sum_in_producer)
from sdbnn_deploy.tvm.batchnorm_affine import batchnorm_as_affine
from sdbnn_deploy.tvm.float_conv import (FLOAT_BYTES, MIN_PARALLEL_WORK, float_lanes, linear_coefficient,
                                         schedule_conv_function, weights_to_hwio)
from sdbnn_deploy.tvm.float_matmul import matmul_weights_nk, schedule_matmul_function
from sdbnn_deploy.tvm.pool_before_cast import max_pool_before_cast, schedule_integer_pool
from sdbnn_deploy.tvm.pool_channels_last import pool_channels_last, schedule_channels_last_pool

VECTOR_WIDTHS = (16, 8, 4)  # float32 lanes: zmm, ymm, xmm
ROWS_SIDE_BY_SIDE = 8  # outputs of a plain sum reduced together (8 measured faster than 16 on the SE means)


def relax_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's CPU Relax pipeline with ScheduleFloatOps after fusion (pass it to tvm.compile)."""

    @tvm.transform.module_pass(opt_level=0, name="sdbnn.CpuPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        passes = (cpu_pipeline.library_dispatch_passes(target) + [fuse_se_block()]
                  + [max_pool_before_cast(), pool_channels_last(), batchnorm_as_affine(), weights_to_hwio(target),
                     matmul_weights_nk(target)]
                  + _with_se_merge(cpu_pipeline.legalize_passes(target))
                  + [schedule_float_ops(), merge_binarize_into_se()] + cpu_pipeline.dataflow_lower_passes(target)
                  + _without_output_tuples() + cpu_pipeline.finalize_passes(target))
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def _without_output_tuples() -> list:
    """After CallTIRRewrite: a kernel with several outputs leaves a tuple of its output tensors that only
    TupleGetItems read; CanonicalizeBindings makes those read the tensors and DeadCodeElimination drops
    the tuple, which the VM would otherwise build at every call (make_tuple; ResNet-20 dynamic has 17:
    end to end, 1 thread, 0.0891 -> 0.0869 ms)."""
    return [relax.transform.CanonicalizeBindings(), relax.transform.DeadCodeElimination()]


def _with_se_merge(passes: list) -> list:
    """TVM's legalisation passes with merge_se_into_producer between FuseOps and FuseTIR."""
    at = next((i for i, p in enumerate(passes) if p.info.name == "FuseTIR"), None)
    if at is None:
        raise RuntimeError(f"TVM {tvm.__version__}'s legalisation passes have no FuseTIR: merge_se_into_producer "
                           "has no place (schedule_float._with_se_merge)")
    return passes[:at] + [merge_se_into_producer()] + passes[at:]


def schedule_float_ops() -> tvm.transform.Pass:
    """A module pass: schedule_float_primfunc on every PrimFunc without OP_ATTR."""

    @tvm.transform.module_pass(opt_level=0, name="sdbnn.ScheduleFloatOps")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
        for gvar, func in mod.functions.items():
            if isinstance(func, tvm.tirx.PrimFunc) and not (func.attrs is not None and OP_ATTR in func.attrs):
                out[gvar] = schedule_float_primfunc(func)
        return out

    return _pass


def schedule_float_primfunc(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """The generic schedule of the module docstring; func unchanged if TVM cannot normalise it."""
    lanes = float_lanes(tvm.target.Target.current(allow_none=True))
    for special in (schedule_conv_function, schedule_matmul_function, schedule_integer_pool,
                    schedule_channels_last_pool) if lanes else ():
        scheduled = special(func, lanes)
        if scheduled is not None:
            return scheduled
    sch = s_tir.Schedule(func)
    try:
        infos = normalize_prim_func(sch)
    except Exception:  # noqa: BLE001 - TVM raises several types on functions it cannot analyse
        return func
    if not infos:
        return func
    left = _inline_elementwise(sch, infos)
    done, sch = _se_sum_in_producer(sch, lanes)
    for info in left:
        if sch.get(info.block_rv).name_hint in done:
            continue
        trial = sch.copy()
        try:
            _schedule_block(trial, info, lanes)
        except (s_tir.ScheduleError, RuntimeError, ValueError):
            continue
        sch = trial
    return sch.mod["main"]


def _se_sum_in_producer(sch: s_tir.Schedule, lanes: int | None):
    """sum_in_producer (se_block.py) tried on a copy of sch: (the names of the blocks it scheduled, the
    schedule to go on with); nothing and sch where it does not apply or TVM refuses it."""
    trial = sch.copy()
    try:
        done = sum_in_producer(trial, lanes, MIN_PARALLEL_WORK) if lanes else set()
    except (s_tir.ScheduleError, RuntimeError, ValueError):
        return set(), sch
    return (done, trial) if done else (set(), sch)


def _inline_elementwise(sch: s_tir.Schedule, infos: list) -> list:
    """Inline each injective block whose consumers are all injective; return the blocks left."""
    injective = {sch.get(info.block_rv).name_hint for info in infos if info.is_injective()}
    left = []
    for info in infos:
        consumers = sch.get_consumers(info.block_rv)
        if (info.is_injective() and consumers
                and all(sch.get(c).name_hint in injective for c in consumers)):
            try:
                sch.compute_inline(info.block_rv)
                continue
            except s_tir.ScheduleError:
                pass
        left.append(info)
    return left


def _schedule_block(sch: s_tir.Schedule, info, lanes: int | None) -> None:
    spatial = [it for it in info.iters if it.kind == "S"]
    reduce = [it for it in info.iters if it.kind == "R"]
    if not spatial or len(spatial) + len(reduce) != len(info.iters):
        return
    if not all(isinstance(it.dom, int) for it in info.iters):
        return
    work = 1
    for it in info.iters:
        work *= it.dom
    outer = [it.loop_rv for it in spatial[:-1]]
    if not reduce:  # elementwise: vectorise the innermost loop
        inner = spatial[-1]
        width = next((v for v in VECTOR_WIDTHS if inner.dom % v == 0), None)
        if width:
            inner_outer, vector = sch.split(inner.loop_rv, [None, width])
            sch.vectorize(vector)
            outer.append(inner_outer)
    elif len(reduce) == 1:  # a matrix product: the output row below the reduction, in registers
        _row_below_reduction(sch, info, spatial[-1], reduce[0])
    elif lanes and len(sch.get(info.block_rv).reads) == 1 and spatial[-1].dom % ROWS_SIDE_BY_SIDE == 0:
        _plain_reduction(sch, info, spatial[-1], reduce, lanes)  # a mean or a pooling window
        return
    head = outer[:2]
    if head and work >= MIN_PARALLEL_WORK:
        sch.parallel(sch.fuse(*head) if len(head) > 1 else head[0])


def _row_below_reduction(sch: s_tir.Schedule, info, inner, reduction) -> None:
    """Gemm/MatMul (one reduction axis): loop order (..., k, j), j vectorised where it divides, the row
    of outputs accumulated in a local buffer and stored once (1x8192 @ 8192x10: 81 us -> 8 us)."""
    sch.reorder(reduction.loop_rv, inner.loop_rv)
    width = next((v for v in VECTOR_WIDTHS if inner.dom % v == 0), None)
    if width:
        sch.vectorize(sch.split(inner.loop_rv, [None, width])[1] if inner.dom > width else inner.loop_rv)
    store = sch.cache_write(info.block_rv, 0, register_scope(inner.dom * FLOAT_BYTES))
    above = _loop_above(sch, info.block_rv, reduction.loop_rv)
    if above is not None:
        sch.reverse_compute_at(store, above)
    sch.decompose_reduction(info.block_rv, reduction.loop_rv)


def _plain_reduction(sch: s_tir.Schedule, info, inner, reduce: list, lanes: int) -> None:
    """A reduction of one input (x86 only): a pooling window (its outputs run along the input's rows) gets
    ROWS_SIDE_BY_SIDE outputs as one vector below the window loops, the padding block inlined, each output
    reduced in its own order as before (Bi-Real's 3x3/2 max-pool 150 -> 75 us, one core). A sum over whole
    rows (the SE block's mean over H, W) of at least 4 vectors is summed in vector lanes: `lanes` partial sums
    per output (rfactor), then those added up, ROWS_SIDE_BY_SIDE outputs side by side (64x32x32 mean
    18 -> 2 us). That changes the order of the additions: the mean differs from the serial sum by rounding
    (about 1e-7 relative), as onnxruntime's does. Shorter sums: outputs side by side, unrolled."""
    block = info.block_rv
    if _moves_last_index(sch.get(block), info.iters.index(inner)):
        for producer in sch.get_producers(block):
            sch.compute_inline(producer)
        _side_by_side(sch, block, inner.loop_rv, [it.loop_rv for it in reduce], vector=True)
        return
    extent = 1
    for it in reduce:
        extent *= it.dom
    if extent % lanes or extent < 4 * lanes:
        _side_by_side(sch, block, inner.loop_rv, [it.loop_rv for it in reduce], vector=False)
        return
    _, lane = sch.split(sch.fuse(*[it.loop_rv for it in reduce]), [None, lanes])
    partial = sch.rfactor(lane, len(sch.get(block).writes[0].region))
    *_, row, steps, lane = sch.get_loops(partial)
    sch.vectorize(lane)
    store = sch.cache_write(partial, 0, register_scope(lanes * FLOAT_BYTES))
    sch.reverse_compute_at(store, row)
    sch.decompose_reduction(partial, steps)
    *_, row, lane = sch.get_loops(block)
    if int(sch.get(row).extent) % ROWS_SIDE_BY_SIDE == 0:
        _side_by_side(sch, block, row, [lane], vector=False)


def _side_by_side(sch: s_tir.Schedule, block, inner, reduce: list, vector: bool) -> None:
    """ROWS_SIDE_BY_SIDE outputs of `inner` reduced together below the reduction loops, in registers."""
    outer, rows = sch.split(inner, [None, ROWS_SIDE_BY_SIDE])
    sch.reorder(outer, *reduce, rows)
    if vector:
        sch.vectorize(rows)
    else:
        sch.unroll(rows)
    store = sch.cache_write(block, 0, register_scope(ROWS_SIDE_BY_SIDE * FLOAT_BYTES))
    sch.reverse_compute_at(store, outer)
    sch.decompose_reduction(block, reduce[0])


def _moves_last_index(block, position: int) -> bool:
    """Whether the block's iteration variable at `position` appears in the last index of its one read."""
    return linear_coefficient(block.reads[0].region[-1].min, block.iter_vars[position].var) not in (0, None)


def _loop_above(sch: s_tir.Schedule, block, loop):
    """The loop directly around `loop`, or None at the top."""
    loops = sch.get_loops(block)
    index = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop)))
    return loops[index - 1] if index else None
