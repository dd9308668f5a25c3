"""ONNX (from `sdbnn-deploy convert`) -> Relax, with converters for our custom ops.

TVM's ONNX importer (tvm.relax.frontend.onnx.from_onnx) has no public hook for custom ops: it looks each
node up by op_type alone (the domain is ignored) in the dict returned by the PRIVATE function
`onnx_frontend._get_convert_map()`. While import_onnx runs, that function is wrapped to add one
OnnxOpConverter per sdbnn op; each emits the TE compute of sdbnn_deploy.tvm.kernels as its own PrimFunc,
tagged with OP_ATTR (scheduled later per target) and marked opaque (Relax fuses nothing into it).
A BinaryConv2d of mode "int" (VGG-Small's convs before a max-pool) with the uint64-word compute of
kernels.py (x86; ARM without byte lanes) is emitted channels last, "int_nhwc", followed by a transposition
to the NCHW of the ONNX graph: the conv stores its results in that order without transposing them
(VGG-Small's 128->128 32x32 conv alone on x86: 84 -> 66 us, one core), and pool_channels_last (a Relax
pass of the compile pipeline) pools those values before the transposition.
tests/test_relax_import.py guards this private API: if TVM changes it, that test fails loudly, and so
does _check_private_api here, with a message that says what changed.

The model-local ONNX functions that define our ops for onnxruntime are ignored by TVM's importer (it reads
graph.node only); the other nodes are standard ONNX and are left to TVM.
"""
import contextlib

import numpy as np
import onnx
import tvm
from tvm import relax

from sdbnn_deploy.bits import words_for
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.ops import DOMAIN
from sdbnn_deploy.tvm import OP_ATTR, kernels, kernels_pixels
from sdbnn_deploy.tvm.kernels import border_bounds

CUSTOM_OPS = ("BinarizePack", "BinaryConv2d", "PackedMaxPool2d")
METADATA_KEY = "sdbnn_deploy.version"  # written by export_onnx into metadata_props
_OPAQUE = 8  # relax OpPatternKind kOpaque: FuseOps leaves the PrimFunc alone


def _onnx_frontend():
    """TVM's private importer module, after checking the two names we rely on."""
    from tvm.relax.frontend.onnx import onnx_frontend

    for name in ("_get_convert_map", "OnnxOpConverter", "ONNXGraphImporter"):
        if not hasattr(onnx_frontend, name):
            raise RuntimeError(
                f"tvm {tvm.__version__}: tvm.relax.frontend.onnx.onnx_frontend.{name} is gone; "
                "sdbnn_deploy.tvm.relax_import registers the sdbnn ops through it and must be updated")
    return onnx_frontend


def _static_shape(expr, node: str, what: str):
    shape = expr.ty.shape
    try:
        return tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise UserError(f"node {node}: {what} has a dynamic shape {shape}; compile needs static shapes "
                        "(fix the batch size)") from None


def _constant(expr, node: str, what: str) -> np.ndarray:
    if not isinstance(expr, tvm.ir.GenericConst):
        raise UserError(f"node {node}: {what} must be an initializer (a constant)")
    return expr.value.numpy()


def _emit(bb, compute, op: str, *args, **kwargs):
    return bb.emit_te(compute, *args, primfunc_name_hint=compute.__name__,
                      primfunc_attrs={OP_ATTR: op, "op_pattern": _OPAQUE}, **kwargs)


def _convert_binarize_pack(bb, inputs, attr):
    x, shift = inputs[0], inputs[1]
    name = attr["tvm_custom"]["name"]
    n, c, _, _ = _static_shape(x, name, "X")
    if _static_shape(shift, name, "shift") not in ((c,), (n, c)):
        raise UserError(f"node {name}: BinarizePack shift must have shape ({c},) or ({n}, {c})")
    return _emit(bb, kernels.binarize_pack, "BinarizePack", x, shift)


