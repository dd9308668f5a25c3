"""fold_float_threshold: a float conv whose only use is the sign of the next static-ASD binary conv.

Pattern (each value read by the next node only):
    Conv -> BatchNormalization -> [Clip] -> BinarizePack(., constant shift s)
becomes
    Conv(weights and bias negated where gamma < 0, zeroed where the bit is constant) -> BinarizePack(t)

PyTorch computes the bit of channel c as sign(hardtanh(a*y + b) + s) > 0, with y the conv output and
a, b torch's BN coefficients (fold_threshold.bn_coefficients). Adding s and comparing with 0 is exact
in float (the rounded sum has the sign of the exact one), so the bit is hardtanh(z) > -s, z = a*y + b:
- -s below the clip's low bound: always +1; -s at or above its high bound: always -1;
- otherwise z > -s, that is  a*y + b + s > 0  <=>  sign(a)*y + t > 0  with  t = (b + s) / |a|.
The conv computes y' = sign(a)*y by negating the channel's weights and bias (exact in float: each
product and partial sum only changes sign) and BinarizePack gets the shift t. A channel whose bit is
constant (gamma == 0, or s beyond the clip) gets zero weights and bias (y' = 0) and t = +1 or -1.

Where the boundary lands is float rounding: PyTorch rounds z (and its conv sums in its own order), we
round t once (computed in float64). The two rules agree except for conv outputs within a few float32
ulps of the threshold -(b + s)/a; the conversion check counts such bits (input_bit_mismatches of the
first binary layer, as it did for the rounding of the float conv itself) and proves the binary convs
on the deployed bits. The BN pass over the conv output is gone: one read of y and one write of bits.

Left alone: a conv whose BN output is also read elsewhere (ResNet stems feed the residual), and any
BinarizePack with a shift computed at run time (dynamic ASD).
"""
import numpy as np

from sdbnn_deploy.graph import Graph, Node
from sdbnn_deploy.passes.fold_threshold import bn_coefficients


def bit_rule(a, b, shift, lo=-np.inf, hi=np.inf):
    """Per channel (direction, t): the bit is  direction*y + t > 0  for a conv output y, direction
    +1, -1 (gamma < 0) or 0 (a constant bit, then t = +1 or -1); float32 arrays of torch's
    sign(clip(a*y + b, lo, hi) + s) > 0 up to rounding (module docstring)."""
    a, b, s = (np.asarray(v, np.float64) for v in (a, b, shift))
    direction = np.sign(a)
    threshold = np.divide(b + s, np.abs(a), out=np.zeros_like(a), where=a != 0)
    constant = np.where(b + s > 0, 1.0, -1.0)  # a == 0: the bit of clip(b) + s, with -s inside the clip
    constant = np.where(-s < lo, 1.0, np.where(-s >= hi, -1.0, constant))
    fixed = (a == 0) | (-s < lo) | (-s >= hi)
    direction = np.where(fixed, 0.0, direction)
    return direction.astype(np.float32), np.where(fixed, constant, threshold).astype(np.float32)


def _match(g: Graph, conv: Node):
    """The chain after `conv` as (bn, clip or None, binarize), or None."""
    if not all(v in g.consts for v in conv.inputs[1:]):
        return None
    bn = g.single_consumer(conv.outputs[0])
    if bn is None or bn.op != "BatchNormalization" or not all(v in g.consts for v in bn.inputs[1:]):
        return None
    nxt, clip = g.single_consumer(bn.outputs[0]), None
    if nxt is not None and nxt.op == "Clip":
        clip, nxt = nxt, g.single_consumer(nxt.outputs[0])
        if len(clip.inputs) != 3 or not all(v in g.consts for v in clip.inputs[1:]):
            return None
    if nxt is None or nxt.op != "BinarizePack" or nxt.inputs[1] not in g.consts:
        return None
    return bn, clip, nxt


def _signed(array, direction):
    """Output channel c (axis 0) of `array` times direction[c]: negated, kept or +0 (exact in float)."""
    d = direction.reshape((-1,) + (1,) * (array.ndim - 1))
    return np.where(d == 0, np.float32(0), np.where(d < 0, -array, array)).astype(np.float32)


def fold_float_threshold(g: Graph) -> Graph:
    for conv in g.nodes_of("Conv"):
        chain = _match(g, conv)
        if chain is None:
            continue
        bn, clip, binarize = chain
        a, b = bn_coefficients(*(g.consts[v] for v in bn.inputs[1:]), bn.attrs.get("epsilon", 1e-5))
        bounds = [float(g.consts[v]) for v in clip.inputs[1:3]] if clip is not None else []
        direction, shift = bit_rule(a, b, g.consts[binarize.inputs[1]], *bounds)
        x, w, *bias = conv.inputs
        conv.inputs = [x, g.add_const(f"{conv.name}.weight_signed", _signed(g.consts[w], direction))]
        conv.inputs += [g.add_const(f"{conv.name}.bias_signed", _signed(g.consts[v], direction)) for v in bias]
        conv.outputs = [f"{conv.outputs[0]}.signed"]  # no longer PyTorch's value of that name (departure)
        binarize.inputs = [conv.outputs[0], g.add_const(f"{binarize.name}.shift_folded", shift)]
        g.remove(*[n for n in (bn, clip) if n is not None])
    return g
