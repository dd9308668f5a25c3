"""pack_weights: +-1 weights (Cout, Cin, kh, kw) int8 -> uint64 words (Cout, kh, kw, ceil(Cin/64)).

Channels innermost, bit 1 = -1 (sdbnn_deploy.bits). The conv records Cin as its in_channels attribute.
"""
from sdbnn_deploy.bits import pack_signs
from sdbnn_deploy.graph import Graph


def pack_weights(g: Graph) -> Graph:
    for conv in g.nodes_of("BinaryConv2d"):
        w = g.consts[conv.inputs[1]]
        if w.dtype.kind == "u":
            continue  # packed already
        conv.attrs["in_channels"] = int(w.shape[1])
        conv.inputs[1] = g.add_const(f"{conv.name}.W_packed", pack_signs(w.transpose(0, 2, 3, 1)))
    g.remove()
    return g
