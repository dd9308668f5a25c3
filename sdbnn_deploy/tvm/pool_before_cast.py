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
"""
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator


def max_pool_before_cast() -> tvm.transform.Pass:
    """A module pass: the rewrite of the module docstring on every Relax function."""

    @tvm.transform.module_pass(opt_level=0, name="sdbnn.MaxPoolBeforeCast")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _PoolRewriter(mod)
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, relax.analysis.remove_all_unused(rewriter.visit_expr(func)))
        return rewriter.builder_.get()

    return _pass


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
