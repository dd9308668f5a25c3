"""Small hand-built ONNX models with all three sdbnn ops, as `convert` emits them, for the TVM tests.

float X -> Mul -> BinarizePack (static or per-sample SE shift) -> BinaryConv2d "bits" (3x3, pad 1)
-> PackedMaxPool2d -> BinaryConv2d "affine" (3x3, stride 2, pad 1) -> GlobalAveragePool -> Flatten -> Gemm,
plus a BinaryConv2d "int" (1x1) branch. Outputs: logits (float), the packed bits, the int32 counts.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sdbnn_deploy.bits import pack_signs, words_for
from sdbnn_deploy.export_onnx import functions_for
from sdbnn_deploy.ops import DOMAIN, DOMAIN_VERSION, ONNX_OPSET

OUTPUTS = ("logits", "bits", "counts")


def _signs(rng, shape):
    return rng.choice(np.array([-1, 1], dtype=np.int8), size=shape)


def custom_op_model(seed=0, channels=20, h=9, w=7, mid=70, out=24, classes=5, dynamic_shift=False,
                    metadata=True) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    k1 = channels * 9
    inits = {
        "gain": rng.uniform(0.5, 2.0, (1, channels, 1, 1)).astype(np.float32),
        "shift": rng.uniform(0.0, 1.0, channels).astype(np.float32),
        "w1": pack_signs(_signs(rng, (mid, 3, 3, channels))),
        "thresholds": rng.integers(-k1 // 4, k1 // 4, mid).astype(np.int32),
        "min_mask": pack_signs(_signs(rng, (mid,))),
        "w2": pack_signs(_signs(rng, (out, 3, 3, mid))),
        "scale": rng.standard_normal(out).astype(np.float32),
        "bias": rng.standard_normal(out).astype(np.float32),
        "w3": pack_signs(_signs(rng, (7, 1, 1, mid))),
        "fc_w": rng.standard_normal((classes, out)).astype(np.float32),
        "fc_b": rng.standard_normal(classes).astype(np.float32),
    }
    nodes = [helper.make_node("Mul", ["x", "gain"], ["x1"], name="stem")]
    if dynamic_shift:
        del inits["shift"]
        nodes += [helper.make_node("GlobalAveragePool", ["x1"], ["se_pool"], name="se/pool"),
                  helper.make_node("Flatten", ["se_pool"], ["se_flat"], name="se/flat"),
                  helper.make_node("Sigmoid", ["se_flat"], ["shift"], name="se/sigmoid")]
    custom = dict(domain=DOMAIN)
    nodes += [
        helper.make_node("BinarizePack", ["x1", "shift"], ["a"], name="binarize", **custom),
        helper.make_node("BinaryConv2d", ["a", "w1", "thresholds"], ["bits"], name="conv1", overload="bits",
                         in_channels=channels, strides=[1, 1], pads=[1, 1], mode="bits", **custom),
        helper.make_node("PackedMaxPool2d", ["bits", "min_mask"], ["pooled"], name="pool", channels=mid,
                         kernel_shape=[2, 2], strides=[2, 2], **custom),
        helper.make_node("BinaryConv2d", ["pooled", "w2", "scale", "bias"], ["y"], name="conv2", overload="affine",
                         in_channels=mid, strides=[2, 2], pads=[1, 1], mode="affine", **custom),
        helper.make_node("BinaryConv2d", ["pooled", "w3"], ["counts"], name="conv3", overload="int",
                         in_channels=mid, strides=[1, 1], pads=[0, 0], mode="int", **custom),
        helper.make_node("GlobalAveragePool", ["y"], ["gap"], name="head/pool"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="head/flat"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="head/fc", transB=1),
    ]
    ph, pw = h // 2, w // 2
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]),
               helper.make_tensor_value_info("bits", TensorProto.UINT64, ["N", h, w, words_for(mid)]),
               helper.make_tensor_value_info("counts", TensorProto.INT32, ["N", 7, ph, pw])]
    graph = helper.make_graph(nodes, "tiny_sdbnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, h, w])],
                              outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    used = [("BinarizePack", None), ("BinaryConv2d", "bits"), ("BinaryConv2d", "affine"),
            ("BinaryConv2d", "int"), ("PackedMaxPool2d", None)]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET),
                                                    helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
                              functions=functions_for(used), ir_version=10)
    if metadata:
        helper.set_model_props(model, {"sdbnn_deploy.version": "test"})
    return model


def float_model(with_metadata: bool) -> onnx.ModelProto:
    """A plain float model (Relu only), with or without sdbnn-deploy's metadata."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=10)
    if with_metadata:
        helper.set_model_props(model, {"sdbnn_deploy.version": "test"})
    return model


def onnxruntime_outputs(model: onnx.ModelProto, x: np.ndarray) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"x": x})))
