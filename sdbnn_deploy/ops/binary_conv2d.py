"""BinaryConv2d: convolution of packed +-1 activations with packed +-1 weights (XNOR-popcount).

Inputs
    X       uint64 (N, H, W, ceil(Cin/64))        packed activations
    W       uint64 (Cout, kh, kw, ceil(Cin/64))    packed weights (OHWI, channels innermost)
    then, by mode:
    "int":    nothing more
    "affine": scale float32 (Cout,), bias float32 (Cout,)
    "bits":   thresholds int32 (Cout,)
Attributes
    in_channels  int          Cin (packing hides it)
    strides      ints [sh, sw]
    pads         ints [ph, pw] zero padding on each side, as torch.nn.Conv2d(padding=(ph, pw))
    mode         string       "int" | "affine" | "bits"
Output, with y the integer convolution defined below
    "int":    int32   (N, Cout, OH, OW)   y
    "affine": float32 (N, Cout, OH, OW)   float32(y) * scale[o] + bias[o]  (two float32 roundings)
    "bits":   uint64  (N, OH, OW, ceil(Cout/64))  channel o is +1 iff y >= thresholds[o], else -1

y is exactly PyTorch's conv2d(a, w, stride, padding) where a and w are the decoded +-1 tensors and the
padding is ZERO (PyTorch pads the +-1 activations with 0, which no bit can hold). A kernel that pads with
+1 bits must subtract, per output channel and border position, the weights that fall on padding.
OH = (H + 2 ph - kh) // sh + 1, OW likewise.
"""
import numpy as np
import onnx

from sdbnn_deploy.bits import pack_signs, unpack_signs

MODES = ("int", "affine", "bits")


def integer_conv(x_signs: np.ndarray, w_signs: np.ndarray, strides, pads) -> np.ndarray:
    """conv2d of +-1 tensors x (N, Cin, H, W) and w (Cout, Cin, kh, kw), zero padding, as int32 NCHW.

    Computed in float32 through BLAS: exact, since every partial sum is an integer below 2**24.
    """
    sh, sw = strides
    ph, pw = pads
    n, cin, h, w = x_signs.shape
    cout, _, kh, kw = w_signs.shape
    xp = np.zeros((n, cin, h + 2 * ph, w + 2 * pw), dtype=np.float32)
    xp[:, :, ph:ph + h, pw:pw + w] = x_signs
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, oh, ow, cout), dtype=np.float32)
    wt = w_signs.astype(np.float32)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            y += np.tensordot(patch, wt[:, :, i, j], axes=([1], [1]))  # (n, oh, ow, cout)
    return y.transpose(0, 3, 1, 2).astype(np.int32)


def reference(x: np.ndarray, w: np.ndarray, *extra, in_channels: int, strides, pads, mode: str):
    if mode not in MODES:
        raise ValueError(f"BinaryConv2d mode must be one of {MODES}, not {mode!r}")
    x_signs = unpack_signs(x, in_channels).transpose(0, 3, 1, 2)
    w_signs = unpack_signs(w, in_channels).transpose(0, 3, 1, 2)
    y = integer_conv(x_signs, w_signs, strides, pads)
    if mode == "int":
        return y
    if mode == "affine":
        scale, bias = (np.asarray(t, dtype=np.float32).reshape(1, -1, 1, 1) for t in extra)
        return (y.astype(np.float32) * scale + bias).astype(np.float32)
    thresholds = np.asarray(extra[0], dtype=np.int32).reshape(1, -1, 1, 1)
    signs = np.where(y >= thresholds, 1, -1).astype(np.int8)
    return pack_signs(signs.transpose(0, 2, 3, 1))


def onnx_function(mode: str):
    """The ONNX function body for one mode (an ONNX function overload named after the mode).

    Unpack both operands to +-1 floats, zero-pad, Conv (exact: every partial sum is an integer below
    2**24), then the output stage.
    """
    from onnx import TensorProto

    from sdbnn_deploy.ops.onnx_body import Body, channels_first, channels_last, pack, per_channel, unpack

    b = Body()
    cin = b.op("Unsqueeze", b.attr_const("in_channels", "value_int"), b.const(np.array([0])))
    x = channels_first(b, unpack(b, "X", cin))
    w = channels_first(b, unpack(b, "W", cin))
    hw = b.attr_const("pads", "value_ints")
    zeros = b.const(np.zeros(2, dtype=np.int64))
    x = b.op("Pad", x, b.op("Concat", zeros, hw, zeros, hw, axis=0))
    conv = b.fresh("conv")
    node = b.op("Conv", x, w, out=conv)
    strides = onnx.AttributeProto(name="strides", ref_attr_name="strides", type=onnx.AttributeProto.INTS)
    b.nodes[-1].attribute.append(strides)
    extra = {"int": [], "affine": ["scale", "bias"], "bits": ["thresholds"]}[mode]
    if mode == "int":
        b.op("Cast", node, to=TensorProto.INT32, out="Y")
    elif mode == "affine":
        b.op("Add", b.op("Mul", node, per_channel(b, "scale")), per_channel(b, "bias"), out="Y")
    else:
        t = per_channel(b, b.op("Cast", "thresholds", to=TensorProto.FLOAT))
        pack(b, channels_last(b, b.op("Less", node, t)), out="Y")
    return b.function("BinaryConv2d", ["X", "W"] + extra, ["Y"], ["in_channels", "strides", "pads", "mode"],
                      overload=mode)
