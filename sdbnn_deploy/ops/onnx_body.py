"""Building blocks for the ONNX function bodies of our ops: standard ONNX ops only (opset 18).

A body is a list of NodeProtos. `Body` hands out fresh value names and appends nodes; `unpack` and
`pack` translate between uint64 words (sdbnn_deploy.bits) and +-1 floats inside a body.
"""
import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from sdbnn_deploy.bits import WORD_BITS
from sdbnn_deploy.ops import DOMAIN, ONNX_OPSET

FLOAT = TensorProto.FLOAT


class Body:
    def __init__(self):
        self.nodes = []
        self._n = 0

    def fresh(self, hint):
        self._n += 1
        return f"{hint}_{self._n}"

    def op(self, op_type, *inputs, out=None, **attrs):
        """Append one node; return its output name."""
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, array, hint="c"):
        out = self.fresh(hint)
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(np.asarray(array))))
        return out

    def attr_const(self, attr_name, kind):
        """A Constant whose value is the function's attribute `attr_name` (kind "value_int"/"value_ints")."""
        out = self.fresh(attr_name)
        node = helper.make_node("Constant", [], [out])
        ref = AttributeProto(name=kind, ref_attr_name=attr_name,
                             type=AttributeProto.INT if kind == "value_int" else AttributeProto.INTS)
        node.attribute.append(ref)
        self.nodes.append(node)
        return out

    def function(self, name, inputs, outputs, attributes, overload=""):
        return helper.make_function(DOMAIN, name, inputs, outputs, self.nodes,
                                    [helper.make_opsetid("", ONNX_OPSET)], attributes=attributes,
                                    overload=overload)


def unpack(b: Body, words: str, channels: str) -> str:
    """uint64 words (..., W) -> float +-1 (..., C); `channels` is a 1-element int64 tensor."""
    shifts = b.const(np.arange(WORD_BITS, dtype=np.uint64), "shifts")
    one = b.const(np.array(1, dtype=np.uint64), "one")
    shifted = b.op("BitShift", b.op("Unsqueeze", words, b.const(np.array([-1]))), shifts, direction="RIGHT")
    bits = b.op("Cast", b.op("BitwiseAnd", shifted, one), to=FLOAT)
    lead = b.op("Slice", b.op("Shape", words), b.const(np.array([0])), b.const(np.array([-1])))
    flat = b.op("Reshape", bits, b.op("Concat", lead, b.const(np.array([-1])), axis=0))
    bits = b.op("Slice", flat, b.const(np.array([0])), channels, b.const(np.array([-1])))
    return b.op("Sub", b.const(np.float32(1)), b.op("Mul", b.const(np.float32(2)), bits))


def pack(b: Body, negative: str, out: str) -> str:
    """bool (N, H, W, C), True where the value is -1 -> uint64 words (N, H, W, ceil(C/64)) named `out`."""
    ints = b.op("Cast", negative, to=TensorProto.INT64)
    c = b.op("Shape", ints, start=-1)
    word = b.const(np.array([WORD_BITS]))
    missing = b.op("Mod", b.op("Sub", word, b.op("Mod", c, word)), word)
    pads = b.op("Concat", b.const(np.zeros(7, dtype=np.int64)), missing, axis=0)
    padded = b.op("Pad", ints, pads)
    # Two 32-bit halves per word: onnxruntime sums int64 through doubles, exact only below 2**53.
    halves = b.op("Reshape", padded, b.const(np.array([0, 0, 0, -1, 2, WORD_BITS // 2])))
    powers = b.const(np.left_shift(1, np.arange(WORD_BITS // 2, dtype=np.int64)), "powers")
    sums = b.op("Cast", b.op("ReduceSum", b.op("Mul", halves, powers), b.const(np.array([-1])), keepdims=0),
                to=TensorProto.UINT64)
    low = b.op("Gather", sums, b.const(np.array(0)), axis=-1)
    high = b.op("Gather", sums, b.const(np.array(1)), axis=-1)
    high = b.op("BitShift", high, b.const(np.array(WORD_BITS // 2, dtype=np.uint64)), direction="LEFT")
    return b.op("BitwiseOr", low, high, out=out)


def channels_first(b: Body, x: str) -> str:
    return b.op("Transpose", x, perm=[0, 3, 1, 2])


def channels_last(b: Body, x: str) -> str:
    return b.op("Transpose", x, perm=[0, 2, 3, 1])


def per_channel(b: Body, v: str) -> str:
    """(C,) -> (C, 1, 1), to broadcast over NCHW."""
    return b.op("Unsqueeze", v, b.const(np.array([-2, -1])))


def check(function: onnx.FunctionProto) -> onnx.FunctionProto:
    onnx.checker.check_function(function)
    return function
