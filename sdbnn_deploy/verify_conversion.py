"""The proof of a conversion: the exported ONNX, run by stock onnxruntime, against the PyTorch model.

Whole model: identical top-1, relative logit error ||onnx - torch|| / ||torch|| (L2 over the batch).
Per binary layer (the ONNX also exposes the packed input of every BinaryConv2d):
- input bits: the deployed signs against torch.sign(x + shift) of the PyTorch layer;
- conv: our BinaryConv2d reference on the deployed bits and packed (possibly flipped) weights against
  PyTorch's conv2d of the same signs with the layer's own sign(WSD weights): equal bit for bit.

Ties. Where x + shift is exactly 0, torch.sign gives 0, which a binary deployment cannot represent (it
gives -1). Where |x + shift| is within float rounding of 0 (NEAR_TIE of the layer's input scale), the
deployed real values, computed by other kernels in another order, may land on the other side: both are
right to float precision. One such bit changes a conv output by 2, and the difference then grows through
the following layers, so a comparison of logits would only measure the chaos of the network. The check
therefore runs PyTorch with each of those bits resolved as deployed ("ties resolved"): the logits are
compared with that run, every other bit must match exactly, and the report counts the ties and gives
the logit error against unmodified PyTorch as well.
"""
import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from sdbnn_deploy.bits import unpack_signs
from sdbnn_deploy.export_onnx import to_onnx
from sdbnn_deploy.ops import binary_conv2d


def ort_session(model_proto, threads=1):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model_proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def logit_figures(reference: np.ndarray, other: np.ndarray) -> dict:
    """Agreement of top-1 (a class tied for the reference's maximum, within float rounding, agrees too)
    and the logit differences."""
    ref, oth = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    best = ref.max(1)
    picked = ref[np.arange(len(ref)), oth.argmax(1)]
    agree = picked >= best - 1e-6 * np.maximum(np.abs(best), 1.0)
    return {"top1_agreement": float(np.mean(agree)),
            "relative_logit_error": float(np.linalg.norm(oth - ref) / max(np.linalg.norm(ref), 1e-30)),
            "max_abs_logit_diff": float(np.max(np.abs(oth - ref))),
            "mean_abs_logit_diff": float(np.mean(np.abs(oth - ref)))}


NEAR_TIE = 2.0 ** -16  # |x + shift| at most this times max(1, max |x| of the layer's input): a near-tie
MAX_NEAR_TIES = 1e-4  # near-ties (x + shift != 0) resolved in a layer, as a fraction of its bits (at least 8)


def check_conversion(model, g, model_proto, probe, max_error) -> dict:
    convs = g.nodes_of("BinaryConv2d")
    debug = to_onnx(g, extra_outputs=[c.inputs[0] for c in convs])
    outs = ort_session(debug).run(None, {"input": probe})
    packed = dict(zip((c.name for c in convs), outs[len(g.outputs):]))
    deployed = {c.name: unpack_signs(packed[c.name], c.attrs["in_channels"]).transpose(0, 3, 1, 2) for c in convs}
    captured = _capture_binary_layers(model, deployed, probe)
    logits_torch = captured.pop("__logits__")
    figures = logit_figures(logits_torch, outs[0])
    layers = [_check_layer(c, g, captured[c.name], packed[c.name], deployed[c.name]) for c in convs]
    ties = sum(r["input_ties"] for r in layers)
    if ties:
        plain = _capture_binary_layers(model, {}, probe)["__logits__"]
        figures["relative_logit_error_without_resolving_ties"] = logit_figures(plain, outs[0])["relative_logit_error"]
    failure = None
    if figures["top1_agreement"] < 1.0:
        failure = f"top-1 differs on {1 - figures['top1_agreement']:.1%} of the probe batch"
    elif figures["relative_logit_error"] > max_error:
        failure = f"relative logit error {figures['relative_logit_error']:.2e} > {max_error:.0e}"
    elif any(r["conv_mismatches"] for r in layers):
        bad = next(r for r in layers if r["conv_mismatches"])
        failure = f"binary layer {bad['name']} differs from PyTorch in {bad['conv_mismatches']} outputs"
    elif any(r["input_bit_mismatches"] for r in layers):
        bad = next(r for r in layers if r["input_bit_mismatches"])
        failure = f"binary layer {bad['name']}: {bad['input_bit_mismatches']} input bits differ from torch.sign"
    elif bad := next((r for r in layers if r["input_near_ties"] > max(8, MAX_NEAR_TIES * r["input_bits"])), None):
        failure = (f"binary layer {bad['name']}: {bad['input_near_ties']} of {bad['input_bits']} input bits "
                   "disagree within rounding of the threshold, more than float rounding explains")
    return {"probe_batch": int(len(probe)), **figures, "max_relative_logit_error": max_error,
            "binary_layers_exact": all(r["conv_mismatches"] == 0 for r in layers),
            "input_bit_mismatches": int(sum(r["input_bit_mismatches"] for r in layers)),
            "input_ties_resolved": int(ties), "passed": failure is None, "failure": failure, "layers": layers}


