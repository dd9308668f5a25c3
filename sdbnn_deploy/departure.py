"""departure: where does a deployed model that fails `verify` first depart from PyTorch?

Stage first. With an artifact and its source ONNX, the artifact is compared with onnxruntime of that
ONNX: if onnxruntime agrees with PyTorch but the artifact does not, the fault is in the compilation;
if onnxruntime already departs from PyTorch, it is in the conversion. (Without the source ONNX the
stage is "unknown".)

Then the layer. For a conversion fault: The ONNX is run again with intermediate values added as extra
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

For a compilation fault the source ONNX, with the same intermediate values and every BinaryConv2d's
output added as graph outputs, is compiled again for the artifact's own target and batch into a
temporary folder and run (x86 here, aarch64 under qemu) on the failing inputs (at most
MAX_COMPILED_INPUTS, filled up to whole batches); each value is compared with onnxruntime of that same
ONNX: bits (decoded to their channels) and int32 exactly, floats within FLOAT_TOLERANCE * (1 + max
|onnxruntime value|). The first departing value in graph order names the layer, as above. If none departs,
the compiler reproduces the ONNX and the deployed library is not what it builds from it today (built from
another ONNX, an older compiler or other target parameters): the report says so, with no layer.
"""
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from sdbnn_deploy.bits import unpack_signs
from sdbnn_deploy.verify_conversion import logit_figures, ort_session

MAX_INPUTS = 32
MAX_COMPILED_INPUTS = 8
TIE = 1e-5
FLOAT_TOLERANCE = 1e-4
_PACKED_OPS = ("BinarizePack", "PackedMaxPool2d")


def locate(model, dep, x: np.ndarray, logits: dict, tolerances: dict) -> dict:
    """The departure section of the verify report (see sdbnn_deploy.schema)."""
    failing = _failing_inputs(logits, tolerances)
    ort_bad = "onnxruntime" in logits and _fails(logits["onnxruntime"], logits["pytorch"], tolerances)
    if "tvm" in logits and "onnxruntime" in logits and not ort_bad:
        return _compilation_section(model, dep, x[failing], logits)
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


def _compilation_section(model, dep, x: np.ndarray, logits: dict) -> dict:
    """The departure section when onnxruntime of the source ONNX agrees with PyTorch and the artifact does not."""
    summary = (f"onnxruntime of the source ONNX matches PyTorch but the artifact does not "
               f"({_diff(logits['tvm'], logits['onnxruntime'])})")
    section = {"layer": None, "stage": "compilation", "compared": "tvm vs onnxruntime", "layers_checked": 0,
               "layers": []}
    x = x[:max(MAX_COMPILED_INPUTS, dep.batch)]
    try:
        rows = compare_compiled(model, onnx.load(str(dep.onnx_path)), dep.manifest, x)
    except Exception as e:  # the diagnosis must not hide the verdict: say why no layer is named
        section["detail"] = (f"{summary}; recompiling it with intermediate outputs failed "
                             f"({type(e).__name__}: {e}), so no layer is named")
        return section
    first = next((r for r in rows if r["departs"]), None)
    section.update(layer=first["layer"] if first else None, layers_checked=len(rows), layers=rows)
    if first:
        section["detail"] = (f"{summary}; recompiled with intermediate outputs, {first['op']} output "
                             f"{first['value']} ({first['kind']}) departs from onnxruntime: "
                             f"{first['mismatches']} of {first['size']} values differ on {len(x)} failing "
                             f"inputs: a compiler fault in this layer")
    else:
        section["detail"] = (f"{summary}; recompiled from that ONNX with intermediate outputs, all {len(rows)} "
                             f"compared values match onnxruntime: the deployed library is not what this "
                             f"compiler builds from this ONNX for {dep.manifest['target']['name']} today "
                             f"(another ONNX, compiler version or target parameters): recompile it")
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


def _onnxruntime_values(onnx_model: onnx.ModelProto, probes: list, x: np.ndarray):
    """onnx_model with the probes' values as extra outputs, and those values from onnxruntime on x."""
    debug = _with_outputs(onnx_model, probes)
    session = ort_session(debug)
    names = [p["value"] for p in probes]
    return debug, dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))


