"""BinarizePack: shift real activations, take their sign, pack the signs into words.

Inputs
    X      float32 (N, C, H, W)   real activations (NCHW, as the float layers around produce them)
    shift  float32 (C,) or (N, C) the ASD shift: static sigmoid(beta) per channel, or the output of the
                                  squeeze-excitation block per sample and channel (dynamic ASD)
Attributes
    none (C is read from X)
Output
    Y      uint64 (N, H, W, ceil(C/64)) packed signs, channels innermost (sdbnn_deploy.bits)

Rule: the value of channel c is +1 iff X + shift > 0, computed in float32; otherwise -1.
PyTorch's sign(0) is 0, which one bit cannot hold: the equality case X + shift == 0 goes to -1.
"""
import numpy as np

from sdbnn_deploy.bits import pack_signs


def reference(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    shift = np.asarray(shift, dtype=np.float32)
    shift = shift.reshape(shift.shape + (1, 1))  # (C,1,1) or (N,C,1,1): broadcasts over NCHW
    signs = np.where(x + shift > 0, 1, -1).astype(np.int8)
    return pack_signs(signs.transpose(0, 2, 3, 1))


def onnx_function():
    """The ONNX function body: Add, Greater, Not, then pack (sdbnn_deploy.ops.onnx_body.pack)."""
    from sdbnn_deploy.ops.onnx_body import Body, channels_last, pack

    b = Body()
    shift = b.op("Unsqueeze", "shift", b.const(np.array([-2, -1])))  # (C,1,1) or (N,C,1,1)
    positive = b.op("Greater", b.op("Add", "X", shift), b.const(np.float32(0)))
    pack(b, channels_last(b, b.op("Not", positive)), out="Y")
    return b.function("BinarizePack", ["X", "shift"], ["Y"], [])
