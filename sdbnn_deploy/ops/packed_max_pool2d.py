"""PackedMaxPool2d: max-pool (or, per channel, min-pool) of packed +-1 values, without unpacking.

Inputs
    X         uint64 (N, H, W, ceil(C/64))  packed values
    min_mask  uint64 (ceil(C/64),)          channels whose bit is 1 take the MIN over the window
Attributes
    channels      int           C
    kernel_shape  ints [kh, kw]
    strides       ints [sh, sw]   (no padding, floor mode, as torch.nn.MaxPool2d(k, s))
Output
    Y         uint64 (N, OH, OW, ceil(C/64))

Why a min: a max-pool that sits between a binary conv and its BatchNorm (VGG-Small) commutes with the
sign of an increasing BN only. Where gamma < 0 the channel's weights were flipped, so the max of the
original counts is the min of the flipped ones, and so the min of the thresholded bits.
With bit 1 = -1: max over +-1 is the AND of the bits, min over +-1 is the OR of the bits.
"""
import numpy as np
import onnx


def reference(x: np.ndarray, min_mask: np.ndarray, *, channels: int, kernel_shape, strides) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64)
    kh, kw = kernel_shape
    sh, sw = strides
    n, h, w, nw = x.shape
    oh = (h - kh) // sh + 1
    ow = (w - kw) // sw + 1
    all_ones = np.full((n, oh, ow, nw), np.iinfo(np.uint64).max, dtype=np.uint64)
    any_one = np.zeros((n, oh, ow, nw), dtype=np.uint64)
    for i in range(kh):
        for j in range(kw):
            window = x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            all_ones &= window
            any_one |= window
    mask = np.asarray(min_mask, dtype=np.uint64)
    return (all_ones & ~mask) | (any_one & mask)


def onnx_function():
    """The ONNX function body: unpack, MaxPool of the +-1 values and of their negation, pick per channel."""
    from sdbnn_deploy.ops.onnx_body import Body, channels_first, channels_last, pack, per_channel, unpack

    b = Body()
    c = b.op("Unsqueeze", b.attr_const("channels", "value_int"), b.const(np.array([0])))
    x = channels_first(b, unpack(b, "X", c))
    take_min = per_channel(b, b.op("Less", unpack(b, "min_mask", c), b.const(np.float32(0))))
    pooled = []
    for v in (x, b.op("Neg", x)):
        b.op("MaxPool", v)
        for name in ("kernel_shape", "strides"):
            b.nodes[-1].attribute.append(onnx.AttributeProto(name=name, ref_attr_name=name,
                                                             type=onnx.AttributeProto.INTS))
        pooled.append(b.nodes[-1].output[0])
    result = b.op("Where", take_min, b.op("Neg", pooled[1]), pooled[0])
    pack(b, channels_last(b, b.op("Less", result, b.const(np.float32(0)))), out="Y")
    return b.function("PackedMaxPool2d", ["X", "min_mask"], ["Y"], ["channels", "kernel_shape", "strides"])