def compare_layers(model, onnx_model: onnx.ModelProto, x: np.ndarray) -> list:
    """Each compared intermediate value, in graph order: layer, value, kind, mismatches, size, departs."""
    probes = _probes(onnx_model, model)
    _, deployed = _onnxruntime_values(onnx_model, probes, x)
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
        return _mode(node) == "affine"
    return True


def _mode(node) -> str:
    """A BinaryConv2d node's mode attribute ("int" | "affine" | "bits")."""
    mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"")
    return mode.decode() if isinstance(mode, bytes) else mode


def _with_outputs(onnx_model, probes) -> onnx.ModelProto:
    """A copy of the model that also outputs every probed value."""
    debug = onnx.ModelProto()
    debug.CopyFrom(onnx_model)
    present = {o.name for o in debug.graph.output}
    for p in probes:
        if p["value"] not in present:
            elem = {"bits": TensorProto.UINT64, "int": TensorProto.INT32}.get(p["kind"], TensorProto.FLOAT)
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


def compare_compiled(model, onnx_model: onnx.ModelProto, manifest: dict, x: np.ndarray) -> list:
    """The artifact's compiler against onnxruntime on every intermediate value of the ONNX, in graph order:
    rows as compare_layers' (layer, value, op, module, kind, mismatches, size, departs)."""
    probes = _compiled_probes(onnx_model, model)
    debug, expected = _onnxruntime_values(onnx_model, probes, x)
    compiled = _run_recompiled(debug, manifest, x)
    rows = []
    for p in probes:
        mismatches, size = _compiled_mismatches(compiled[p["value"]], expected[p["value"]], p)
        rows.append({k: p[k] for k in ("layer", "value", "op", "module", "kind")} |
                    {"mismatches": mismatches, "size": size, "departs": mismatches > 0})
    return rows


def _compiled_probes(onnx_model, model) -> list:
    """_probes plus the output of every BinaryConv2d ("int" int32, "bits" packed, "affine" float)."""
    probes = _probes(onnx_model, model)
    seen = {p["value"] for p in probes}
    modules = dict(model.named_modules())
    weights = {t.name: t.dims for t in onnx_model.graph.initializer}
    for i, node in enumerate(onnx_model.graph.node):
        if node.op_type == "BinaryConv2d" and node.output[0] not in seen:
            kind = {"int": "int", "bits": "bits"}.get(_mode(node), "float")
            out_channels = weights[node.input[1]][0] if node.input[1] in weights else None
            probes.append(_probe(node.output[0], kind, node.name.split("/")[0], i, node, modules, out_channels))
    return sorted(probes, key=lambda p: p["index"])


def _run_recompiled(debug: onnx.ModelProto, manifest: dict, x: np.ndarray) -> dict:
    """Compile `debug` for the manifest's target and batch in a temporary folder; its outputs on `x`."""
    from sdbnn_deploy.compile import compile_model
    from sdbnn_deploy.run import run_artifact
    from sdbnn_deploy.verify import _batches, _padded

    batch = manifest["inputs"][0]["shape"][0]
    with tempfile.TemporaryDirectory(prefix="sdbnn-departure-") as tmp:
        onnx_path, artifact = Path(tmp) / "debug.onnx", Path(tmp) / "artifact"
        onnx.save(debug, str(onnx_path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TVM's importer warns that the added outputs have no shape
            compile_model(onnx_path, manifest["target"]["name"], artifact, threads=manifest.get("threads"),
                          batch=batch)
        outs = [(run_artifact(artifact, _padded(x[start:stop], batch)), stop - start)
                for start, stop in _batches(len(x), batch)]
    return {name: np.concatenate([o[name][:n] for o, n in outs]) for name in outs[0][0]}


def _compiled_mismatches(value, expected, probe):
    """Bits (decoded to their channels) and int32 exactly, floats within FLOAT_TOLERANCE of the scale."""
    if value.shape != expected.shape:
        return int(expected.size), int(expected.size)
    if probe["kind"] == "bits":
        wrong = unpack_signs(value, probe["channels"]) != unpack_signs(expected, probe["channels"])
    elif probe["kind"] == "int":
        wrong = value != expected
    else:
        wrong = np.abs(value - expected) > FLOAT_TOLERANCE * (1 + float(np.max(np.abs(expected))))
    return int(wrong.sum()), int(wrong.size)
