"""fold_batchnorm: BinaryConv2d(int) -> Cast -> BatchNormalization  =>  BinaryConv2d(affine).

Where a real value is needed after a binary conv (residual add, SE pooling, the head), its BatchNorm
becomes the kernel's output stage y * scale + bias, with torch's own float32 coefficients
(fold_threshold.bn_coefficients). A max-pool between conv and BN stays as it is (Cast -> MaxPool -> BN):
max-pool does not commute with a BN of negative gamma.
"""
from sdbnn_deploy.graph import Graph
from sdbnn_deploy.passes.fold_threshold import bn_coefficients


def fold_batchnorm(g: Graph) -> Graph:
    for conv in [n for n in g.nodes_of("BinaryConv2d") if n.attrs["mode"] == "int"]:
        cast = g.single_consumer(conv.outputs[0])
        bn = cast and g.single_consumer(cast.outputs[0])
        if cast is None or cast.op != "Cast" or bn is None or bn.op != "BatchNormalization":
            continue
        if not all(v in g.consts for v in bn.inputs[1:]):
            continue
        scale, bias = bn_coefficients(*(g.consts[v] for v in bn.inputs[1:]), bn.attrs.get("epsilon", 1e-5))
        conv.inputs = conv.inputs[:2] + [g.add_const(f"{conv.name}.scale", scale),
                                         g.add_const(f"{conv.name}.bias", bias)]
        conv.attrs["mode"] = "affine"
        conv.outputs = list(bn.outputs)
        g.remove(cast, bn)
    return g
