"""departure: where does a deployed model that fails `verify` first depart from PyTorch?

Stage first. With an artifact and its source ONNX, the artifact is compared with onnxruntime of that
ONNX: if onnxruntime agrees with PyTorch but the artifact does not, the fault is in the compilation;
if onnxruntime already departs from PyTorch, it is in the conversion. (Without the source ONNX the
stage is "unknown".)

Then, for a conversion fault, the layer. The ONNX is run again with intermediate values added as extra
graph outputs, on the failing inputs (at most MAX_INPUTS), and each is compared with the same value in
PyTorch, captured by forward hooks:
- "bits": the packed input of every BinaryConv2d (node named by its PyTorch module path) against
  sign(x + shift) of that module, +1 iff > 0. A bit where |x + shift| <= TIE * (1 + |x| + |shift|) is a
  rounding tie and does not count;
- "float": every float value whose name is a module path with "." as "_" (torch.fx names, e.g.
  `layer1_0_bn1`) against that module's output; it departs where any element differs by more than
  FLOAT_TOLERANCE * (1 + max |PyTorch value|).
The first departing value in graph order names the layer: the module path of the ONNX node that
produced it (a BinaryConv2d fused with its batch norm is named by its conv; bits that went through a
PackedMaxPool2d by the conv that made them). A module called more than once (a shared pooling) is
not compared: its hook sees several values.
"""
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from sdbnn_deploy.bits import unpack_signs
from sdbnn_deploy.verify_conversion import logit_figures, ort_session

MAX_INPUTS = 32
TIE = 1e-5
FLOAT_TOLERANCE = 1e-4
_PACKED_OPS = ("BinarizePack", "PackedMaxPool2d")


def locate(model, dep, x: np.ndarray, logits: dict, tolerances: dict) -> dict:
    """The departure section of the verify report (see sdbnn_deploy.schema)."""
    failing = _failing_inputs(logits, tolerances)
    ort_bad = "onnxruntime" in logits and _fails(logits["onnxruntime"], logits["pytorch"], tolerances)
    if "tvm" in logits and "onnxruntime" in logits and not ort_bad:
        f = _diff(logits["tvm"], logits["onnxruntime"])
        return {"layer": None, "stage": "compilation", "compared": "tvm vs onnxruntime",
                "detail": f"onnxruntime of the source ONNX matches PyTorch but the artifact does not "
                          f"({f}): recompile, or report a compiler bug", "layers_checked": 0, "layers": []}
    if "onnxruntime" not in logits:
        return {"layer": None, "stage": "unknown", "compared": "tvm vs pytorch",
                "detail": "the source ONNX is not available, so conversion and compilation cannot be told "
                          "apart: pass the ONNX to verify it alone", "layers_checked": 0, "layers": []}
    onnx_model = onnx.load(str(dep.onnx_path))
    rows = compare_layers(model, onnx_model, x[failing])
    first = next((r for r in rows if r["departs"]), None)
    section = {"layer": first["layer"] if first else None, "stage": "conversion",
               "compared": "onnxruntime vs pytorch", "layers_checked": len(rows), "layers": rows}
    if first:
        section["detail"] = (f"{first['op']} output {first['value']} against PyTorch's {first['module']} "
                             f"({first['kind']}): {first['mismatches']} of {first['size']} values differ "
                             f"on {len(failing)} failing inputs")
    else:
        section["detail"] = (f"no intermediate value departs on {len(failing)} failing inputs; the logits "
                             f"differ only after the last compared value")
    return section


def _diff(a, b) -> str:
    f = logit_figures(b, a)
    return f"top-1 agreement {f['top1_agreement']:.4f}, max |dlogit| {f['max_abs_logit_diff']:.3g}"


def _fails(a, ref, tolerances) -> bool:
    """The same gate as verify's, for one runtime's logits against reference logits."""
    f = logit_figures(ref, a)
    return f["top1_agreement"] < tolerances["min_top1_agreement"] or f["max_abs_logit_diff"] > tolerances["max_logit_diff"]


def _failing_inputs(logits: dict, tolerances: dict) -> np.ndarray:
    """Indices of the inputs that disagree or differ most, worst first, at most MAX_INPUTS."""
    ref = logits["pytorch"]
    worst = np.zeros(len(ref))
    for name, out in logits.items():
        if name != "pytorch":
            diff = np.max(np.abs(out - ref), axis=1) / max(tolerances["max_logit_diff"], 1e-30)
            worst = np.maximum(worst, diff + 1e6 * (out.argmax(1) != ref.argmax(1)))
    return np.argsort(-worst, kind="stable")[:MAX_INPUTS]


