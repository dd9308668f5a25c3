"""One helper for the Relax rewrites of the compile pipeline (max_pool_before_cast, batchnorm_as_affine,
weights_to_hwio, matmul_weights_nk): a module pass that runs a PyExprMutator over every Relax function."""
import tvm
from tvm import relax


def mutator_pass(name: str, make_mutator) -> tvm.transform.Pass:
    """A module pass named `name`: make_mutator(mod) (a PyExprMutator, or None to leave the module as it
    is) rewrites every Relax function; bindings nothing reads any more are dropped."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = make_mutator(mod)
        if rewriter is None:
            return mod
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, relax.analysis.remove_all_unused(rewriter.visit_expr(func)))
        return rewriter.builder_.get()

    return _pass
