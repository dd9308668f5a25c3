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

Unclipped BinarizePack is bit-identical: the bit of clip(z) + s > 0 equals the bit of z + s > 0 for every
s in [0, 1] (a float32 sigmoid is 1 / (1 + exp(-x)) with exp(-x) >= 0): lo <= z <= hi is the same
operation on the same values; z > hi gives hi + s > 0 and z + s > 0 (exact sums of the same sign, and
rounding never turns a nonzero sum into zero); z < lo gives lo + s <= 0 and z + s < 0; a NaN z or s gives
not > 0 on both sides.
"""
import tvm
from tvm import relax, s_tir, te, tirx, topi
from tvm.relax.expr_functor import PyExprMutator, mutator

from sdbnn_deploy.tvm import OP_ATTR
from sdbnn_deploy.tvm.relax_rewrite import mutator_pass

SE_ATTR = "sdbnn.se_shift"  # marks the PrimFuncs this pass makes with se_shift


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

    total = te.compute((n, c), lambda i, j: te.sum(value(i, j), axis=[r, s]), name="se_sum")
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
        if self._kernel(call) == "BinarizePack":
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
        if self._kernel(self._bound(z)) is None or str(z.ty.dtype) != "float32":
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

    def _kernel(self, call):
        """The OP_ATTR of the PrimFunc that call runs with call_tir (one of our kernels), else None."""
        func = self._primfunc(call) if self._is_call(call, "call_tir") else None
        attrs = func.attrs if func is not None else None
        return str(attrs[OP_ATTR]) if attrs is not None and OP_ATTR in attrs else None

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
