"""ONNX -> Relax import of our custom ops, and the guard on TVM's private importer API it relies on.

If TVM renames or reshapes tvm.relax.frontend.onnx.onnx_frontend._get_convert_map (or the importer stops
looking ops up through it), the first tests here fail: update sdbnn_deploy/tvm/relax_import.py.
"""
import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper

from onnx_graphs import custom_op_model, float_model
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.tvm import OP_ATTR, kernels
from sdbnn_deploy.tvm.relax_import import CUSTOM_OPS, _onnx_frontend, import_onnx, sdbnn_ops_registered


def tagged_primfuncs(mod):
    return {str(g.name_hint): f for g, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and OP_ATTR in f.attrs}


def test_guard_private_importer_api():
    """The names we patch exist, TVM has no op of our names, and converters are found through the map."""
    frontend = _onnx_frontend()
    stock = frontend._get_convert_map()
    assert isinstance(stock, dict) and "Conv" in stock and "Gemm" in stock
    assert not set(CUSTOM_OPS) & set(stock), "TVM now has an op named like ours: lookups ignore the domain"
    assert issubclass(stock["Relu"], frontend.OnnxOpConverter)
    assert callable(stock["Relu"].get_converter(18))
    with sdbnn_ops_registered(lanes=8):
        patched = frontend._get_convert_map()
        assert set(CUSTOM_OPS) <= set(patched) and set(stock) <= set(patched)
        assert callable(patched["BinaryConv2d"].get_converter(18))
    assert frontend._get_convert_map() is not None and not set(CUSTOM_OPS) & set(frontend._get_convert_map())


def test_guard_stock_importer_rejects_our_ops_without_the_patch():
    """Proves that the importer really resolves ops through _get_convert_map (what the patch changes)."""
    with pytest.raises(tvm.error.OpNotImplemented, match="BinarizePack"):
        tvm.relax.frontend.onnx.from_onnx(custom_op_model(), shape_dict={"x": [1, 20, 9, 7]})


@pytest.mark.parametrize("dynamic_shift", [False, True], ids=["static-shift", "se-shift"])
def test_import_emits_one_tagged_opaque_primfunc_per_custom_node(dynamic_shift):
    mod = import_onnx(custom_op_model(dynamic_shift=dynamic_shift), lanes=8, batch=3)
    funcs = tagged_primfuncs(mod)
    ops = sorted(str(f.attrs[OP_ATTR]) for f in funcs.values())
    assert ops == ["BinarizePack", "BinaryConv2d", "BinaryConv2d", "BinaryConv2d", "PackedMaxPool2d"]
    assert all(int(f.attrs["op_pattern"]) == 8 for f in funcs.values())  # opaque: never fused
    main = mod["main"]
    assert [int(d) for d in main.params[0].ty.shape] == [3, 20, 9, 7]  # batch fixed, the rest as in the ONNX
    dtypes = [str(t.dtype) for t in main.ret_ty.fields]
    assert dtypes == ["float32", "uint64", "int32"]  # uint64 graph outputs and initializers are accepted


