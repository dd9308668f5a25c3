"""convert: every architecture and ASD form, proved on data; exported files valid for stock tools."""
import numpy as np
import onnx
import pytest
import torch

from conftest import TEST_INPUT, randomize
from sdbnn_deploy.convert import convert
from sdbnn_deploy.models import build
from sdbnn_deploy.verify_conversion import ort_session

SHAPES = {arch: TEST_INPUT[arch] for arch in ("resnet20", "resnet18", "vgg_small", "bireal18")}


@pytest.mark.parametrize("asd", ["static", "dynamic"])
@pytest.mark.parametrize("arch", list(SHAPES))
def test_every_architecture_converts_exactly(arch, asd):
    model = randomize(build(arch, asd), seed=1)
    result = convert(model, arch=arch, input_shape=SHAPES[arch], probe_batch=4)
    check = result.report["check"]
    assert check["passed"], check["failure"]
    assert check["top1_agreement"] == 1.0
    assert check["relative_logit_error"] <= 1e-4
    assert check["binary_layers_exact"] and check["input_bit_mismatches"] == 0
    layers = [r for r in result.report["layers"] if r["kind"] == "binary"]
    assert len(layers) == sum(1 for m in model.modules() if type(m).__name__ == "IRConv2d")
    assert all(r["conv_mismatches"] == 0 and r["conv_outputs"] > 0 for r in layers)
    onnx.checker.check_model(result.onnx_model, full_check=True)


def test_static_vgg_folds_thresholds_and_pools_on_bits():
    model = randomize(build("vgg_small", "static"), seed=2)
    result = convert(model, arch="vgg_small", probe_batch=2)
    modes = [n.attrs["mode"] for n in result.graph.nodes_of("BinaryConv2d")]
    assert modes == ["bits", "bits", "bits", "bits", "int"]  # the last feeds the float head through a pool
    assert len(result.graph.nodes_of("PackedMaxPool2d")) == 2
    assert len(result.graph.nodes_of("BinarizePack")) == 1
    assert sum(r.get("flipped_channels", 0) for r in result.report["layers"]) > 0
    assert sum(r.get("constant_channels", 0) for r in result.report["layers"]) > 0
    assert result.report["check"]["passed"]


def test_released_checkpoint_layout_converts_from_the_command_line(tmp_path):
    from click.testing import CliRunner

    from sdbnn_deploy.cli import main

    model = randomize(build("resnet20", "dynamic"), seed=3)
    ckpt = tmp_path / "model_best.pth.tar"
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 400, "state_dict": state, "best_prec1": 86.1}, ckpt)
    out, rep = tmp_path / "m.onnx", tmp_path / "r.json"
    res = CliRunner().invoke(main, ["convert", str(ckpt), "-o", str(out), "--report", str(rep), "--probe-batch", "3"])
    assert res.exit_code == 0, res.output
    assert "PASSED" in res.output and "layer1.0.conv1" in res.output
    import json

    report = json.loads(rep.read_text())
    assert report["arch"] == "resnet20" and report["asd"] == "dynamic" and report["check"]["passed"]
    assert report["totals"]["compression"] > 10
    m = onnx.load(out)
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort_session(m).run(None, {"input": x})[0]
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4


def test_exported_model_uses_only_standard_ops_inside_functions():
    result = convert(randomize(build("vgg_small", "dynamic"), seed=4), arch="vgg_small", probe_batch=2)
    m = result.onnx_model
    custom = {n.op_type for n in m.graph.node if n.domain == "sdbnn"}
    assert custom == {"BinarizePack", "BinaryConv2d"}
    assert {(f.name, f.overload) for f in m.functions} >= {("BinarizePack", ""), ("BinaryConv2d", "int"),
                                                           ("BinaryConv2d", "affine")}
    for f in m.functions:
        assert all(n.domain in ("", "ai.onnx") for n in f.node), f.name
    standard = {n.op_type for n in m.graph.node if n.domain in ("", "ai.onnx")}
    assert standard <= {"Conv", "BatchNormalization", "Clip", "ReduceMean", "Gemm", "Relu", "Sigmoid", "Cast",
                        "MaxPool", "Flatten", "Add"}


@pytest.mark.parametrize("asd", ["static", "dynamic"])
def test_float_weight_32w1a_variant_exports_as_float_conv_with_a_warning(asd):
    model = randomize(build("bireal18_32w1a", asd), seed=5)
    result = convert(model, arch="bireal18_32w1a", input_shape=(3, 64, 64), probe_batch=2)
    check = result.report["check"]
    assert check["passed"], check["failure"]
    assert not result.graph.nodes_of("BinaryConv2d") and not result.graph.nodes_of("BinarizePack")
    assert len(result.report["warnings"]) == 16
    assert "no bit-serial speed-up" in result.report["warnings"][0]
    assert "layer1.0.binary_conv" in result.report["warnings"][0]
