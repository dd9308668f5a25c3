"""compile + run on x86: artifacts equal onnxruntime on the same ONNX, manifests, atomic writes, bad input.

Every x86 target this host's CPU runs is compiled and run (about 1.5 s each); others are not run.
"""
import hashlib
import json

import numpy as np
import onnx
import pytest
import tvm
from click.testing import CliRunner

import sdbnn_deploy.run as run_module
from onnx_graphs import OUTPUTS, custom_op_model, onnxruntime_outputs
from sdbnn_deploy.cli import main as cli
from sdbnn_deploy.compile import compile_model
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.run import load_manifest, run_artifact
from sdbnn_deploy.targets import _cpu_flags, get_target

FLAGS = _cpu_flags("/proc/cpuinfo")
X86_TARGETS = ["x86-generic"] + (["x86-avx2"] if {"avx2", "popcnt"} <= FLAGS else []) \
    + (["x86-avx512"] if {"avx512f", "avx512_vpopcntdq"} <= FLAGS else [])
BATCH = 2


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    files = {}
    for dynamic in (False, True):
        path = folder / f"tiny-{'se' if dynamic else 'static'}.onnx"
        onnx.save(custom_op_model(seed=int(dynamic), dynamic_shift=dynamic), str(path))
        files[dynamic] = path
    return files


@pytest.fixture(scope="module")
def host_artifact(onnx_files, tmp_path_factory):
    return compile_model(onnx_files[False], "x86", tmp_path_factory.mktemp("art") / "out", batch=BATCH)