def _convert_binary_conv2d(bb, inputs, attr, lanes: int, conv=kernels, pixel_lanes: bool = False):
    name = attr["tvm_custom"]["name"]
    x, extra = inputs[0], [e for e in inputs[2:] if e is not None]
    w = _constant(inputs[1], name, "W")
    mode = attr["mode"].decode() if isinstance(attr["mode"], bytes) else attr["mode"]
    cin = int(attr["in_channels"])
    strides, pads = tuple(attr.get("strides", (1, 1))), tuple(attr.get("pads", (0, 0)))
    n, h, width, cw = _static_shape(x, name, "X")
    if w.dtype != np.uint64 or w.ndim != 4 or w.shape[3] != cw or cw != words_for(cin):
        raise UserError(f"node {name}: W {w.dtype}{list(w.shape)} and X words {cw} do not hold "
                        f"in_channels={cin} packed in uint64 words")
    expected = {"int": 0, "affine": 2, "bits": 1}.get(mode)
    if expected is None or len(extra) != expected:
        raise UserError(f"node {name}: BinaryConv2d mode {mode!r} with {len(extra)} output-stage inputs")
    for tensor, what in zip(extra, {"affine": ("scale", "bias"), "bits": ("thresholds",)}.get(mode, ())):
        if _static_shape(tensor, name, what) != (int(w.shape[0]),):
            raise UserError(f"node {name}: {what} has shape {list(_static_shape(tensor, name, what))}, "
                            f"expected [{int(w.shape[0])}] (one per output channel)")
    out_hw = (border_bounds(h, w.shape[1], strides[0], pads[0])[0],
              border_bounds(width, w.shape[2], strides[1], pads[1])[0])
    conv = conv_module(conv, mode, cw, out_hw, lanes, pixel_lanes)
    thresholds = _constant(extra[0], name, "thresholds") if compute_mode(mode, conv) == "bits_limits" else None
    blocked, correction, compute = conv_constants(conv, w, cin, (h, width), pads, strides, lanes, mode, thresholds)
    if compute == "bits_limits":
        extra = []
    y = _emit(bb, conv.binary_conv2d, "BinaryConv2d", x, relax.const(blocked), relax.const(correction),
              *extra, in_channels=cin, out_channels=int(w.shape[0]), strides=strides, pads=pads, mode=compute)
    if compute == "int_nhwc":
        return bb.emit(relax.op.permute_dims(y, [0, 3, 1, 2]))
    if conv is kernels_pixels:
        return _pixel_output(bb, y, _static_shape(y, name, "output"), out_hw, compute)
    return y


def _pixel_output(bb, y, shape, out_hw, compute: str):
    """kernels_pixels' output as NCHW floats or NHWC words: on the flat plane ((N, Cout, QP) or (N, QP,
    words)) its first OH*OW pixels (QP: whole vectors), reshaped. Relax fuses the slice and the reshape
    into a float consumer; before an opaque kernel (the next binary conv or pool reading bits words) a
    padded plane's slice is a small copy of its own (OH*OW pixels' words)."""
    if len(shape) == 4:  # rows
        return y
    axis, pixels = (2, shape[:2]) if compute == "affine" else (1, shape[:1])
    if shape[axis] != out_hw[0] * out_hw[1]:
        y = bb.emit(relax.op.strided_slice(y, axes=[axis], begin=[0], end=[out_hw[0] * out_hw[1]]))
    return bb.emit(relax.op.reshape(y, (*pixels, *out_hw, *shape[axis + 1:])))


def conv_constants(conv, w: np.ndarray, in_channels: int, in_hw, pads, strides, lanes: int, mode: str,
                   thresholds=None):
    """(weights, correction, compute mode) of a BinaryConv2d of ONNX `mode` emitted with the module
    `conv`: its prepare_conv_weights, and for the compute mode "bits_limits" (compute_mode) the
    thresholds folded into the correction by its fold_thresholds (one compare per output)."""
    blocked, correction = conv.prepare_conv_weights(w, in_channels, in_hw, pads, strides, lanes)
    compute = compute_mode(mode, conv)
    if compute == "bits_limits":
        correction = conv.fold_thresholds(correction, thresholds, in_channels * w.shape[1] * w.shape[2])
    return blocked, correction, compute


def conv_module(conv, mode: str, words: int, out_hw, lanes: int, pixel_lanes: bool):
    """The module whose compute a BinaryConv2d is emitted with: kernels_pixels (output pixels in the
    lanes) where the target asks for pixel lanes, the compute is kernels' and kernels_pixels.applies to
    the shape; else `conv` (the target's: kernels, or kernels_arm)."""
    if pixel_lanes and conv is kernels and kernels_pixels.applies(mode, words, out_hw, lanes):
        return kernels_pixels
    return conv


def compute_mode(mode: str, conv=kernels) -> str:
    """The output mode of the compute emitted for a BinaryConv2d of ONNX `mode`. With kernels' uint64-word
    compute, "int" as "int_nhwc" (channels last, transposed after) and "bits" as "bits_limits" (the
    thresholds folded into the correction by kernels.fold_thresholds: no threshold per output in the
    tile, the uint64 counts compared as int64, not narrowed); with kernels_pixels' compute "bits" as
    "bits_limits" (kernels_pixels.fold_thresholds); else the mode itself."""
    if conv is kernels_pixels:
        return {"bits": "bits_limits"}.get(mode, mode)
    if conv is not kernels:
        return mode
    return {"int": "int_nhwc", "bits": "bits_limits"}.get(mode, mode)


