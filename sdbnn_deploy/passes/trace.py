"""trace: a PyTorch SD-BNN module -> Graph.

torch.fx records the forward with every IRConv2d kept whole (a leaf), then a torch.fx Interpreter runs
it once on an example input so that every shape computation (`x.shape[3]`, `size()`) has a concrete
value. Each recorded call becomes standard ONNX ops, except IRConv2d, which becomes

    shift        static ASD: the constant sigmoid(beta) (C,); dynamic ASD: the squeeze-excitation
                 block as float ops, ReduceMean -> Gemm -> Relu -> Gemm -> Sigmoid, giving (N, C)
    BinarizePack(x, shift)                      the signs of x + shift, packed
    WsdConv2d(bits, weight, alpha) -> Cast      the conv as trained, its integer output as a float

A layer we cannot express raises a UserError that names its module path.
"""
import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from sdbnn_deploy.errors import UserError
from sdbnn_deploy.graph import Graph, Node
from sdbnn_deploy.models.layers import IRConv2d

TRACE_BATCH = 2  # a batch size other than 1, so the batch dimension can be told apart from the others


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, IRConv2d) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, input_shape) -> Graph:
    """Record `model` (eval mode) on inputs of shape (C, H, W) as a Graph."""
    model = model.eval()
    try:
        fx_graph = _Tracer().trace(model)
    except Exception as e:  # torch.fx could not follow the forward
        raise UserError(f"cannot trace the model's forward with torch.fx: {_first_line(e)}") from None
    gm = fx.GraphModule(model, fx_graph)
    example = torch.zeros((TRACE_BATCH,) + tuple(input_shape))
    values = _run(gm, example, input_shape)
    return _Builder(gm, values).build(input_shape)


def _run(gm, example, input_shape):
    """Run the traced module once; return {fx node: value}. A shape it cannot take is the user's error."""
    values = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            values[n] = super().run_node(n)
            return values[n]

    try:
        with torch.no_grad():
            Recorder(gm).run(example)
    except Exception as e:
        shape = "x".join(str(d) for d in input_shape)
        raise UserError(f"the model cannot take inputs of shape {shape} (C,H,W): {_first_line(e)}") from None
    return values


def _first_line(e):
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


