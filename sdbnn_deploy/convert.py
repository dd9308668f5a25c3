"""convert: PyTorch SD-BNN -> folded ONNX, proved on data against the PyTorch eval model.

    load -> trace -> fold_wsd -> fold_threshold -> fold_float_threshold -> fold_batchnorm -> pack_weights
         -> export -> check

`convert(model_or_path, output)` returns a Conversion (the ONNX model, the folded Graph, the report);
the file is written only after every check ran, through a temporary file renamed into place.
"""
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from sdbnn_deploy import __version__
from sdbnn_deploy.checkpoint import load_checkpoint
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.export_onnx import to_onnx
from sdbnn_deploy.passes.fold_batchnorm import fold_batchnorm
from sdbnn_deploy.passes.fold_float_threshold import fold_float_threshold
from sdbnn_deploy.passes.fold_threshold import fold_threshold
from sdbnn_deploy.passes.fold_wsd import fold_wsd
from sdbnn_deploy.passes.pack_weights import pack_weights
from sdbnn_deploy.models import DEFAULT_INPUT_SHAPE, asd_form
from sdbnn_deploy.passes.trace import trace
from sdbnn_deploy.verify_conversion import check_conversion

PASSES = (fold_wsd, fold_threshold, fold_float_threshold, fold_batchnorm, pack_weights)

# The proof every conversion must pass (sdbnn-deploy convert fails otherwise).
MAX_RELATIVE_LOGIT_ERROR = 1e-4


@dataclass
class Conversion:
    onnx_model: onnx.ModelProto
    graph: object
    report: dict = field(default_factory=dict)


def convert(model_or_path, output=None, arch=None, input_shape=None, trust_pickle=False,
            probe=None, probe_batch=8, seed=0, progress=None) -> Conversion:
    """Convert a checkpoint path or an nn.Module; write `output` (if given) only when all checks pass.

    probe: an input batch (N, C, H, W) to prove the conversion on; default random normal inputs.
    """
    step = progress or (lambda msg: None)
    step("load")
    model, info = _load(model_or_path, arch, trust_pickle)
    if not (input_shape or info["input_shape"]):
        raise UserError("the input shape of this model is unknown: give --input-shape C,H,W")
    shape = tuple(input_shape or info["input_shape"])
    if len(shape) != 3:
        raise UserError(f"--input-shape must be C,H,W (or N,C,H,W), not {','.join(map(str, shape))}")
    step("trace")
    g = trace(model, shape)
    for p in PASSES:
        step(p.__name__)
        g = p(g)
    g.meta["name"] = info["arch"] or "sdbnn"
    meta = {"sdbnn_deploy.arch": info["arch"], "sdbnn_deploy.asd": info["asd"],
            "sdbnn_deploy.input_shape": ",".join(map(str, shape)), "sdbnn_deploy.source": info["source"],
            "sdbnn_deploy.source_sha256": info["sha256"]}
    model_proto = to_onnx(g, meta)
    onnx.checker.check_model(model_proto, full_check=True)
    step("check on data")
    if probe is None:
        probe = np.random.default_rng(seed).standard_normal((probe_batch,) + shape).astype(np.float32)
    check = check_conversion(model, g, model_proto, probe, MAX_RELATIVE_LOGIT_ERROR)
    report = conversion_report(model, g, model_proto, info, shape, check)
    if output is not None:
        if not check["passed"]:
            raise UserError(f"conversion check failed ({check['failure']}); nothing written to {output}")
        write_atomically(output, model_proto.SerializeToString())
        report["output"] = str(output)
    return Conversion(model_proto, g, report)


def _load(model_or_path, arch, trust_pickle):
    if isinstance(model_or_path, torch.nn.Module):
        model = model_or_path.eval()
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise UserError(f"parameter {name} has NaN or infinite values")
        return model, {"arch": arch, "asd": asd_form(model), "source": type(model).__name__, "sha256": "",
                       "input_shape": DEFAULT_INPUT_SHAPE.get(arch, (3, 32, 32))}
    loaded = load_checkpoint(model_or_path, arch=arch, trust_pickle=trust_pickle)
    digest = hashlib.sha256(Path(model_or_path).read_bytes()).hexdigest()
    return loaded.model, {"arch": loaded.arch, "asd": loaded.asd, "source": str(model_or_path),
                          "sha256": digest, "input_shape": loaded.input_shape}


def write_atomically(path, data: bytes):
    """Write `data` to `path` through a temporary file in the same folder, renamed into place."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"output folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def conversion_report(model, g, model_proto, info, shape, check) -> dict:
    """What was folded how, what it weighs, and the proof: a dict that is also the JSON report."""
    layers = []
    for node in g.nodes:
        if node.op == "BinaryConv2d":
            layers.append(_binary_row(g, node))
        elif node.op in ("Conv", "Gemm"):
            w = g.consts[node.inputs[1]]
            layers.append({"name": node.name, "kind": "float", "op": node.op, "weight_shape": list(w.shape),
                           "fold": "-", "bytes": int(w.nbytes), "fp32_bytes": int(w.size * 4)})
    torch_bytes = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    onnx_bytes = sum(int(np.asarray(v).nbytes) for v in g.consts.values())
    per_check = {row["name"]: row for row in check["layers"]}
    for row in layers:
        row.update({k: v for k, v in per_check.get(row["name"], {}).items() if k != "name"})
    return {
        "tool": "sdbnn-deploy", "version": __version__, "arch": info["arch"], "asd": info["asd"],
        "source": info["source"], "source_sha256": info["sha256"], "input_shape": list(shape),
        "layers": layers,
        "warnings": list(g.meta.get("warnings", [])),
        "totals": {"binary_layers": sum(r["kind"] == "binary" for r in layers),
                   "float_layers": sum(r["kind"] == "float" for r in layers),
                   "fp32_parameter_bytes": torch_bytes, "deployed_constant_bytes": onnx_bytes,
                   "compression": round(torch_bytes / max(onnx_bytes, 1), 2),
                   "onnx_file_bytes": model_proto.ByteSize()},
        "check": {k: v for k, v in check.items() if k != "layers"},
    }


def _binary_row(g, node):
    w = g.consts[node.inputs[1]]
    cin = node.attrs["in_channels"]
    cout, kh, kw, _ = w.shape
    fold = {"bits": "threshold", "affine": "affine", "int": "int"}[node.attrs["mode"]]
    src = g.producer(node.inputs[0])
    if src is not None and src.op == "BinarizePack" and src.inputs[1] not in g.consts:
        fold += ", dynamic input"
    flipped = int(np.sum(node.attrs.get("_flipped", 0)))
    constant = int(np.sum(node.attrs.get("_constant", 0)))
    return {"name": node.name, "kind": "binary", "op": "BinaryConv2d", "weight_shape": [cout, cin, kh, kw],
            "fold": fold, "flipped_channels": flipped, "constant_channels": constant,
            "bytes": int(w.nbytes), "fp32_bytes": int(cout * cin * kh * kw * 4)}
