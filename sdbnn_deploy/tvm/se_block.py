"""fuse_se_block: a dynamic-ASD conv's squeeze-excitation block as one kernel, reading unclipped values.

The SE block of a dynamic-ASD binary conv (sdbnn-math.md) imports as five Relax ops,

    shift = sigmoid(matmul(relu(matmul(mean(v, axis=[2, 3]), W1)), W2))     W1, W2 constant,

each its own kernel call (the four after the mean run on a few hundred numbers: the calls cost more than
the work; ResNet-20 has 18 such blocks). And v is usually hardtanh(z) (ONNX Clip: minimum(maximum(z, lo),
hi)) of a binary conv's output z, written out only for the SE block and BinarizePack(v, shift). This
Relax pass (before legalisation) rewrites

    the five ops                  =>  se_shift(v, W1, W2): one kernel (one call), the same operations;
    with v = clip(z), z in memory =>  se_shift(z, W1, W2, clip): the clip inside the mean's sum;
    BinarizePack(clip(z), shift)  =>  BinarizePack(z, shift)                lo <= -1, hi > 0

where "z in memory" means z is the output of one of our kernels (a binary conv): with both rewrites the
clipped values are not written out at all (ResNet-18: eight passes fewer). Where z is a BatchNorm or an
add fused with the clip, nothing of the clip is rewritten (z would have to be written out instead).

se_shift computes what the five legalised ops compute: the clipped values summed in the same order, then
divided by H*W, each matmul a plain sum over its inner dimension, relu as max(x, 0), then sigmoid, its
exp a vectorised polynomial (topi.fast_exp, within 2e-7 relative; onnxruntime has its own approximation
too) instead of libm's expf called per value. The float rounding may differ from the separate kernels'
(those sum the matmuls in vector lanes), as any float schedule may: the shift is a float path, within
tolerance.

After FuseOps, merge_se_into_producer puts an se_shift whose input is the output of a fused group of
injective ops (ResNet's residual add and hardtanh) into that group: FuseTIR makes them one kernel that
returns (v, shift), and schedule_float's generic schedule calls sum_in_producer on it: each channel's
partial sums are added right after each vector of v is computed, so v is not read back. Measured, one
core, the merged kernel (add, hardtanh, SE) with the sum in the producer against the same kernel scheduled
block by block: 16x32x32 1.06 against 1.61 us, 64x32x32 3.9 against 6.1, 128x16x16 1.84 against 3.0,
256x8x8 1.67 against 2.3, 512x4x4 2.28 against 2.52; end to end (interleaved rounds, medians) ResNet-20
dynamic 0.0981 -> 0.0947 ms (static 0.0857), ResNet-18 dynamic 0.4198 -> 0.4166 ms (static 0.3730).

After the schedules, merge_binarize_into_se puts each BinarizePack into the call of the kernel that
computes its shift (se_shift, or the producer with it), the two scheduled bodies one after the other
(FuseTIR): the same code in one call, no (N, C) shift tensor between calls. End to end, 1 thread,
interleaved rounds: ResNet-20 dynamic -4.2% (0.1020 -> 0.0978 ms), VGG-Small dynamic -1.5%, ResNet-18
dynamic -0.2%; the logits are exactly those without it. A merged kernel with two outputs (v and the bits)
would make the VM build a tuple of them at every call: schedule_float's relax_pipeline drops those
(_without_output_tuples).

All of it together (the same tree with and without these passes, sum_in_producer, register_scope and
float_conv's stem tile; 1 thread, 11 interleaved rounds): dynamic against static ResNet-20 +12.9% -> +1.5%,
ResNet-18 +14.1% -> +10.6%, VGG-Small +11.7% -> +11.8% (its static twin gained as much from float_conv's
stem tile).

Unclipped BinarizePack is bit-identical: the bit of clip(z) + s > 0 equals the bit of z + s > 0 for every
s in [0, 1] (a float32 sigmoid is 1 / (1 + exp(-x)) with exp(-x) >= 0): lo <= z <= hi is the same
operation on the same values; z > hi gives hi + s > 0 and z + s > 0 (exact sums of the same sign, and
rounding never turns a nonzero sum into zero); z < lo gives lo + s <= 0 and z + s < 0; a NaN z or s gives
not > 0 on both sides.
"""
import tvm
from tvm import relax, s_tir, te, tirx, topi
from tvm.relax.expr_functor import PyExprMutator, mutator