def _capture_binary_layers(model, deployed: dict, probe):
    """Run the PyTorch model once; keep each listed binary layer's signs, weight signs and module.

    deployed: {layer name: deployed signs (N, C, H, W)}: those layers binarise x + shift with their tie bits
    (x + shift == 0, or within NEAR_TIE of it) taken from the deployed signs (module docstring), through
    IRConv2d.binarize_input, which each must call exactly once."""
    captured, undo = {}, []

    def scale(m, inputs):
        m._tie_scale = NEAR_TIE * max(1.0, float(inputs[0].abs().max()))

    def resolver(name, m, signs):
        def binarize_input(a):
            if name in captured:  # a module used twice: its deployed signs are one call's
                raise RuntimeError(f"binary layer {name} called binarize_input twice in one forward pass")
            sign = torch.sign(a)
            tie = a.abs() <= m._tie_scale
            resolved = torch.where(tie, signs, sign)
            changed = tie & (resolved != sign)
            captured[name] = {"signs": resolved, "ties": int(changed.sum()),
                              "near_ties": int((changed & (sign != 0)).sum()),
                              "weight_signs": torch.sign(m.shifted_weight()), "module": m}
            return resolved
        return binarize_input

    try:
        for name, signs in deployed.items():
            m = model.get_submodule(name)
            undo.append(m.register_forward_pre_hook(scale))
            m.binarize_input = resolver(name, m, torch.from_numpy(signs.astype(np.float32)))
        with torch.no_grad():
            captured["__logits__"] = model(torch.from_numpy(probe)).numpy()
    finally:
        for h in undo:
            h.remove()
        for name in deployed:
            model.get_submodule(name).__dict__.pop("binarize_input", None)
            model.get_submodule(name).__dict__.pop("_tie_scale", None)
    missing = sorted(set(deployed) - set(captured))
    if missing:
        raise RuntimeError(f"binary layers {missing} never called binarize_input: the check cannot resolve ties")
    return captured


def _check_layer(conv, g, torch_side, packed_input, deployed):
    cin = conv.attrs["in_channels"]
    torch_signs = torch_side["signs"].numpy()
    m = torch_side["module"]
    with torch.no_grad():
        y_torch = F.conv2d(torch.from_numpy(deployed.astype(np.float32)), torch_side["weight_signs"],
                           None, m.stride, m.padding).numpy()
    a = conv.attrs
    y_ours = binary_conv2d.reference(packed_input, g.consts[conv.inputs[1]], in_channels=cin,
                                     strides=a["strides"], pads=a["pads"], mode="int")
    flipped = np.asarray(a.get("_flipped", np.zeros(y_ours.shape[1], bool)))
    y_ours = np.where(flipped[None, :, None, None], -y_ours, y_ours)
    return {"name": conv.name, "input_bits": int(deployed.size),
            "input_bit_mismatches": int(np.sum(deployed != torch_signs)),
            "input_ties": torch_side["ties"], "input_near_ties": torch_side["near_ties"],
            "conv_mismatches": int(np.sum(y_ours != y_torch)), "conv_outputs": int(y_ours.size)}
