"""The one in-memory model description that every pass reads and returns.

A Graph is a list of Nodes in execution order. Each Node has an op type, the names of the values it
reads and writes, and attributes. Constants (weights, thresholds, ...) are numpy arrays kept by
name in `consts`. Op types are ONNX op types: standard ones as in ONNX (opset 18, same inputs and
attributes), ours as documented in sdbnn_deploy.ops, plus one op that only lives between the passes:

    WsdConv2d(X packed, weight float OIHW, alpha float (Cout,))  the binary conv as trained, before
        its WSD shift is folded (see passes/fold_wsd.py).

Attributes whose name starts with "_" are bookkeeping for reports and checks (for example
"_flipped" on a BinaryConv2d); they are not exported.
"""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Node:
    op: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)
    name: str = ""  # where the node came from: the torch module path, used in reports and errors


@dataclass
class Graph:
    nodes: list
    inputs: dict  # value name -> shape, the batch dimension first
    outputs: list
    consts: dict = field(default_factory=dict)
    shapes: dict = field(default_factory=dict)  # value name -> shape seen when tracing
    meta: dict = field(default_factory=dict)

    def producer(self, value):
        """The node that writes `value`, or None for inputs and constants."""
        for node in self.nodes:
            if value in node.outputs:
                return node
        return None

    def consumers(self, value):
        """The nodes that read `value`."""
        return [node for node in self.nodes if value in node.inputs]

    def single_consumer(self, value):
        """The only node that reads `value`, or None if there are none, several, or it is a graph output."""
        users = self.consumers(value)
        if len(users) != 1 or value in self.outputs:
            return None
        return users[0]

    def add_const(self, hint, array):
        """Store a constant under a fresh name derived from `hint`; return the name."""
        name, k = hint, 1
        while name in self.consts or name in self.inputs:
            k += 1
            name = f"{hint}_{k}"
        self.consts[name] = np.asarray(array)
        return name

    def rename_uses(self, old, new):
        """Make every reader of `old` (and the graph outputs) read `new` instead."""
        for node in self.nodes:
            node.inputs = [new if v == old else v for v in node.inputs]
        self.outputs = [new if v == old else v for v in self.outputs]

    def remove(self, *nodes):
        """Drop nodes, then the constants that nothing reads any more."""
        gone = {id(n) for n in nodes}
        self.nodes = [n for n in self.nodes if id(n) not in gone]
        used = {v for n in self.nodes for v in n.inputs}
        self.consts = {k: v for k, v in self.consts.items() if k in used}

    def nodes_of(self, op):
        return [n for n in self.nodes if n.op == op]