from sdbnn_deploy.tvm import OP_ATTR, find_block, largest_divisor
from sdbnn_deploy.tvm.relax_rewrite import mutator_pass

SE_ATTR = "sdbnn.se_shift"  # marks the PrimFuncs this pass makes with se_shift
SUM_BLOCK = "se_sum"


def fuse_se_block() -> tvm.transform.Pass:
    """A module pass: the rewrites of the module docstring on every Relax function (constants folded
    first, so that the clip's bounds and the SE weights are constants)."""
    return tvm.transform.Sequential([relax.transform.FoldConstant(), mutator_pass("sdbnn.FuseSEBlock", _Rewriter)],
                                    name="sdbnn.FuseSEBlock")


def se_shift(v: te.Tensor, w1: te.Tensor, w2: te.Tensor, clip=None) -> te.Tensor:
    """sigmoid(relu(mean(clip(v), axis=[2, 3]) @ w1) @ w2) of NCHW v, (C, M) w1 and (M, C) w2, as the
    legalised ops compute it; clip = (lo, hi) or None."""
    n, c, h, w = v.shape
    r = te.reduce_axis((0, h), name="r")
    s = te.reduce_axis((0, w), name="s")

    def value(i, j):
        x = v[i, j, r, s]
        if clip is None:
            return x
        return tirx.min(tirx.max(x, tirx.const(clip[0], "float32")), tirx.const(clip[1], "float32"))

    total = te.compute((n, c), lambda i, j: te.sum(value(i, j), axis=[r, s]), name=SUM_BLOCK)
    mean = topi.divide(total, tirx.const(float(int(h) * int(w)), "float32"))
    hidden = topi.nn.relu(topi.matmul(mean, w1))
    return _sigmoid(topi.matmul(hidden, w2))


