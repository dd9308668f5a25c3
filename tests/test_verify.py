"""sdbnn-deploy verify: the demo model against its ONNX and its x86 artifact, a corrupted weight named by
layer, conversion against compilation faults, the JSON schema, exit codes, bad input."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from sdbnn_deploy.cli import main
from sdbnn_deploy.data import digits_split
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.schema import SCHEMA, SCHEMA_VERSION, sha256_of
from sdbnn_deploy.verify import EXIT_FAILED, verify
from verify_fixtures import ARTIFACT_BATCH, CORRUPTED_LAYER, demo_deployment, miscompile_layer, write_npz

LIMIT = 62  # not a multiple of the artifact's batch: the last batch is padded


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_deployment(tmp_path_factory)


def cli(*args):
    return CliRunner().invoke(main, ["verify", *map(str, args)])


def test_good_onnx_and_artifact_pass_with_accuracy_of_every_runtime(demo):
    report = verify(demo["checkpoint"], demo["artifact"], limit=LIMIT, progress=False)
    assert report["passed"] and report["failures"] == [] and report["departure"] is None
    assert report["data"] == {"spec": "digits", "samples": LIMIT, "labelled": True}
    _, _, _, y = digits_split(16)
    for name in ("pytorch", "onnxruntime", "tvm"):
        r = report["runtimes"][name]
        assert r["ran"] and r["top1_agreement"] == 1.0
        assert r["max_abs_logit_diff"] < 1e-4 * report["tolerances"]["logit_scale"]
        assert r["top1_accuracy"] == report["runtimes"]["pytorch"]["top1_accuracy"] > 0.9
    assert report["deployed"]["kind"] == "artifact" and report["deployed"]["batch"] == ARTIFACT_BATCH
    assert report["deployed"]["onnx"] == str(demo["onnx"])  # found by the manifest's path and sha256
    assert report["target"].startswith("x86")
    onnx_only = verify(demo["checkpoint"], demo["onnx"], limit=LIMIT, progress=False)
    assert onnx_only["passed"] and onnx_only["target"] == "onnx"
    assert not onnx_only["runtimes"]["tvm"]["ran"] and "no artifact" in onnx_only["runtimes"]["tvm"]["note"]


def test_json_report_follows_the_schema(demo, tmp_path):
    out = tmp_path / "v.json"
    result = cli(demo["checkpoint"], demo["artifact"], "--limit", 16, "--json", out)
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "onnxruntime" in result.output
    report = json.loads(out.read_text())
    json.dumps(report, allow_nan=False)  # no NaN anywhere
    assert report["schema"] == SCHEMA and report["schema_version"] == SCHEMA_VERSION
    assert report["kind"] == "verify"
    assert report["model"]["sha256"] == sha256_of(demo["checkpoint"])
    assert set(report["tools"]) >= {"sdbnn_deploy", "torch", "onnxruntime", "tvm"}
    assert all(report["tools"][k] for k in ("sdbnn_deploy", "torch", "onnxruntime", "tvm"))
    assert set(report) >= {"target", "deployed", "data", "runtimes", "tolerances", "passed", "failures",
                           "departure", "notes"}
    assert set(report["tolerances"]) == {"min_top1_agreement", "max_logit_diff", "logit_scale"}
    assert report["tolerances"]["min_top1_agreement"] == 0.99
    assert report["tolerances"]["max_logit_diff"] == pytest.approx(0.01 * report["tolerances"]["logit_scale"])
    for r in report["runtimes"].values():
        assert set(r) == {"ran", "note", "top1_accuracy", "top1_agreement", "max_abs_logit_diff",
                          "mean_abs_logit_diff", "relative_logit_error"}


def test_corrupted_weight_fails_with_the_layer_named(demo, tmp_path):
    out = tmp_path / "bad.json"
    result = cli(demo["checkpoint"], demo["bad_onnx"], "--limit", LIMIT, "--json", out)
    assert result.exit_code == EXIT_FAILED == 1, result.output
    assert "FAILED" in result.output and f"first departure: {CORRUPTED_LAYER}" in " ".join(result.output.split())
    report = json.loads(out.read_text())
    assert not report["passed"] and report["failures"]
    dep = report["departure"]
    assert dep["layer"] == CORRUPTED_LAYER and dep["stage"] == "conversion"
    departing = [r for r in dep["layers"] if r["departs"]]
    assert departing[0]["layer"] == CORRUPTED_LAYER
    before = dep["layers"][:dep["layers"].index(departing[0])]
    assert len(before) > 10 and all(r["mismatches"] == 0 for r in before)


def test_artifact_fault_is_placed_in_conversion_or_compilation(demo, tmp_path):
    # The broken artifact with its own (broken) source ONNX: the conversion is at fault.
    report = verify(demo["checkpoint"], demo["bad_artifact"], limit=LIMIT, progress=False)
    assert not report["passed"]
    assert report["departure"]["stage"] == "conversion" and report["departure"]["layer"] == CORRUPTED_LAYER
    # The same library, but its manifest names the good ONNX: onnxruntime matches, the artifact does not.
    fake = tmp_path / "fake"
    shutil.copytree(demo["bad_artifact"], fake)
    manifest = json.loads((fake / "manifest.json").read_text())
    manifest["source"] = {"path": str(demo["onnx"]), "sha256": sha256_of(demo["onnx"])}
    (fake / "manifest.json").write_text(json.dumps(manifest))
    report = verify(demo["checkpoint"], fake, limit=LIMIT, progress=False)
    assert report["runtimes"]["onnxruntime"]["top1_agreement"] == 1.0 and not report["passed"]
    assert report["departure"]["stage"] == "compilation"
    assert report["departure"]["compared"] == "tvm vs onnxruntime"
    assert all(f.startswith("tvm:") for f in report["failures"])
    # Recompiled with intermediate outputs, the good ONNX matches onnxruntime everywhere: no layer is
    # blamed, the library is not what the compiler builds from that ONNX.
    assert report["departure"]["layer"] is None and report["departure"]["layers_checked"] > 30
    assert not any(r["departs"] for r in report["departure"]["layers"])
    assert "not what this compiler builds" in report["departure"]["detail"]
    # Without its source ONNX, onnxruntime is skipped with a note and the stage cannot be told.
    manifest["source"] = {"path": str(tmp_path / "gone.onnx"), "sha256": "0" * 64}
    (fake / "manifest.json").write_text(json.dumps(manifest))
    report = verify(demo["checkpoint"], fake, limit=LIMIT, progress=False)
    assert not report["runtimes"]["onnxruntime"]["ran"]
    assert "onnxruntime skipped" in report["runtimes"]["onnxruntime"]["note"]
    assert report["departure"]["stage"] == "unknown" and not report["passed"]


def test_compiler_fault_is_named_by_layer(demo, tmp_path, monkeypatch):
    """A kernel built wrong for one layer from a correct ONNX: verify exits 1, places the fault in the
    compilation and names the layer, found by recompiling the ONNX with intermediate outputs."""
    from sdbnn_deploy.compile import compile_model

    miscompile_layer(monkeypatch)  # also active while verify recompiles: the compiler itself is wrong
    compile_model(demo["onnx"], "x86", tmp_path / "miscompiled", batch=ARTIFACT_BATCH)
    out = tmp_path / "m.json"
    result = cli(demo["checkpoint"], tmp_path / "miscompiled", "--limit", LIMIT, "--json", out)
    assert result.exit_code == EXIT_FAILED, result.output
    text = " ".join(result.output.split())
    assert f"first departure: {CORRUPTED_LAYER} in the compilation" in text, text
    dep = json.loads(out.read_text())["departure"]
    assert dep["stage"] == "compilation" and dep["layer"] == CORRUPTED_LAYER
    departing = [r for r in dep["layers"] if r["departs"]]
    assert departing[0]["layer"] == CORRUPTED_LAYER and departing[0]["op"] == "BinaryConv2d"
    before = dep["layers"][:dep["layers"].index(departing[0])]
    assert len(before) > 10 and all(r["mismatches"] == 0 for r in before)
    assert {r["kind"] for r in before} == {"bits", "float"}


def test_tolerance_options_and_unlabelled_data(demo, tmp_path):
    x = digits_split(16)[2][:12]
    data = write_npz(tmp_path / "x.npz", x)
    result = cli(demo["checkpoint"], demo["onnx"], "--data", data, "--max-logit-diff", "1e-12",
                 "--json", tmp_path / "t.json")
    assert result.exit_code == EXIT_FAILED, result.output
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["data"] == {"spec": str(data), "samples": 12, "labelled": False}
    assert report["runtimes"]["onnxruntime"]["top1_accuracy"] is None
    assert report["failures"] == [f for f in report["failures"] if "max |logit difference|" in f]
    assert report["departure"]["layer"] is None  # float rounding only: no intermediate value departs
    ok = cli(demo["checkpoint"], demo["onnx"], "--data", data, "--min-agreement", "1.0", "--batch-size", 5)
    assert ok.exit_code == 0, ok.output


def test_bad_input_exits_2_with_one_line(demo, tmp_path):
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    wrong = write_npz(tmp_path / "wrong.npz", np.zeros((3, 3, 16, 16), np.float32))
    cases = [
        ((demo["checkpoint"], tmp_path / "missing.onnx"), "no such file or folder"),
        ((demo["checkpoint"], not_a_model), "neither an ONNX model nor an artifact folder"),
        ((demo["checkpoint"], tmp_path), "not an artifact"),
        ((tmp_path / "missing.pt", demo["onnx"]), "missing.pt"),
        ((demo["checkpoint"], demo["onnx"], "--data", wrong), "(3, 3, 16, 16)"),
        ((demo["checkpoint"], demo["onnx"], "--data", tmp_path / "nope.npz"), "nope.npz"),
        ((demo["checkpoint"], demo["onnx"], "--min-agreement", "1.5"), "--min-agreement"),
        ((demo["checkpoint"], demo["onnx"], "--limit", "0"), "--limit"),
    ]
    for args, words in cases:
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error: ") and words in result.output, (args, result.output)
        assert result.output.count("\n") == 1, result.output


def test_data_shape_error_names_the_file_and_both_shapes(demo, tmp_path):
    wrong = write_npz(tmp_path / "wrong.npz", np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(UserError) as e:
        verify(demo["checkpoint"], demo["artifact"], data=wrong, progress=False)
    assert "wrong.npz" in str(e.value) and "(2, 1, 8, 8)" in str(e.value) and "1, 16, 16" in str(e.value)


@pytest.mark.parametrize("arch,asd,layer", [("vgg_small", "static", "conv3"), ("resnet20", "dynamic", "layer2.1.conv1")])
def test_layer_search_through_thresholds_pools_and_dynamic_shifts(arch, asd, layer):
    """No departure on a faithful conversion; the corrupted layer is named, also when its output is
    thresholded bits that go through a packed max-pool (VGG-Small, static ASD)."""
    import onnx
    import torch
    from conftest import TEST_INPUT, randomize
    from onnx import numpy_helper

    from sdbnn_deploy.convert import convert
    from sdbnn_deploy.departure import compare_layers
    from sdbnn_deploy.models import build

    model = randomize(build(arch, asd, 10, 3))
    shape = TEST_INPUT[arch]
    good = convert(model, arch=arch, input_shape=shape).onnx_model
    x = np.random.default_rng(1).standard_normal((2,) + shape).astype(np.float32)
    rows = compare_layers(model, good, x)
    assert len(rows) >= 8 and not any(r["departs"] for r in rows)  # VGG: its stem folds into the first bits
    assert {r["kind"] for r in rows} == {"bits", "float"}
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    init = next(t for t in bad.graph.initializer if t.name == f"{layer}.W_packed")
    init.CopyFrom(numpy_helper.from_array(~numpy_helper.to_array(init), init.name))  # every weight negated
    first = next(r for r in compare_layers(model, bad, x) if r["departs"])
    assert first["layer"] == layer, first


def test_rpi4_artifact_verified_under_qemu(demo, tmp_path):
    from sdbnn_deploy.compile import compile_model

    compile_model(demo["onnx"], "rpi4", tmp_path / "rpi4", batch=16)
    report = verify(demo["checkpoint"], tmp_path / "rpi4", limit=16, progress=False)
    assert report["passed"] and report["target"] == "rpi4" and report["deployed"]["arch"] == "aarch64"
    assert report["runtimes"]["tvm"]["top1_agreement"] == 1.0


def test_checkpoint_of_another_model_is_refused(demo, tmp_path):
    from sdbnn_deploy.checkpoint import save_checkpoint
    from sdbnn_deploy.models import build

    for classes, channels, words in ((7, 1, "not the same model"), (10, 3, "does not take inputs of shape")):
        other = tmp_path / f"other{classes}.pt"
        save_checkpoint(other, build("resnet20", "static", classes, channels).eval(), "resnet20", "static", (channels, 16, 16))
        result = cli(other, demo["onnx"], "--limit", 4)
        assert result.exit_code == 2 and words in result.output and "other" in result.output, result.output
