"""Shared by test_verify.py and test_testing_helper.py: the demo model deployed well and deployed broken.

Built once per test session under pytest's base temporary folder (a second caller reuses the files):
- good.onnx: `convert` of the shipped static-ASD digits ResNet-20;
- bad.onnx: the same with every bit of one packed weight word of CORRUPTED_LAYER inverted;
- x86/ and bad-x86/: each compiled for this host with batch ARTIFACT_BATCH.
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from sdbnn_deploy.compile import compile_model
from sdbnn_deploy.convert import convert

CHECKPOINT = Path(__file__).resolve().parents[1] / "models" / "checkpoints" / "digits_resnet20_static.pt"
CORRUPTED_LAYER = "layer2.1.conv1"
ARTIFACT_BATCH = 4


def corrupt_weight_word(onnx_path, out_path, layer=CORRUPTED_LAYER, channel=3):
    """Invert all bits of the first packed weight word of one output channel of `layer`."""
    model = onnx.load(str(onnx_path))
    init = next(t for t in model.graph.initializer if t.name == f"{layer}.W_packed")
    words = numpy_helper.to_array(init).copy()
    words[channel, 0, 0, 0] = ~words[channel, 0, 0, 0]
    init.CopyFrom(numpy_helper.from_array(words, init.name))
    onnx.save(model, str(out_path))


def miscompile_layer(monkeypatch, layer=CORRUPTED_LAYER, channel=3):
    """A compiler fault, while monkeypatch lasts: the ONNX importer inverts the first packed weight word of
    one output channel of `layer` before building its kernel (the ONNX itself stays correct)."""
    from tvm import relax

    from sdbnn_deploy.tvm import relax_import

    original = relax_import._convert_binary_conv2d

    def wrong(bb, inputs, attr, *args, **kwargs):
        if attr["tvm_custom"]["name"].split("/")[0] == layer:
            words = inputs[1].value.numpy().copy()
            words[channel, 0, 0, 0] = ~words[channel, 0, 0, 0]
            inputs = [inputs[0], relax.const(words), *inputs[2:]]
        return original(bb, inputs, attr, *args, **kwargs)

    monkeypatch.setattr(relax_import, "_convert_binary_conv2d", wrong)


def demo_deployment(tmp_path_factory) -> dict:
    base = tmp_path_factory.getbasetemp() / "verify-demo"
    paths = {"checkpoint": CHECKPOINT, "onnx": base / "good.onnx", "bad_onnx": base / "bad.onnx",
             "artifact": base / "x86", "bad_artifact": base / "bad-x86"}
    if (base / "done").exists():
        return paths
    base.mkdir(exist_ok=True)
    convert(CHECKPOINT, output=paths["onnx"])
    corrupt_weight_word(paths["onnx"], paths["bad_onnx"])
    compile_model(paths["onnx"], "x86", paths["artifact"], batch=ARTIFACT_BATCH)
    compile_model(paths["bad_onnx"], "x86", paths["bad_artifact"], batch=ARTIFACT_BATCH)
    (base / "done").touch()
    return paths


def write_npz(path, x, y=None):
    np.savez(path, **({"x": x} if y is None else {"x": x, "y": y}))
    return path