def _sigmoid(x: te.Tensor) -> te.Tensor:
    """1 / (1 + exp(-x)) with TVM's vectorised exp (topi.fast_exp): on x86 the sigmoid's exp is otherwise
    one libm expf call per value (SE blocks of 512 channels: 1.5 of their 2.6 us). Measured over
    [-20, 20]: within 2e-7 relative of the exact sigmoid (libm's: 1.4e-7); exp >= 0, so it stays in [0, 1]."""
    one = tirx.const(1.0, "float32")
    e = topi.fast_exp(te.compute(x.shape, lambda *i: -x(*i), name="se_negate"))
    return te.compute(x.shape, lambda *i: one / (one + e(*i)), name="se_sigmoid")


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod = mod
        self.ops = {name: tvm.ir.Op.get(f"relax.{name}") for name in ("call_tir", "sigmoid", "matmul", "nn.relu",
                                                                         "mean")}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if self._is_call(call, "sigmoid"):
            return self._se_block(call)
        if _kernel_op(self.mod, call) == "BinarizePack":
            return self._binarize_pack(call)
        return call

    def _se_block(self, sigmoid: relax.Call) -> relax.Expr:
        """se_shift for sigmoid(matmul(relu(matmul(mean(v), W1)), W2)) with constant 2-D weights."""
        fc2 = self._bound_call(sigmoid.args[0], "matmul")
        relu = self._bound_call(fc2.args[0], "nn.relu") if fc2 is not None else None
        fc1 = self._bound_call(relu.args[0], "matmul") if relu is not None else None
        mean = self._bound_call(fc1.args[0], "mean") if fc1 is not None else None
        if mean is None or not all(isinstance(m.args[1], tvm.ir.GenericConst) for m in (fc1, fc2)):
            return sigmoid
        v = mean.args[0]
        if ([int(a) for a in mean.attrs.axis] != [2, 3] or mean.attrs.keepdims or len(v.ty.shape) != 4
                or str(v.ty.dtype) != "float32"):
            return sigmoid
        clip = self._clip(v)
        z, bounds = (clip[0], clip[1:]) if clip is not None else (v, None)
        return self.builder_.call_te(se_shift, z, fc1.args[1], fc2.args[1], bounds, primfunc_name_hint="se_shift",
                                     primfunc_attrs={SE_ATTR: 1})

    def _binarize_pack(self, call: relax.Call) -> relax.Expr:
        values, shift = call.args[1].fields
        clip = self._clip(values)
        if clip is None or not self._is_shift(shift):
            return call
        return relax.Call(call.op, [call.args[0], relax.Tuple([clip[0], shift]), *call.args[2:]], call.attrs,
                          call.ty_args)

    def _is_shift(self, shift: relax.Expr) -> bool:
        """Whether shift is a sigmoid, or an se_shift (which ends in one)."""
        bound = self._bound(shift)
        if self._is_call(bound, "sigmoid"):
            return True
        if not self._is_call(bound, "call_tir"):
            return False
        func = self.builder_.get().functions.get(bound.args[0])  # made by this pass: not in self.mod
        return func is not None and func.attrs is not None and SE_ATTR in func.attrs

    def _clip(self, values: relax.Expr):
        """(z, lo, hi) where values = minimum(maximum(z, lo), hi), float32, with constants lo <= -1,
        hi > 0 and z the output of one of our kernels; else None."""
        upper = self._elementwise(self._bound(values), tirx.Min)
        lower = self._elementwise(self._bound(upper[0]), tirx.Max) if upper is not None else None
        if upper is None or lower is None or not (upper[1] > 0 and lower[1] <= -1):
            return None
        z = lower[0]
        if _kernel_op(self.mod, self._bound(z)) is None or str(z.ty.dtype) != "float32":
            return None
        return z, lower[1], upper[1]

    def _elementwise(self, call, kind):
        """(x, bound) where call is call_tir of a PrimFunc whose one store is kind(x[...], bound[()]) and
        bound is a one-element constant; else None."""
        if not self._is_call(call, "call_tir"):
            return None
        args = call.args[1].fields
        if len(args) != 2 or not isinstance(args[1], tvm.ir.GenericConst) or args[1].value.numpy().size != 1:
            return None
        if not isinstance(_store_value(self._primfunc(call)), kind):
            return None
        return args[0], float(args[1].value.numpy().reshape(-1)[0])

    def _primfunc(self, call: relax.Call):
        """The PrimFunc of a call_tir in the module as it came in (None for one this pass made)."""
        return self.mod.functions.get(call.args[0])

    def _bound(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None

    def _bound_call(self, expr, op: str):
        """The call of op that expr (a variable) is bound to, else None."""
        bound = self._bound(expr)
        return bound if self._is_call(bound, op) else None

    def _is_call(self, expr, op: str) -> bool:
        return isinstance(expr, relax.Call) and expr.op.same_as(self.ops[op])


def _store_value(func: tirx.PrimFunc | None):
    """The value stored by a PrimFunc made of one loop nest around one block with one store, else None."""
    node = func.body if func is not None else None
    while not isinstance(node, tirx.BufferStore):
        if isinstance(node, s_tir.SBlockRealize):
            node = node.block
        elif isinstance(node, (s_tir.SBlock, tirx.For)):
            node = node.body
        else:
            return None
    return node.value


# ---- after FuseOps: the SE block in its producer's kernel ---------------------------------------------

INJECTIVE = 2  # TVM's op patterns 0-2: elementwise, broadcast, injective (AnnotateTIROpPattern)


def merge_se_into_producer() -> tvm.transform.Pass:
    """A module pass between FuseOps and FuseTIR: se_shift(v, W1, W2), where v is the output of a fused
    group of injective ops (ResNet's residual add and hardtanh), joins that group, which returns
    (v, shift); FuseTIR then makes the two one kernel. ResNet-20 has 18 SE blocks: 18 calls fewer (each
    call costs the VM about 0.27 us, one core, more than the smaller SE blocks' work)."""

    return mutator_pass("sdbnn.MergeSEIntoProducer", lambda mod: _Merger(mod, _in_every_function(mod, _merges)))


def _in_every_function(mod: tvm.IRModule, find) -> dict:
    """find(mod, func) over the module's Relax functions but FuseOps' groups, in one dict (each binding's
    variable is one function's)."""
    found = {}
    for func in mod.functions.values():
        if isinstance(func, relax.Function) and not (func.attrs and "Primitive" in func.attrs):
            found.update(find(mod, func))
    return found


def _merges(mod: tvm.IRModule, func: relax.Function) -> dict:
    """{producer binding's variable: the se_shift binding that reads it} for the mergeable pairs of func."""
    producers, pairs = {}, {}
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and _injective_group(mod, value.op):
                producers[binding.var] = binding
            elif _is_se_shift(mod, value) and value.args[1].fields[0] in producers:
                pairs.setdefault(value.args[1].fields[0], []).append(binding)
    return {v: se[0] for v, se in pairs.items() if len(se) == 1}


def _injective_group(mod: tvm.IRModule, op) -> bool:
    """Whether op names a Relax function that FuseOps made (Primitive) of call_tirs of injective PrimFuncs
    that are not our kernels."""
    func = mod.functions.get(op) if isinstance(op, tvm.ir.GlobalVar) else None
    if not (isinstance(func, relax.Function) and func.attrs and "Primitive" in func.attrs):
        return False
    for call in [b.value for block in func.body.blocks for b in block.bindings]:
        prim = _called(mod, call)
        if prim is None:
            return False
        attrs = prim.attrs if prim.attrs is not None else {}
        if OP_ATTR in attrs or "op_pattern" not in attrs or int(attrs["op_pattern"]) > INJECTIVE:
            return False
    return True


def _is_se_shift(mod: tvm.IRModule, value) -> bool:
    prim = _called(mod, value)
    return prim is not None and prim.attrs is not None and SE_ATTR in prim.attrs


@mutator
class _Merger(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, merges: dict):
        super().__init__(mod)
        self.mod, self.merges, self.shifts = mod, merges, {}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.merges:
            se = self.merges[binding.var]
            group = self._group(binding.value.op, se.value)
            weights = [self.visit_expr(w) for w in se.value.args[1].fields[1:]]
            both = self.builder_.emit(relax.Call(group, [self.visit_expr(a) for a in binding.value.args] + weights))
            self.set_var_remap(binding.var, self.builder_.emit(relax.TupleGetItem(both, 0)))
            self.shifts[se.var] = relax.TupleGetItem(both, 1)
        elif binding.var in self.shifts:
            self.set_var_remap(binding.var, self.builder_.emit(self.shifts.pop(binding.var)))
        else:
            super().visit_var_binding_(binding)

    def _group(self, producer: tvm.ir.GlobalVar, se_call: relax.Call) -> tvm.ir.GlobalVar:
        """A Primitive function: the producer group's bindings, then se_shift on its output; (v, shift)."""
        func = relax.utils.copy_with_new_vars(self.mod[producer])
        weights = [relax.Var(f"se_w{i}", w.ty) for i, w in enumerate(se_call.args[1].fields[1:])]
        bb = relax.BlockBuilder()
        name = f"{producer.name_hint}_{se_call.args[0].name_hint}"
        with bb.function(name, list(func.params) + weights, {"Primitive": True}, private=True):
            with bb.dataflow():
                for block in func.body.blocks:
                    for binding in block.bindings:
                        bb.emit_normalized(binding)
                v = func.body.body
                shift = bb.emit(relax.call_tir(se_call.args[0], [v] + weights, se_call.ty))
                out = bb.emit_output(relax.Tuple([v, shift]))
            bb.emit_func_output(out)
        return self.builder_.add_func(bb.get()[name], name)


def sum_in_producer(sch: s_tir.Schedule, lanes: int, min_parallel_work: int) -> set:
    """Schedule se_sum inside the loops of the one block that writes its input v (the producer's
    elementwise ops inlined into it, as after merge_se_into_producer): per channel, each vector of v is
    added into `vec` partial sums right after it is computed, then those are added up; v is not read back.
    The names of the blocks scheduled, or an empty set where the form does not fit (then the generic
    schedule applies). With vec == lanes, and where the generic schedule sums se_shift's mean in vector
    lanes too (channels a multiple of schedule_float.ROWS_SIDE_BY_SIDE, planes of at least 4 x lanes
    values), the additions are those of the generic schedule in the same order (_plain_reduction: lane l
    sums positions l, l + lanes, ... of the plane); elsewhere they differ in order (a float path, within
    its tolerance).

    The partial sums stay in a buffer of the whole function, not a 'local' one: inside the parallel
    channel loop TVM takes a local buffer from the workspace at every channel (256x8x8, one core: 5.6 us
    against 1.7 with the function's buffer)."""
    total = find_block(sch, SUM_BLOCK)
    producers = sch.get_producers(total) if total is not None else []
    if len(producers) != 1 or not _plane_by_plane(sch.get(producers[0]), sch.get(total)):
        return set()
    out = producers[0]
    *planes, h, w = sch.get_loops(out)
    vec = largest_divisor(int(sch.get(w).extent), lanes)
    if vec < 4:
        return set()
    work = 1
    for loop in sch.get_loops(out):
        work *= int(sch.get(loop).extent)
    channel = sch.fuse(*planes) if len(planes) > 1 else planes[0]
    steps, vector = sch.split(w, [None, vec])
    sch.vectorize(vector)
    *_, columns = sch.get_loops(total)
    partial = sch.rfactor(sch.split(columns, [None, vec])[1], 2)
    sch.reverse_compute_at(partial, steps)
    sch.vectorize(sch.get_loops(partial)[-1])
    sch.reverse_compute_at(total, channel)
    if work >= min_parallel_work:
        sch.parallel(channel)  # before the init is split off: TVM checks the blocks under it are reductions
    sch.decompose_reduction(partial, h)
    return {sch.get(out).name_hint, SUM_BLOCK}


def _plane_by_plane(out: s_tir.SBlock, total: s_tir.SBlock) -> bool:
    """out (spatial iterators only) writes v at [..., h, w] and total sums v[..., r, s] over its two
    reduction iterators r, s, the leading indices equal (the same constant, or a spatial iterator of each):
    the sum of a channel reads exactly what out writes along its last two loops (unit loops, such as batch
    1, are gone after normalisation; at least one loop must be left above those two)."""
    kinds = "".join("S" if iv.iter_type == 0 else "R" for iv in total.iter_vars)
    if (len(out.writes) != 1 or len(total.reads) != 1 or len(out.iter_vars) < 3
            or any(iv.iter_type != 0 for iv in out.iter_vars) or not kinds.endswith("SRR") or "R" in kinds[:-2]):
        return False
    write, read = out.writes[0], total.reads[0]
    if not write.source.same_as(read.source) or any(int(r.extent) != 1 for r in (*write.region, *read.region)):
        return False
    w_idx, r_idx = [r.min for r in write.region], [r.min for r in read.region]
    out_vars, sum_vars = [iv.var for iv in out.iter_vars], [iv.var for iv in total.iter_vars]
    if not (all(a.same_as(b) for a, b in zip(w_idx[-2:], out_vars[-2:]))
            and all(a.same_as(b) for a, b in zip(r_idx[-2:], sum_vars[-2:]))):
        return False
    return all(_same_leading(a, b, out_vars, sum_vars) for a, b in zip(w_idx[:-2], r_idx[:-2]))


def _same_leading(a, b, out_vars, sum_vars) -> bool:
    """Index a of out's write and b of the sum's read select the same plane: equal constants, or the
    iterators at the same position of each block."""
    if isinstance(a, tirx.IntImm) and isinstance(b, tirx.IntImm):
        return int(a) == int(b)
    at = [i for i, v in enumerate(out_vars) if v.same_as(a)]
    bt = [i for i, v in enumerate(sum_vars) if v.same_as(b)]
    return bool(at) and at == bt


# ---- after scheduling: BinarizePack in the kernel that computes its shift ----------------------------

SHIFT_BLOCK = "se_sigmoid"  # the last block of se_shift (its output)


def merge_binarize_into_se() -> tvm.transform.Pass:
    """A module pass after the schedules (FuseTIR after it): BinarizePack(v, shift), where shift is an SE
    kernel's output read by nothing else, joins that kernel's call (se_shift alone, or merged into its
    producer by merge_se_into_producer), the two scheduled bodies one after the other in one kernel: one
    call and one (N, C) shift buffer fewer per SE block."""

    merge = mutator_pass("sdbnn.MergeBinarizeIntoSE",
                         lambda mod: _PackMerger(mod, _in_every_function(mod, _pack_merges)))
    return tvm.transform.Sequential([merge, relax.transform.FuseTIR()], name="sdbnn.MergeBinarizeIntoSE")


def _pack_merges(mod: tvm.IRModule, func: relax.Function) -> dict:
    """{SE kernel binding's variable: (BinarizePack binding, the shift's output index or None where the
    kernel has one output, where the packed values come from: ("arg", k) or ("out", i))} for func."""
    bindings = {b.var: b for block in func.body.blocks for b in block.bindings}
    uses = {}
    for binding in bindings.values():
        for var in relax.analysis.free_vars(binding.value):
            uses[var] = uses.get(var, 0) + 1
    pairs = {}
    for binding in bindings.values():
        if _kernel_op(mod, binding.value) != "BinarizePack":
            continue
        v, shift = binding.value.args[1].fields
        index, source = _output_of(bindings, shift)
        if source is None or uses.get(shift, 0) != 1 or source.var in pairs or not _writes_shift(
                mod, source.value, index):
            continue
        if index is not None and index != len(source.value.ty.fields) - 1:  # _PackMerger keeps the indices
            continue  # before the shift's: only a shift that is the kernel's last output
        args = list(source.value.args[1].fields)
        v_index, v_source = _output_of(bindings, v)
        if v_source is source and v_index is not None and v_index != index:
            pairs[source.var] = (binding, index, ("out", v_index))
        elif any(v.same_as(a) for a in args):
            pairs[source.var] = (binding, index, ("arg", next(k for k, a in enumerate(args) if v.same_as(a))))
    return pairs


def _output_of(bindings: dict, var):
    """(i, binding) where var is output i of the tuple that binding makes; (None, binding) where var is
    bound to a call; (None, None) otherwise."""
    bound = bindings.get(var)
    if bound is not None and isinstance(bound.value, relax.TupleGetItem):
        return bound.value.index, bindings.get(bound.value.tuple_value)
    return None, bound


def _called(mod: tvm.IRModule, value):
    """The function of mod that value calls with call_tir, else None (not a call_tir, or a function that
    is not in mod)."""
    if not (isinstance(value, relax.Call) and value.op.same_as(tvm.ir.Op.get("relax.call_tir"))):
        return None
    return mod.functions.get(value.args[0])


def _kernel_op(mod: tvm.IRModule, value) -> str | None:
    """The OP_ATTR of the PrimFunc that value calls with call_tir, else None."""
    prim = _called(mod, value)
    return str(prim.attrs[OP_ATTR]) if prim is not None and prim.attrs is not None and OP_ATTR in prim.attrs else None


def _writes_shift(mod: tvm.IRModule, value, index) -> bool:
    """Whether value is a call_tir whose output `index` (the only one where None) is written by an SE
    kernel's last block."""
    prim = _called(mod, value)
    if not isinstance(prim, tirx.PrimFunc):
        return False
    outputs = len(value.ty.fields) if isinstance(value.ty, relax.TupleType) else 1
    if (index is None) != (outputs == 1):
        return False
    buffer = prim.params[len(prim.params) - outputs + (index or 0)]
    sch = s_tir.Schedule(prim)
    block = find_block(sch, SHIFT_BLOCK)
    return block is not None and sch.get(block).writes[0].source.same_as(buffer)


@mutator
class _PackMerger(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, merges: dict):
        super().__init__(mod)
        self.mod, self.merges, self.replaced, self.dropped = mod, merges, {}, set()

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.merges:
            pack, index, v_from = self.merges[binding.var]
            group = self._group(binding.value, pack.value, index, v_from)
            both = self.builder_.emit(relax.Call(group, [self.visit_expr(a) for a in binding.value.args[1].fields]))
            if index is None:
                self.replaced[pack.var] = both
            else:  # the SE kernel's outputs but the shift, then the bits
                self.set_var_remap(binding.var, both)
                self.replaced[pack.var] = relax.TupleGetItem(both, len(binding.value.ty.fields) - 1)
                self.dropped.add(pack.value.args[1].fields[1])
        elif binding.var in self.dropped:
            return
        elif binding.var in self.replaced:
            value = self.replaced.pop(binding.var)
            self.set_var_remap(binding.var, value if isinstance(value, relax.Var) else self.builder_.emit(value))
        else:
            super().visit_var_binding_(binding)

    def _group(self, se_call: relax.Call, pack_call: relax.Call, index, v_from) -> tvm.ir.GlobalVar:
        """A Primitive function of the SE kernel's inputs: the kernel, then BinarizePack on its shift; its
        outputs (but the shift) and the bits."""
        params = [relax.Var(f"p{i}", a.ty) for i, a in enumerate(se_call.args[1].fields)]
        bb = relax.BlockBuilder()
        name = f"{se_call.args[0].name_hint}_{pack_call.args[0].name_hint}"
        with bb.function(name, params, {"Primitive": True}, private=True):
            with bb.dataflow():
                out_ty = list(se_call.ty.fields) if index is not None else se_call.ty
                se = bb.emit(relax.call_tir(se_call.args[0], params, out_ty))
                outs = [se] if index is None else [bb.emit(relax.TupleGetItem(se, i))
                                                   for i in range(len(se_call.ty.fields))]
                v = params[v_from[1]] if v_from[0] == "arg" else outs[v_from[1]]
                bits = bb.emit(relax.call_tir(pack_call.args[0], [v, outs[index or 0]], pack_call.ty))
                kept = [o for i, o in enumerate(outs) if i != (index or 0)]
                out = bb.emit_output(relax.Tuple(kept + [bits]) if kept else bits)
            bb.emit_func_output(out)
        return self.builder_.add_func(bb.get()[name], name)