def _convert_packed_max_pool2d(bb, inputs, attr):
    return _emit(bb, kernels.packed_max_pool2d, "PackedMaxPool2d", inputs[0], inputs[1],
                 kernel_shape=tuple(attr["kernel_shape"]), strides=tuple(attr["strides"]))


def _converters(frontend, lanes: int, conv=kernels, pixel_lanes: bool = False) -> dict:
    """One OnnxOpConverter subclass per sdbnn op (the importer calls _impl_v<opset> on the class)."""
    functions = {
        "BinarizePack": _convert_binarize_pack,
        "BinaryConv2d": lambda bb, inputs, attr: _convert_binary_conv2d(bb, inputs, attr, lanes, conv, pixel_lanes),
        "PackedMaxPool2d": _convert_packed_max_pool2d,
    }

    def converter(op, convert):
        impl = classmethod(lambda cls, bb, inputs, attr, params: convert(bb, inputs, attr))
        return type(op, (frontend.OnnxOpConverter,), {"_impl_v1": impl})

    return {op: converter(op, convert) for op, convert in functions.items()}


@contextlib.contextmanager
def sdbnn_ops_registered(lanes: int, conv=kernels, pixel_lanes: bool = False):
    """While active, TVM's ONNX importer converts our custom ops (weights laid out for `lanes`; conv: the
    module with BinaryConv2d's compute, kernels or kernels_arm, see sdbnn_deploy.tvm.conv_kernels;
    pixel_lanes: the target's param of that name, see conv_module)."""
    frontend = _onnx_frontend()
    original = frontend._get_convert_map
    extra = _converters(frontend, lanes, conv, pixel_lanes)
    frontend._get_convert_map = lambda: {**original(), **extra}
    try:
        yield
    finally:
        frontend._get_convert_map = original


def check_model(model: onnx.ModelProto, source: str = "model") -> None:
    """Raise UserError unless the model came from convert and every op is ours or one TVM imports."""
    nodes = list(model.graph.node)
    foreign = [f"{n.domain}::{n.op_type} (node {n.name or '?'})" for n in nodes
               if n.domain not in ("", "ai.onnx") and not (n.domain == DOMAIN and n.op_type in CUSTOM_OPS)]
    if foreign:
        raise UserError(f"{source}: custom op {foreign[0]} is not an sdbnn-deploy op "
                        f"({', '.join(CUSTOM_OPS)} in domain {DOMAIN!r})")
    ours = any(n.domain == DOMAIN for n in nodes)
    tagged = any(p.key == METADATA_KEY for p in model.metadata_props)
    if not ours and not tagged:
        raise UserError(f"{source}: no sdbnn ops and no sdbnn-deploy metadata: this ONNX did not come from "
                        "`sdbnn-deploy convert`")
    supported = _onnx_frontend()._get_convert_map()
    missing = sorted({n.op_type for n in nodes if n.domain in ("", "ai.onnx")
                      and n.op_type not in supported and n.op_type not in ("Constant", "If")})
    if missing:
        raise UserError(f"{source}: ONNX ops not supported by TVM {tvm.__version__}'s importer: "
                        f"{', '.join(missing)}")


def import_onnx(model: onnx.ModelProto, lanes: int, batch: int = 1, source: str = "model",
                conv=kernels, pixel_lanes: bool = False) -> tvm.IRModule:
    """Relax IRModule of a converted model, the graph inputs' symbolic batch fixed to `batch`.

    `lanes` is the schedule's weight block width (conv_lanes of the target's schedule module), `conv` the
    module with BinaryConv2d's compute (sdbnn_deploy.tvm.conv_kernels of the target), `pixel_lanes` the
    target's param of that name (conv_module).
    """
    check_model(model, source)
    initializers = {t.name for t in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if any(d is None for d in shape[1:]):
            raise UserError(f"{source}: input {value.name} has dynamic dimensions {shape}; only the batch may be")
        shapes[value.name] = [batch] + shape[1:] if shape and shape[0] is None else shape
    with sdbnn_ops_registered(lanes, conv, pixel_lanes):
        return relax.frontend.onnx.from_onnx(model, shape_dict=shapes)