def test_weights_are_laid_out_for_the_schedule_lanes():
    """conv1's weights (70 outputs, 3x3, 1 word) become a constant of shape (ceil(70/V), 3, 3, 1, V)."""
    for lanes in (8, 4):
        mod = import_onnx(custom_op_model(), lanes=lanes)
        shapes = {c.value.numpy().shape for c in _constants(mod["main"])}
        assert (-(-70 // lanes), 3, 3, 1, lanes) in shapes


def test_model_functions_are_ignored_by_the_importer():
    """The ONNX functions (for onnxruntime) carry standard-op bodies; none of them reaches Relax."""
    model = custom_op_model()
    assert len(model.functions) == 5
    mod = import_onnx(model, lanes=8)
    assert set(tagged_primfuncs(mod)) <= {f"{name}{i}" for name in
                                          ("binarize_pack", "binary_conv2d", "packed_max_pool2d")
                                          for i in ("", "1", "2")}
    assert "BitShift" not in mod["main"].script()


def _with_node(model, node, position=1):
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.node.insert(position, node)
    return model


def test_foreign_custom_op_is_named():
    node = helper.make_node("Gelu", ["x1"], ["g"], name="gelu0", domain="com.microsoft")
    with pytest.raises(UserError, match=r"com\.microsoft::Gelu \(node gelu0\)"):
        import_onnx(_with_node(custom_op_model(), node), lanes=8, source="m.onnx")


def test_unknown_op_in_our_domain_is_named():
    node = helper.make_node("BinaryDense", ["x1"], ["g"], name="fc", domain="sdbnn")
    with pytest.raises(UserError, match=r"sdbnn::BinaryDense"):
        import_onnx(_with_node(custom_op_model(), node), lanes=8)


def test_onnx_that_did_not_come_from_convert_is_refused():
    with pytest.raises(UserError, match="did not come from `sdbnn-deploy convert`"):
        import_onnx(float_model(with_metadata=False), lanes=8, source="plain.onnx")
    import_onnx(float_model(with_metadata=True), lanes=8)  # tagged by convert: a float-only model is fine


def test_standard_op_tvm_cannot_import_is_named():
    node = helper.make_node("Det", ["x1"], ["d"], name="det")
    with pytest.raises(UserError, match="not supported by TVM .*: Det"):
        import_onnx(_with_node(custom_op_model(), node), lanes=8)


@pytest.mark.parametrize("name,dtype,what", [("w1", TensorProto.UINT64, "W"),
                                             ("thresholds", TensorProto.INT32, "thresholds")])
def test_weights_and_thresholds_that_are_not_constants_are_refused(name, dtype, what):
    """W always; thresholds because x86 folds a bits conv's thresholds into its count limits at import."""
    model = custom_op_model()
    tensor = next(t for t in model.graph.initializer if t.name == name)
    model.graph.initializer.remove(tensor)
    model.graph.input.append(helper.make_tensor_value_info(name, dtype, list(tensor.dims)))
    with pytest.raises(UserError, match=f"node conv1: {what} must be an initializer"):
        import_onnx(model, lanes=8)


def test_dynamic_spatial_dimensions_are_refused():
    model = custom_op_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(UserError, match="input x has dynamic dimensions"):
        import_onnx(model, lanes=8)


def test_import_leaves_numbers_alone():
    """The imported weights equal the ONNX initializer, re-laid out: no cast, no copy through floats."""
    model = custom_op_model()
    w3 = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w3"))
    mod = import_onnx(model, lanes=1)
    consts = [c.value.numpy() for c in _constants(mod["main"])]
    assert any(c.dtype == np.uint64 and c.shape == (7, 1, 1, 2, 1) and np.array_equal(c[..., 0], w3)
               for c in consts)


def _constants(func):
    found = []
    tvm.relax.analysis.post_order_visit(func.body, lambda e: found.append(e)
                                        if isinstance(e, tvm.ir.GenericConst) else None)
    return found


def test_bits_thresholds_are_folded_into_count_limits():
    """With kernels (x86), conv1's thresholds are not emitted: its correction constant is
    kernels.fold_thresholds' count limits (relax_import.compute_mode: "bits" as "bits_limits")."""
    model = custom_op_model()
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    _, correction = kernels.prepare_conv_weights(init["w1"], 20, (9, 7), (1, 1), (1, 1), 8)
    want = kernels.fold_thresholds(correction, init["thresholds"], 20 * 9)
    constants = [c.value.numpy() for c in _constants(import_onnx(model, lanes=8)["main"])]
    assert any(c.dtype == np.int32 and c.shape == want.shape and np.array_equal(c, want) for c in constants)
    assert not any(c.shape == init["thresholds"].shape and np.array_equal(c, init["thresholds"]) for c in constants)


@pytest.mark.parametrize("name,length", [("thresholds", 1), ("thresholds", 69), ("thresholds", 80), ("scale", 23)])
def test_output_stage_inputs_of_another_length_than_cout_are_refused(name, length):
    """One value per output channel (ops.binary_conv2d): a shorter array would leave channels at 0, a
    longer one broke the fold with a bare numpy error."""
    model = custom_op_model()
    tensor = next(t for t in model.graph.initializer if t.name == name)
    values = onnx.numpy_helper.to_array(tensor)
    tensor.CopyFrom(onnx.numpy_helper.from_array(np.resize(values, length), name))
    cout = len(values)
    with pytest.raises(UserError, match=rf"{name} has shape \[{length}\], expected \[{cout}\]"):
        import_onnx(model, lanes=8)