def compare_layers(model, onnx_model: onnx.ModelProto, x: np.ndarray) -> list:
    """Each compared intermediate value, in graph order: layer, value, kind, mismatches, size, departs."""
    probes = _probes(onnx_model, model)
    debug = _with_outputs(onnx_model, probes)
    session = ort_session(debug)
    names = [p["value"] for p in probes]
    deployed = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))
    captured = _capture(model, probes, x)
    rows = []
    for p in probes:
        ref = captured.get((p["module"], p["kind"]))
        if ref is None:
            continue
        mismatches, size = (_bit_mismatches if p["kind"] == "bits" else _float_mismatches)(
            deployed[p["value"]], ref, p)
        if mismatches is None:
            continue  # shapes differ: the value does not stand for that module's output
        rows.append({k: p[k] for k in ("layer", "value", "op", "module", "kind")} |
                    {"mismatches": mismatches, "size": size, "departs": mismatches > 0})
    return rows


def _probes(onnx_model, model) -> list:
    """The ONNX values to compare, each with its PyTorch counterpart, in the order of their producers."""
    modules = dict(model.named_modules())
    by_fx_name = {name.replace(".", "_"): name for name in modules if name}
    producers = {out: (i, node) for i, node in enumerate(onnx_model.graph.node) for out in node.output}
    probes = []
    for i, node in enumerate(onnx_model.graph.node):
        if node.op_type == "BinaryConv2d":
            module = node.name.split("/")[0]
            packed = node.input[0]
            if module in modules and hasattr(modules[module], "shift") and packed in producers:
                index, producer = producers[packed]
                named = producer
                while named.op_type == "PackedMaxPool2d" and named.input[0] in producers:
                    named = producers[named.input[0]][1]  # pooled bits: name the layer that made them
                probes.append(_probe(packed, "bits", module, index, producer, modules, _in_channels(node), named))
        for out in node.output:
            if out in by_fx_name and _is_float(node):
                probes.append(_probe(out, "float", by_fx_name[out], i, node, modules))
    return sorted(probes, key=lambda p: p["index"])


def _probe(value, kind, module, index, producer, modules, channels=None, named=None) -> dict:
    layer = (named or producer).name.split("/")[0]
    return {"value": value, "kind": kind, "module": module, "index": index, "op": producer.op_type,
            "layer": layer if layer in modules else f"input of {module}", "channels": channels}


def _in_channels(node) -> int:
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == "in_channels")


def _is_float(node) -> bool:
    if node.op_type in _PACKED_OPS:
        return False
    if node.op_type == "BinaryConv2d":
        mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"")
        return (mode.decode() if isinstance(mode, bytes) else mode) == "affine"
    return True


def _with_outputs(onnx_model, probes) -> onnx.ModelProto:
    """A copy of the model that also outputs every probed value."""
    debug = onnx.ModelProto()
    debug.CopyFrom(onnx_model)
    present = {o.name for o in debug.graph.output}
    for p in probes:
        if p["value"] not in present:
            elem = TensorProto.UINT64 if p["kind"] == "bits" else TensorProto.FLOAT
            debug.graph.output.append(helper.make_tensor_value_info(p["value"], elem, None))
            present.add(p["value"])
    return debug


def _capture(model, probes, x) -> dict:
    """Run PyTorch once with hooks: (module, "bits") -> (x, shift); (module, "float") -> output.
    A module called more than once (a shared pooling or activation) has no single value: None."""
    calls, hooks = {}, []
    for module, kind in {(p["module"], p["kind"]) for p in probes}:
        m = model.get_submodule(module)

        def hook(m, inputs, output, key=(module, kind)):
            if key[1] == "bits":
                value = (inputs[0].numpy(), m.shift(inputs[0]).numpy())
            else:
                value = output.numpy() if isinstance(output, torch.Tensor) else None
            calls.setdefault(key, []).append(value)
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.from_numpy(np.ascontiguousarray(x)))
    finally:
        for h in hooks:
            h.remove()
    return {key: values[0] if len(values) == 1 else None for key, values in calls.items()}


def _bit_mismatches(packed, ref, probe):
    """Deployed signs against sign(x + shift) (+1 iff > 0), rounding ties left out."""
    inputs, shift = ref
    pre = inputs + shift
    deployed = unpack_signs(packed, probe["channels"]).transpose(0, 3, 1, 2)
    if deployed.shape != pre.shape:
        return None, None
    tie = np.abs(pre) <= TIE * (1 + np.abs(inputs) + np.abs(shift))
    wrong = (deployed != np.where(pre > 0, 1, -1)) & ~tie
    return int(wrong.sum()), int(wrong.size)


def _float_mismatches(value, ref, probe):
    if ref is None or value.shape != ref.shape:
        return None, None
    tolerance = FLOAT_TOLERANCE * (1 + float(np.max(np.abs(ref))))
    return int(np.sum(np.abs(value - ref) > tolerance)), int(value.size)
