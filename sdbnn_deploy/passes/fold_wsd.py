"""fold_wsd: WsdConv2d(bits, weight, alpha) -> BinaryConv2d(bits, W, mode "int"), W the +-1 weights.

WSD, exactly as the trained layer computes it, in float32 with torch:
    mw[o] = 0.01 * mean(weight[o])
    W     = sign(weight + sigmoid(alpha)[o] * mw[o])
W stays int8 (Cout, Cin, kh, kw) until pack_weights. torch.sign(0) = 0 cannot be one bit: a weight that
lands exactly on zero is reported, naming the layer.
"""
import numpy as np
import torch

from sdbnn_deploy.errors import UserError
from sdbnn_deploy.graph import Graph


def wsd_signs(weight: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The +-1 (or 0) weights the trained layer uses: sign(weight + sigmoid(alpha) * 0.01 * mean)."""
    w = torch.from_numpy(np.asarray(weight, dtype=np.float32))
    a = torch.from_numpy(np.asarray(alpha, dtype=np.float32))
    mw = 0.01 * w.flatten(1).mean(dim=1)
    return torch.sign(w + (torch.sigmoid(a) * mw)[:, None, None, None]).numpy().astype(np.int8)


def fold_wsd(g: Graph) -> Graph:
    for node in g.nodes_of("WsdConv2d"):
        bits, weight, alpha = node.inputs
        signs = wsd_signs(g.consts[weight], g.consts[alpha])
        if np.any(signs == 0):
            raise UserError(f"layer {node.name}: a WSD-shifted weight is exactly 0, which has no binary value")
        node.op = "BinaryConv2d"
        node.inputs = [bits, g.add_const(f"{node.name}.W", signs)]
        node.attrs["mode"] = "int"
    g.remove()  # drops the float weights and alphas
    return g