class _Builder:
    """Turns the fx nodes, one at a time, into Graph nodes."""

    def __init__(self, gm, values):
        self.gm = gm
        self.values = values
        self.g = Graph(nodes=[], inputs={}, outputs=[])
        self.name_of = {}  # fx node -> Graph value name

    def build(self, input_shape):
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                self.g.inputs["input"] = (None,) + tuple(input_shape)
                self.name_of[n] = "input"
            elif n.op == "output":
                outs = n.args[0] if isinstance(n.args[0], (tuple, list)) else (n.args[0],)
                self.g.outputs = [self.name_of[o] for o in outs]
            elif not isinstance(self.values[n], torch.Tensor):
                continue  # a shape or size computation: its concrete value is read where it is used
            elif n.op == "get_attr":
                self.name_of[n] = self.g.add_const(n.target, self.values[n].detach().numpy())
            else:
                self._convert(n)
        return self.g

    # ---- helpers -------------------------------------------------------------------------------
    def arg(self, a):
        """A Graph value name for a tensor argument, else the concrete Python value."""
        if isinstance(a, fx.Node):
            v = self.values[a]
            return self.name_of[a] if isinstance(v, torch.Tensor) else v
        if isinstance(a, (tuple, list)):
            return type(a)(self.arg(x) for x in a)
        return a

    def emit(self, op, inputs, fx_node, attrs=None, name=None, n_out=1):
        """Append a node; its (first) output takes the fx node's name and traced shape."""
        base = fx_node.name
        outs = [base if i == 0 else f"{base}_{i}" for i in range(n_out)]
        self.g.nodes.append(Node(op, list(inputs), outs, attrs or {}, name or str(fx_node.target)))
        return outs[0]

    def tmp(self, op, inputs, hint, attrs=None, name=""):
        """Append a node with a fresh intermediate output name."""
        out = f"{hint}_{len(self.g.nodes)}"
        self.g.nodes.append(Node(op, list(inputs), [out], attrs or {}, name))
        return out

    def const(self, hint, array):
        return self.g.add_const(hint, np.asarray(array))

    def finish(self, n, out):
        self.name_of[n] = out
        v = self.values[n]
        self.g.shapes[out] = tuple(v.shape)

    # ---- dispatch ------------------------------------------------------------------------------
    def _convert(self, n):
        if n.op == "call_module":
            m = self.gm.get_submodule(n.target)
            handler = _MODULES.get(type(m))
            if isinstance(m, IRConv2d):
                handler = _Builder._irconv
            if handler is None:
                raise UserError(f"unsupported layer {n.target} ({type(m).__name__})")
            out = handler(self, n, m)
        elif n.op == "call_function":
            handler = _FUNCTIONS.get(n.target)
            if handler is None:
                raise UserError(f"unsupported operation {getattr(n.target, '__name__', n.target)} at {n.name}")
            out = handler(self, n)
        elif n.op == "call_method":
            handler = _METHODS.get(n.target)
            if handler is None:
                raise UserError(f"unsupported tensor method .{n.target}() at {n.name}")
            out = handler(self, n)
        else:
            raise UserError(f"unsupported graph element {n.op} {n.target}")
        self.finish(n, out)

    # ---- the binary conv ---------------------------------------------------------------------------
    def _irconv(self, n, m):
        path = n.target
        if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros" or m.bias is not None:
            raise UserError(f"unsupported binary conv {path}: groups, dilation, bias and non-zero padding "
                            "modes are not part of SD-BNN")
        if isinstance(m.padding, str):
            raise UserError(f"unsupported binary conv {path}: padding={m.padding!r}; give explicit padding")
        x = self.arg(n.args[0])
        if m.asd == "static":
            shift = self.const(f"{path}.shift", torch.sigmoid(m.beta.detach()).numpy())
        else:
            shift = self._se_block(x, m.dybeta, f"{path}.dybeta")
        if not getattr(m, "binary_weights", True):
            return self._float_weight_conv(n, m, x, shift)
        bits = self.tmp("BinarizePack", [x, shift], f"{path}.bits", name=path)
        weight = self.const(f"{path}.weight", m.weight.detach().numpy())
        alpha = self.const(f"{path}.alpha", m.alpha.detach().numpy())
        attrs = {"strides": list(m.stride), "pads": list(m.padding), "in_channels": m.in_channels}
        y = self.tmp("WsdConv2d", [bits, weight, alpha], f"{path}.y", attrs, name=path)
        return self.emit("Cast", [y], n, {"to": "float32"}, name=path)

    def _float_weight_conv(self, n, m, x, shift):
        """The "32/1" variant: float weights on +-1 inputs, a float Conv (no bit-serial speed-up)."""
        path = n.target
        self.g.meta.setdefault("warnings", []).append(
            f"layer {path} has float weights (a 32/1 model): exported as a float conv on +-1 inputs, "
            "it gets no bit-serial speed-up")
        shift = self.tmp("Unsqueeze", [shift, self.const("axes_hw", np.array([-2, -1]))], f"{path}.shift4", name=path)
        positive = self.tmp("Greater", [self.tmp("Add", [x, shift], f"{path}.shifted", name=path),
                                        self.const("zero", np.float32(0))], f"{path}.positive", name=path)
        signs = self.tmp("Where", [positive, self.const("one", np.float32(1)), self.const("minus_one", np.float32(-1))],
                         f"{path}.signs", name=path)
        ph, pw = m.padding
        attrs = {"strides": list(m.stride), "pads": [ph, pw, ph, pw], "kernel_shape": list(m.kernel_size)}
        return self.emit("Conv", [signs, self.const(f"{path}.weight", m.weight.detach().numpy())], n, attrs, name=path)

    def _se_block(self, x, se, path):
        fc = getattr(se, "fc", None)
        kinds = [type(m) for m in fc] if isinstance(fc, nn.Sequential) else None
        if kinds != [nn.Linear, nn.ReLU, nn.Linear, nn.Sigmoid] or fc[0].bias is not None or fc[2].bias is not None:
            raise UserError(f"unsupported ASD block {path}: expected fc = Linear -> ReLU -> Linear -> Sigmoid "
                            "without biases")
        pooled = self.tmp("ReduceMean", [x, self.const(f"{path}.axes", np.array([2, 3]))], f"{path}.pool",
                          {"keepdims": 0}, name=path)
        h = self.tmp("Gemm", [pooled, self.const(f"{path}.fc.0.weight", fc[0].weight.detach().numpy())],
                     f"{path}.fc0", {"transB": 1}, name=path)
        h = self.tmp("Relu", [h], f"{path}.relu", name=path)
        h = self.tmp("Gemm", [h, self.const(f"{path}.fc.2.weight", fc[2].weight.detach().numpy())],
                     f"{path}.fc2", {"transB": 1}, name=path)
        return self.tmp("Sigmoid", [h], f"{path}.shift", name=path)

    # ---- standard modules --------------------------------------------------------------------------
    def _conv(self, n, m):
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise UserError(f"unsupported conv {n.target}: only explicit zero padding is supported")
        ph, pw = m.padding
        ins = [self.arg(n.args[0]), self.const(f"{n.target}.weight", m.weight.detach().numpy())]
        if m.bias is not None:
            ins.append(self.const(f"{n.target}.bias", m.bias.detach().numpy()))
        attrs = {"strides": list(m.stride), "pads": [ph, pw, ph, pw], "dilations": list(m.dilation),
                 "group": m.groups, "kernel_shape": list(m.kernel_size)}
        return self.emit("Conv", ins, n, attrs)

    def _batchnorm(self, n, m):
        if m.running_mean is None:
            raise UserError(f"unsupported BatchNorm {n.target}: it keeps no running statistics")
        c = m.num_features
        weight = m.weight.detach().numpy() if m.weight is not None else np.ones(c, np.float32)
        bias = m.bias.detach().numpy() if m.bias is not None else np.zeros(c, np.float32)
        ins = [self.arg(n.args[0]), self.const(f"{n.target}.weight", weight),
               self.const(f"{n.target}.bias", bias),
               self.const(f"{n.target}.running_mean", m.running_mean.numpy()),
               self.const(f"{n.target}.running_var", m.running_var.numpy())]
        return self.emit("BatchNormalization", ins, n, {"epsilon": float(m.eps)})

    def _linear(self, n, m):
        ins = [self.arg(n.args[0]), self.const(f"{n.target}.weight", m.weight.detach().numpy())]
        if m.bias is not None:
            ins.append(self.const(f"{n.target}.bias", m.bias.detach().numpy()))
        return self.emit("Gemm", ins, n, {"transB": 1})

    def _hardtanh_module(self, n, m):
        return self._clip(n, self.arg(n.args[0]), m.min_val, m.max_val)

    def _clip(self, n, x, lo, hi):
        ins = [x, self.const("clip_min", np.float32(lo)), self.const("clip_max", np.float32(hi))]
        return self.emit("Clip", ins, n)

    def _unary(op):
        def handler(self, n, m=None):
            return self.emit(op, [self.arg(n.args[0])], n)
        return handler

    def _prelu(self, n, m):
        slope = m.weight.detach().numpy()
        slope = slope.reshape(-1, 1, 1) if slope.size > 1 else slope
        return self.emit("PRelu", [self.arg(n.args[0]), self.const(f"{n.target}.weight", slope)], n)

    def _pool(self, n, op, x, kernel, stride, padding, ceil_mode=False, count_include_pad=True):
        pair = lambda v: list(v) if isinstance(v, (tuple, list)) else [v, v]
        kernel = pair(kernel)
        stride = pair(stride if stride not in (None, []) else kernel)
        ph, pw = pair(padding)
        attrs = {"kernel_shape": kernel, "strides": stride, "pads": [ph, pw, ph, pw], "ceil_mode": int(ceil_mode)}
        if op == "AveragePool":
            attrs["count_include_pad"] = int(count_include_pad)
        return self.emit(op, [x], n, attrs)

    def _maxpool_module(self, n, m):
        if m.dilation not in (1, (1, 1)):
            raise UserError(f"unsupported max-pool {n.target}: dilation {m.dilation}")
        return self._pool(n, "MaxPool", self.arg(n.args[0]), m.kernel_size, m.stride, m.padding, m.ceil_mode)

    def _avgpool_module(self, n, m):
        if m.divisor_override:
            raise UserError(f"unsupported avg-pool {n.target}: divisor_override")
        return self._pool(n, "AveragePool", self.arg(n.args[0]), m.kernel_size, m.stride, m.padding,
                          m.ceil_mode, m.count_include_pad)

    def _adaptive_avgpool_module(self, n, m):
        size = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size,) * 2
        if tuple(size) != (1, 1):
            raise UserError(f"unsupported adaptive pool {n.target}: output size {m.output_size} (only 1)")
        return self.emit("GlobalAveragePool", [self.arg(n.args[0])], n)

    def _identity(self, n, m=None):
        return self.arg(n.args[0])

    def _flatten_module(self, n, m):
        return self._flatten(n, self.arg(n.args[0]), m.start_dim, m.end_dim)

    def _flatten(self, n, x, start, end=-1):
        rank = len(self.values[n.args[0]].shape)
        if end not in (-1, rank - 1) or start not in (1, -rank + 1):
            return self._reshape(n, x, tuple(self.values[n].shape))
        return self.emit("Flatten", [x], n, {"axis": 1})

    def _reshape(self, n, x, shape):
        shape = [0 if i == 0 and d == TRACE_BATCH else int(d) for i, d in enumerate(shape)]
        return self.emit("Reshape", [x, self.const("shape", np.array(shape, np.int64))], n)

    # ---- functions and methods -----------------------------------------------------------------------
    def _binary(op):
        def handler(self, n):
            a, b = (self._as_value(v, n) for v in n.args[:2])
            return self.emit(op, [a, b], n)
        return handler

    def _as_value(self, a, n):
        v = self.arg(a)
        if isinstance(v, str):
            return v
        return self.const("scalar", np.array(v, dtype=np.float32))

    def _f_hardtanh(self, n):
        lo = n.kwargs.get("min_val", n.args[1] if len(n.args) > 1 else -1.0)
        hi = n.kwargs.get("max_val", n.args[2] if len(n.args) > 2 else 1.0)
        return self._clip(n, self.arg(n.args[0]), lo, hi)

    def _f_avg_pool2d(self, n):
        a = _call_args(n, ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                           "divisor_override"], self.arg)
        if a.get("divisor_override"):
            raise UserError(f"unsupported avg_pool2d at {n.name}: divisor_override")
        return self._pool(n, "AveragePool", a["input"], a["kernel_size"], a.get("stride"), a.get("padding", 0),
                          a.get("ceil_mode", False), a.get("count_include_pad", True))

    def _f_max_pool2d(self, n):
        a = _call_args(n, ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"], self.arg)
        if a.get("dilation", 1) not in (1, (1, 1)):
            raise UserError(f"unsupported max_pool2d at {n.name}: dilation")
        return self._pool(n, "MaxPool", a["input"], a["kernel_size"], a.get("stride"), a.get("padding", 0),
                          a.get("ceil_mode", False))

    def _f_adaptive_avg_pool2d(self, n):
        size = self.arg(n.args[1])
        if size not in (1, (1, 1), [1, 1]):
            raise UserError(f"unsupported adaptive_avg_pool2d at {n.name}: output size {size} (only 1)")
        return self.emit("GlobalAveragePool", [self.arg(n.args[0])], n)

    def _f_flatten(self, n):
        a = _call_args(n, ["input", "start_dim", "end_dim"], self.arg)
        return self._flatten(n, a["input"], a.get("start_dim", 0), a.get("end_dim", -1))

    def _m_flatten(self, n):
        return self._f_flatten(n)

    def _m_view(self, n):
        return self._reshape(n, self.arg(n.args[0]), tuple(self.values[n].shape))

    def _getitem(self, n):
        x, index = self.arg(n.args[0]), self.arg(n.args[1])
        index = index if isinstance(index, tuple) else (index,)
        starts, ends, axes, steps = [], [], [], []
        for axis, s in enumerate(index):
            if s is None or not isinstance(s, slice):
                raise UserError(f"unsupported indexing at {n.name}: only slices are supported")
            if s == slice(None):
                continue
            starts.append(s.start or 0)
            ends.append(s.stop if s.stop is not None else np.iinfo(np.int64).max)
            axes.append(axis)
            steps.append(s.step or 1)
        if not axes:
            return x
        ins = [x] + [self.const(k, np.array(v, np.int64)) for k, v in
                     (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))]
        return self.emit("Slice", ins, n)

    def _f_pad(self, n):
        a = _call_args(n, ["input", "pad", "mode", "value"], self.arg)
        if a.get("mode", "constant") != "constant":
            raise UserError(f"unsupported pad at {n.name}: mode {a['mode']!r}")
        pad = list(a["pad"])
        rank = len(self.values[n.args[0]].shape)
        begins, ends = [0] * rank, [0] * rank
        for i in range(len(pad) // 2):  # torch lists the last dimension first
            begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
        value = a.get("value") or 0.0
        ins = [a["input"], self.const("pads", np.array(begins + ends, np.int64)),
               self.const("pad_value", np.float32(value))]
        return self.emit("Pad", ins, n, {"mode": "constant"})

    def _mean(self, n):
        a = _call_args(n, ["input", "dim", "keepdim"], self.arg)
        dims = a["dim"] if isinstance(a["dim"], (tuple, list)) else [a["dim"]]
        ins = [a["input"], self.const("axes", np.array(dims, np.int64))]
        return self.emit("ReduceMean", ins, n, {"keepdims": int(bool(a.get("keepdim", False)))})


def _call_args(n, names, resolve):
    """Positional and keyword arguments of a call, by name, resolved to values."""
    out = {k: resolve(v) for k, v in zip(names, n.args)}
    out.update({k: resolve(v) for k, v in n.kwargs.items()})
    return out


_MODULES = {
    nn.Conv2d: _Builder._conv,
    nn.BatchNorm2d: _Builder._batchnorm,
    nn.BatchNorm1d: _Builder._batchnorm,
    nn.Linear: _Builder._linear,
    nn.Hardtanh: _Builder._hardtanh_module,
    nn.ReLU: _Builder._unary("Relu"),
    nn.Sigmoid: _Builder._unary("Sigmoid"),
    nn.PReLU: _Builder._prelu,
    nn.MaxPool2d: _Builder._maxpool_module,
    nn.AvgPool2d: _Builder._avgpool_module,
    nn.AdaptiveAvgPool2d: _Builder._adaptive_avgpool_module,
    nn.Identity: _Builder._identity,
    nn.Flatten: _Builder._flatten_module,
}

_FUNCTIONS = {
    operator.add: _Builder._binary("Add"),
    torch.add: _Builder._binary("Add"),
    operator.mul: _Builder._binary("Mul"),
    torch.mul: _Builder._binary("Mul"),
    F.hardtanh: _Builder._f_hardtanh,
    F.relu: _Builder._unary("Relu"),
    torch.relu: _Builder._unary("Relu"),
    torch.sigmoid: _Builder._unary("Sigmoid"),
    F.avg_pool2d: _Builder._f_avg_pool2d,
    F.max_pool2d: _Builder._f_max_pool2d,
    F.adaptive_avg_pool2d: _Builder._f_adaptive_avg_pool2d,
    torch.flatten: _Builder._f_flatten,
    operator.getitem: _Builder._getitem,
    F.pad: _Builder._f_pad,
    torch.mean: _Builder._mean,
}

_METHODS = {
    "flatten": _Builder._m_flatten,
    "view": _Builder._m_view,
    "reshape": _Builder._m_view,
    "mean": _Builder._mean,
    "add": _Builder._binary("Add"),
    "relu": _Builder._unary("Relu"),
    "sigmoid": _Builder._unary("Sigmoid"),
}
