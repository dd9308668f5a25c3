"""unclipped_se: the SE block and the BinarizePack of a dynamic-ASD conv read the values before their clip.

In a dynamic-ASD model a binary conv's real output z goes through hardtanh (ONNX Clip: maximum(z, lo),
then minimum(., hi)) to the SE block's global average pool (a mean over H, W) and to BinarizePack, whose
shift s is the SE block's sigmoid. Written out for those two, the clipped values cost one more pass over
the activations per conv (ResNet-18's eight non-residual dynamic convs). This Relax pass (before
legalisation) rewrites, where z is the output of one of our kernels (in memory anyway):

    BinarizePack(clip(z), sigmoid(t))  =>  BinarizePack(z, sigmoid(t))      lo <= -1, hi > 0
    mean(clip(z), axis=[2, 3])         =>  clipped_mean(z)                    the clip inside the sum

so the clip is computed where the mean reads z and nothing clipped is stored. Both are bit-identical:
- clipped_mean adds the same clipped values in the same order as legalised mean(clip(z)) (sum, then
  divide by H*W), only without the buffer in between;
- the bit of clip(z) + s > 0 equals the bit of z + s > 0 for every s in [0, 1] (a float32 sigmoid is
  1 / (1 + exp(-x)) with exp(-x) >= 0): lo <= z <= hi is the same operation on the same values; z > hi
  gives hi + s > 0 and z + s > 0 (exact sums of the same sign, and rounding never turns a nonzero sum
  into zero); z < lo gives lo + s <= 0 and z + s < 0; a NaN z or s gives not > 0 on both sides.
Where z is not in memory (a BatchNorm or add fused with the clip) nothing is rewritten: it would be.
"""
import tvm
from tvm import relax, s_tir, te, tirx, topi
from tvm.relax.expr_functor import PyExprMutator, mutator

from sdbnn_deploy.tvm import OP_ATTR


def unclipped_se() -> tvm.transform.Pass:
    """A module pass: the rewrites of the module docstring on every Relax function (constants folded
    first, so that the clip's bounds are constants)."""

    @tvm.transform.module_pass(opt_level=0, name="sdbnn.UnclippedSE")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = relax.transform.FoldConstant()(mod)
        rewriter = _Rewriter(mod)
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, relax.analysis.remove_all_unused(rewriter.visit_expr(func)))
        return rewriter.builder_.get()

    return _pass


def clipped_mean(z: te.Tensor, lo: float, hi: float, keepdims: bool) -> te.Tensor:
    """mean(minimum(maximum(z, lo), hi), axis=[2, 3]) of NCHW z as one reduction: the sum of the clipped
    values in legalised mean's order, then divided by H*W as it does."""
    n, c, h, w = z.shape
    r = te.reduce_axis((0, h), name="r")
    s = te.reduce_axis((0, w), name="s")

    def clipped(i, j):
        return tirx.min(tirx.max(z[i, j, r, s], tirx.const(lo, "float32")), tirx.const(hi, "float32"))

    total = te.compute((n, c), lambda i, j: te.sum(clipped(i, j), axis=[r, s]), name="clipped_sum")
    mean = topi.divide(total, tirx.const(float(int(h) * int(w)), "float32"))
    return topi.reshape(mean, (n, c, 1, 1)) if keepdims else mean


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod = mod
        self.call_tir = tvm.ir.Op.get("relax.call_tir")
        self.sigmoid = tvm.ir.Op.get("relax.sigmoid")
        self.mean = tvm.ir.Op.get("relax.mean")

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if self._is_call(call, self.mean):
            return self._mean(call)
        if self._kernel(call) == "BinarizePack":
            return self._binarize_pack(call)
        return call

    def _mean(self, call: relax.Call) -> relax.Expr:
        clip = self._clip(call.args[0])
        if clip is None or [int(a) for a in call.attrs.axis] != [2, 3] or len(call.args[0].ty.shape) != 4:
            return call
        z, lo, hi = clip
        return self.builder_.call_te(clipped_mean, z, lo, hi, bool(call.attrs.keepdims),
                                     primfunc_name_hint="clipped_mean")

    def _binarize_pack(self, call: relax.Call) -> relax.Expr:
        values, shift = call.args[1].fields
        clip = self._clip(values)
        if clip is None or not self._is_call(self._bound(shift), self.sigmoid):
            return call
        return relax.Call(call.op, [call.args[0], relax.Tuple([clip[0], shift]), *call.args[2:]], call.attrs,
                          call.ty_args)

    def _clip(self, values: relax.Expr):
        """(z, lo, hi) where values = minimum(maximum(z, lo), hi), float32 NCHW, with constants lo <= -1,
        hi > 0 and z the output of one of our kernels; else None."""
        upper = self._elementwise(self._bound(values), tirx.Min)
        lower = self._elementwise(self._bound(upper[0]), tirx.Max) if upper else None
        if not (upper and lower and upper[1] > 0 and lower[1] <= -1):
            return None
        z = lower[0]
        if self._kernel(self._bound(z)) is None or str(z.ty.dtype) != "float32":
            return None
        return z, lower[1], upper[1]

    def _elementwise(self, call, kind):
        """(x, bound) where call is call_tir of a PrimFunc whose one store is kind(x[...], bound[()]) and
        bound is a one-element constant; else None."""
        if not self._is_call(call, self.call_tir):
            return None
        args = call.args[1].fields
        if len(args) != 2 or not isinstance(args[1], tvm.ir.GenericConst) or args[1].value.numpy().size != 1:
            return None
        if not isinstance(_store_value(self.mod[call.args[0]]), kind):
            return None
        return args[0], float(args[1].value.numpy().reshape(-1)[0])

    def _kernel(self, call):
        """The OP_ATTR of the PrimFunc that call runs with call_tir (one of our kernels), else None."""
        if not self._is_call(call, self.call_tir):
            return None
        attrs = self.mod[call.args[0]].attrs
        return str(attrs[OP_ATTR]) if attrs is not None and OP_ATTR in attrs else None

    def _bound(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None

    @staticmethod
    def _is_call(expr, op) -> bool:
        return isinstance(expr, relax.Call) and expr.op.same_as(op)


def _store_value(func: tirx.PrimFunc):
    """The value stored by a PrimFunc made of one loop nest around one block with one store, else None."""
    node = func.body
    while not isinstance(node, tirx.BufferStore):
        if isinstance(node, s_tir.SBlockRealize):
            node = node.block
        elif isinstance(node, (s_tir.SBlock, tirx.For)):
            node = node.body
        else:
            return None
    return node.value
