"""export: Graph -> ONNX ModelProto, with our ops' function bodies so stock onnxruntime runs it.

The graph's input has a symbolic batch dimension "N". Custom nodes are in domain sdbnn_deploy.ops.DOMAIN;
a BinaryConv2d node names its mode as the ONNX function overload, so each mode has its own body.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sdbnn_deploy import __version__
from sdbnn_deploy.graph import Graph
from sdbnn_deploy.ops import DOMAIN, DOMAIN_VERSION, ONNX_OPSET, binarize_pack, binary_conv2d, packed_max_pool2d

CUSTOM_OPS = ("BinarizePack", "BinaryConv2d", "PackedMaxPool2d")
_DTYPES = {"float32": TensorProto.FLOAT, "int32": TensorProto.INT32, "int64": TensorProto.INT64}


def functions_for(op_types_and_modes) -> list:
    """The FunctionProtos needed by the (op_type, mode) pairs used in a graph."""
    funcs = []
    for op, mode in sorted(set(op_types_and_modes)):
        if op == "BinarizePack":
            funcs.append(binarize_pack.onnx_function())
        elif op == "BinaryConv2d":
            funcs.append(binary_conv2d.onnx_function(mode))
        elif op == "PackedMaxPool2d":
            funcs.append(packed_max_pool2d.onnx_function())
    return funcs


def make_node(node) -> onnx.NodeProto:
    """One Graph node as an ONNX node (attributes starting with "_" are left out)."""
    attrs = {k: v for k, v in node.attrs.items() if not k.startswith("_")}
    if node.op == "Cast":
        attrs["to"] = _DTYPES[attrs["to"]]
    extra = {}
    if node.op in CUSTOM_OPS:
        extra["domain"] = DOMAIN
        if node.op == "BinaryConv2d":
            extra["overload"] = attrs["mode"]
    return helper.make_node(node.op, node.inputs, node.outputs, name=node.name or None, **extra, **attrs)


def to_onnx(g: Graph, metadata=None, extra_outputs=()) -> onnx.ModelProto:
    """Build the ModelProto. `extra_outputs` exposes intermediate values (for per-layer checks)."""
    nodes = [make_node(n) for n in g.nodes]
    _unique_names(nodes)
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *shape[1:]])
              for name, shape in g.inputs.items()]
    outputs = [helper.make_tensor_value_info(name, _elem_type(g, name), _shape(g, name))
               for name in list(g.outputs) + list(extra_outputs)]
    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in g.consts.items()]
    graph = helper.make_graph(nodes, g.meta.get("name", "sdbnn"), inputs, outputs, inits)
    used = [(n.op, n.attrs.get("mode")) for n in g.nodes if n.op in CUSTOM_OPS]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET),
                                                    helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
                              functions=functions_for(used), ir_version=10,
                              producer_name="sdbnn-deploy", producer_version=__version__)
    meta = {"sdbnn_deploy.version": __version__, **(metadata or {})}
    helper.set_model_props(model, {k: str(v) for k, v in meta.items() if v is not None})  # unknown: absent
    return model


def _unique_names(nodes):
    """ONNX wants unique node names: "<module path>" for the main node, "<module path>/<Op>[_k]" for the rest."""
    seen = set()
    for node in nodes:
        name, k = node.name or node.op_type, 1
        if name in seen:
            name = base = f"{node.name}/{node.op_type}"
            while name in seen:
                k += 1
                name = f"{base}_{k}"
        seen.add(name)
        node.name = name


def _shape(g, name):
    """The traced shape with a symbolic batch, else symbolic dimensions of the right rank (4: all our ops)."""
    if name in g.shapes:
        return ["N", *g.shapes[name][1:]]
    return [f"{name}_{i}" for i in range(4)]


def _elem_type(g, name):
    node = g.producer(name)
    if node is not None and (node.op in ("BinarizePack", "PackedMaxPool2d") or
                             (node.op == "BinaryConv2d" and node.attrs["mode"] == "bits")):
        return TensorProto.UINT64
    if node is not None and node.op == "BinaryConv2d" and node.attrs["mode"] == "int":
        return TensorProto.INT32
    return TensorProto.FLOAT
