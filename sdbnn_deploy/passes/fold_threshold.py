"""fold_threshold: a binary conv whose only use is the sign of the next static-ASD binary conv.

Pattern (each value read by the next node only):
    BinaryConv2d(int) -> Cast -> [MaxPool] -> BatchNormalization -> Clip -> BinarizePack(., constant shift)
becomes
    BinaryConv2d(bits, thresholds) -> [PackedMaxPool2d]

The conv's output y is an integer in [-K, K], K = Cin*kh*kw. For each output channel we evaluate what
PyTorch computes after it, sign(hardtanh(BN(y)) + s) > 0, at every integer y in [-K, K] (float32,
torch's BN coefficients, fused multiply-add as torch's vectorised kernel does), and read off the step:
- increasing in y (gamma > 0): +1 iff y >= T, T the first y that gives +1;
- decreasing (gamma < 0): flip the channel (negate its weights, so y' = -y): +1 iff y' >= -T', T' the
  last y that gives +1;
- constant (gamma == 0, or BN saturates over [-K, K]): T = -K-1 (always +1) or K+1 (always -1).
Equality: where BN(y) + s is exactly 0, torch.sign gives 0, which one bit cannot hold; our bit is -1
there (the deployed rule is "+1 iff > 0", as in BinarizePack).
A max-pool between conv and BN is done on the bits: max over +-1 for increasing channels, min for
flipped ones (the max of y is the min of y' = -y), the min_mask of PackedMaxPool2d.
"""
import numpy as np

from sdbnn_deploy.bits import pack_signs
from sdbnn_deploy.graph import Graph, Node


def bn_coefficients(gamma, beta, mean, var, eps):
    """torch's eval BatchNorm as y * a + b, a and b computed in float32 the way ATen computes them."""
    f32 = np.float32
    invstd = (f32(1) / np.sqrt((np.asarray(var, f32) + f32(eps)).astype(f32))).astype(f32)
    a = (invstd * np.asarray(gamma, f32)).astype(f32)
    b = (np.asarray(beta, f32) - np.asarray(mean, f32) * a).astype(f32)
    return a, b


def sign_table(a, b, lo, hi, shift, k):
    """(Cout, 2K+1) bools: is sign(hardtanh(a*y + b) + s) positive, for y = -K..K (fused multiply-add)."""
    y = np.arange(-k, k + 1, dtype=np.float64)
    z = (y[None, :] * a[:, None].astype(np.float64) + b[:, None]).astype(np.float32)
    z = np.clip(z, np.float32(lo), np.float32(hi))
    return (z + np.asarray(shift, np.float32)[:, None]) > 0


def thresholds_from_table(positive, k):
    """Per channel (threshold, flipped) such that bit +1 iff (flipped ? -y : y) >= threshold."""
    ys = np.arange(-k, k + 1)
    thresholds = np.empty(len(positive), dtype=np.int32)
    flipped = np.zeros(len(positive), dtype=bool)
    for o, row in enumerate(positive):
        steps = np.flatnonzero(row[1:] != row[:-1])
        if len(steps) > 1:
            raise AssertionError(f"channel {o}: BN sign is not monotone in y")
        if len(steps) == 0:
            thresholds[o] = -k - 1 if row[0] else k + 1
        elif row[-1]:  # increasing
            thresholds[o] = ys[steps[0] + 1]
        else:  # decreasing: +1 iff y <= ys[step]  <=>  -y >= -ys[step]
            thresholds[o] = -ys[steps[0]]
            flipped[o] = True
    return thresholds, flipped


def _match(g: Graph, conv: Node):
    """The chain after `conv` as (cast, pool or None, bn, clip, binarize), or None."""
    cast = g.single_consumer(conv.outputs[0])
    if cast is None or cast.op != "Cast":
        return None
    nxt = g.single_consumer(cast.outputs[0])
    pool = None
    if nxt is not None and nxt.op == "MaxPool":
        pool, nxt = nxt, g.single_consumer(nxt.outputs[0])
        if any(pool.attrs.get("pads", [0])) or pool.attrs.get("ceil_mode", 0):
            return None
    bn = nxt
    if bn is None or bn.op != "BatchNormalization" or not all(v in g.consts for v in bn.inputs[1:]):
        return None
    clip = g.single_consumer(bn.outputs[0])
    if clip is None or clip.op != "Clip":
        return None
    binarize = g.single_consumer(clip.outputs[0])
    if binarize is None or binarize.op != "BinarizePack" or binarize.inputs[1] not in g.consts:
        return None
    lo, hi = (float(g.consts[v]) for v in clip.inputs[1:3])
    if not (-1.0 <= lo < 0 and 0 < hi <= 1.0):
        return None
    return cast, pool, bn, clip, binarize


def fold_threshold(g: Graph) -> Graph:
    for conv in [n for n in g.nodes_of("BinaryConv2d") if n.attrs["mode"] == "int"]:
        chain = _match(g, conv)
        if chain is None:
            continue
        cast, pool, bn, clip, binarize = chain
        w = g.consts[conv.inputs[1]]
        k = int(np.prod(w.shape[1:]))
        a, b = bn_coefficients(*(g.consts[v] for v in bn.inputs[1:]), bn.attrs.get("epsilon", 1e-5))
        lo, hi = (g.consts[v] for v in clip.inputs[1:3])
        table = sign_table(a, b, lo, hi, g.consts[binarize.inputs[1]], k)
        thresholds, flipped = thresholds_from_table(table, k)

        conv.inputs = [conv.inputs[0], g.add_const(f"{conv.name}.W", np.where(flipped[:, None, None, None], -w, w)),
                       g.add_const(f"{conv.name}.thresholds", thresholds)]
        conv.attrs.update(mode="bits", _flipped=flipped, _constant=(table.all(1) | ~table.any(1)))
        result = conv.outputs[0]
        if pool is not None:
            pool.op = "PackedMaxPool2d"
            mask = g.add_const(f"{conv.name}.min_mask", pack_signs(np.where(flipped, -1, 1)))
            pool.inputs = [conv.outputs[0], mask]
            pool.attrs = {"channels": len(thresholds), "kernel_shape": pool.attrs["kernel_shape"],
                          "strides": pool.attrs["strides"]}
            result = pool.outputs[0]
        g.rename_uses(binarize.outputs[0], result)
        g.remove(cast, bn, clip, binarize)
    return g