def assert_same_as_onnxruntime(outputs: dict, expected: dict):
    assert list(outputs) == list(OUTPUTS)
    for name in ("bits", "counts"):  # binary layer outputs and integer counts: identical
        assert outputs[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(outputs[name], expected[name])
    np.testing.assert_allclose(outputs["logits"], expected["logits"], rtol=1e-5, atol=1e-5)
    assert np.array_equal(outputs["logits"].argmax(1), expected["logits"].argmax(1))


@pytest.mark.parametrize("target", X86_TARGETS)
@pytest.mark.parametrize("dynamic", [False, True], ids=["static-shift", "se-shift"])
def test_compiled_model_equals_onnxruntime(onnx_files, tmp_path, target, dynamic):
    artifact = compile_model(onnx_files[dynamic], target, tmp_path / "out", batch=BATCH)
    x = np.random.default_rng(7).standard_normal((BATCH, 20, 9, 7)).astype(np.float32)
    model = onnx.load(str(onnx_files[dynamic]))
    assert_same_as_onnxruntime(run_artifact(artifact.path, x, threads=2), onnxruntime_outputs(model, x))


def test_manifest(host_artifact, onnx_files):
    m = load_manifest(host_artifact.path)
    assert m == host_artifact.manifest
    assert host_artifact.library.is_file() and host_artifact.library.name == "model.so"
    assert m["arch"] == "x86_64" and m["target"]["requested"] == "x86" and m["target"]["name"] in X86_TARGETS
    assert m["target"]["tvm_target"]["kind"] == "llvm"
    assert m["inputs"] == [{"name": "x", "shape": [BATCH, 20, 9, 7], "dtype": "float32"}]
    assert m["outputs"] == [{"name": "logits", "shape": [BATCH, 5], "dtype": "float32"},
                            {"name": "bits", "shape": [BATCH, 9, 7, 2], "dtype": "uint64"},
                            {"name": "counts", "shape": [BATCH, 7, 4, 3], "dtype": "int32"}]
    assert m["source"]["sha256"] == hashlib.sha256(onnx_files[False].read_bytes()).hexdigest()
    assert m["tvm_version"].startswith("0.27") and m["build"]["batch"] == BATCH and m["threads"] >= 1
    assert sorted(p.name for p in host_artifact.path.iterdir()) == ["manifest.json", "model.so"]


def test_recompile_replaces_an_artifact_and_leaves_no_temporary_folders(onnx_files, tmp_path):
    out = tmp_path / "out"
    compile_model(onnx_files[False], "x86-generic", out, batch=1)
    compile_model(onnx_files[True], "x86-generic", out, batch=1, threads=3)
    m = load_manifest(out)
    assert m["threads"] == 3 and m["source"]["path"].endswith("tiny-se.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_compile_writes_nothing(tmp_path):
    bad = custom_op_model()
    bad.graph.node.insert(1, onnx.helper.make_node("Gelu", ["x1"], ["g"], name="gelu0", domain="com.microsoft"))
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    with pytest.raises(UserError, match="com.microsoft::Gelu"):
        compile_model(tmp_path / "bad.onnx", "x86", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_out_dir_that_is_not_an_artifact_is_left_alone(onnx_files, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an sdbnn-deploy artifact"):
        compile_model(onnx_files[False], "x86", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_unknown_target_lists_the_valid_ones(onnx_files, tmp_path):
    with pytest.raises(UserError, match=r"unknown target 'x87'; valid targets: .*x86-avx2"):
        compile_model(onnx_files[False], "x87", tmp_path / "out")


def test_file_that_is_not_onnx(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(UserError, match="not an ONNX model"):
        compile_model(tmp_path / "m.onnx", "x86", tmp_path / "out")


def _edit_manifest(artifact, tmp_path, change):
    """A copy of the artifact with its manifest edited."""
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.so").write_bytes(artifact.library.read_bytes())
    manifest = dict(artifact.manifest)
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_run_refuses_an_artifact_of_another_architecture(host_artifact, tmp_path):
    copy = _edit_manifest(host_artifact, tmp_path, lambda m: m.update(arch="riscv64"))
    with pytest.raises(UserError, match="built for riscv64 .*this host is x86_64"):
        run_artifact(copy, np.zeros((BATCH, 20, 9, 7), np.float32))


def test_run_refuses_code_for_cpu_features_the_host_lacks(host_artifact, tmp_path, monkeypatch):
    def avx512(m):
        m["target"] = {**m["target"], "name": "x86-avx512",
                       "tvm_target": {"kind": "llvm", "mcpu": "x86-64-v4", "mattr": ["+avx512vpopcntdq"]}}

    copy = _edit_manifest(host_artifact, tmp_path, avx512)
    monkeypatch.setattr(run_module, "_cpu_flags", lambda path: {"avx2", "popcnt", "fma", "bmi2", "movbe"})
    with pytest.raises(UserError, match="x86-avx512, which needs .*avx512_vpopcntdq.*--target x86"):
        run_artifact(copy, np.zeros((BATCH, 20, 9, 7), np.float32))


def test_run_checks_inputs(host_artifact):
    with pytest.raises(UserError, match=r"shape \[1, 20, 9, 7\], the artifact was compiled for \[2, 20, 9, 7\]"):
        run_artifact(host_artifact.path, np.zeros((1, 20, 9, 7), np.float32))
    with pytest.raises(UserError, match="no input 'y'"):
        run_artifact(host_artifact.path, {"y": np.zeros((BATCH, 20, 9, 7), np.float32)})
    with pytest.raises(UserError, match="not an artifact"):
        run_artifact(host_artifact.path / "model.so", np.zeros(1))


def test_cli_compile_and_run(onnx_files, tmp_path):
    runner = CliRunner()
    out = tmp_path / "art"
    result = runner.invoke(cli, ["compile", str(onnx_files[False]), "--target", "x86-generic", "-o", str(out),
                                 "--batch", str(BATCH), "--threads", "1"])
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(1).standard_normal((BATCH, 20, 9, 7)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = runner.invoke(cli, ["run", str(out), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npz")])
    assert result.exit_code == 0, result.output
    assert "bits: uint64[2, 9, 7, 2]" in result.output
    saved = dict(np.load(tmp_path / "y.npz"))
    assert_same_as_onnxruntime({k: saved[k] for k in OUTPUTS},
                               onnxruntime_outputs(onnx.load(str(onnx_files[False])), x))


def test_cli_bad_target_exits_2_with_one_line(onnx_files, tmp_path):
    result = CliRunner().invoke(cli, ["compile", str(onnx_files[False]), "--target", "pi9", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.startswith("error: unknown target 'pi9'; valid targets:")
    assert not (tmp_path / "o").exists()


def test_cli_bad_shape_entry_in_the_users_tuned_shapes_exits_2_naming_the_file(onnx_files, tmp_path):
    """A [params.shapes] entry the schedule cannot use (here in the user's file of tuned shapes) is one line
    naming the files of the target and the shape, not a traceback, and no artifact is written."""
    from sdbnn_deploy.targets import user_shapes_path
    from sdbnn_deploy.tvm import OP_ATTR, schedule_x86
    from sdbnn_deploy.tvm.relax_import import import_onnx

    params = get_target("x86").params  # the key as compile makes it: with the target's pixel lanes
    mod = import_onnx(onnx.load(str(onnx_files[False])), lanes=schedule_x86.conv_lanes(params),
                      pixel_lanes=params.get("pixel_lanes", False))
    convs = [f for f in mod.functions.values() if f.attrs is not None and f.attrs.get(OP_ATTR) == "BinaryConv2d"]
    key = schedule_x86.conv_key(tvm.s_tir.Schedule(convs[0]))
    path = user_shapes_path(get_target("x86").name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[params.shapes."{key}"]\ntile_scope = "registers"\n')
    try:
        result = CliRunner().invoke(cli, ["compile", str(onnx_files[False]), "--target", "x86",
                                          "-o", str(tmp_path / "o")])
    finally:
        path.unlink()
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: target {get_target('x86').name} (")
    assert str(path) in result.output and key in result.output and "tile_scope must be one of" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
