"""profile on this host and through a real x86 TVM RPC server; bad addresses and unreachable hosts."""
import json
import socket

import pytest
from click.testing import CliRunner
from profile_artifacts import compiled_artifacts

from sdbnn_deploy.board import LocalServer, LocalTracker, free_port
from sdbnn_deploy.cli import main
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.profile import grouped_rows, profile_artifact
from sdbnn_deploy.remote import connect, parse_address

FIGURES = ("median_ms", "p90_ms", "min_ms", "mean_ms", "std_ms")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    return compiled_artifacts(tmp_path_factory)


def check_latency(figures: dict, repeats: int):
    assert figures["repeats"] == repeats
    assert 0 < figures["min_ms"] <= figures["median_ms"] <= figures["p90_ms"]
    assert figures["std_ms"] >= 0 and figures["mean_ms"] >= figures["min_ms"]


def check_layers(report: dict):
    layers = report["layers"]
    assert len(layers) > 20
    assert [r["index"] for r in layers] == list(range(1, len(layers) + 1))
    assert all(r["median_ms"] >= 0 for r in layers)
    assert sum(r["share"] for r in layers) == pytest.approx(1.0)
    named = [r["layer"] for r in layers if r["layer"]]
    # ResNet-20: 18 binary convs, each a BinarizePack and a BinaryConv2d, named after the ONNX nodes.
    assert "layer1.0.conv1" in named and "layer3.2.conv2/BinaryConv2d" in named and len(named) == 36
    assert sum(1 for g in grouped_rows(layers) if g["custom"]) == 36


def test_profile_here_with_baselines(artifacts):
    report = profile_artifact(artifacts["x86"], threads=1, repeat=5, warmup=1)
    assert report["schema"] == "sdbnn-deploy-report" and report["kind"] == "profile"
    assert report["model"]["path"] == str(artifacts["onnx"]) and len(report["model"]["sha256"]) == 64
    assert report["device"] == {"where": "this host", "arch": "x86_64", "emulated": False, "note": None}
    assert report["settings"] == {"threads": 1, "repeat": 5, "warmup": 1, "layer_runs": 5}
    check_latency(report["latency"], 5)
    check_layers(report)
    assert set(report["baselines"]) == {"pytorch_fp32", "onnxruntime_fp32"}
    for figures in report["baselines"].values():
        check_latency(figures, 5)
        assert figures["speedup"] == pytest.approx(figures["median_ms"] / report["latency"]["median_ms"])
    assert "random weights" in report["baselines_note"]


def test_baselines_skipped_for_an_onnx_of_no_known_architecture(tmp_path):
    """An ONNX converted from an in-memory model (no architecture name) records none, and profile skips
    the float twin with a note instead of failing (0.1.0 wrote the name "None" there)."""
    import onnx

    from sdbnn_deploy.bench import random_model
    from sdbnn_deploy.convert import convert
    from sdbnn_deploy.profile import _binary_model

    model = convert(random_model("resnet20", "static"), input_shape=[3, 8, 8], probe_batch=1).onnx_model
    assert "sdbnn_deploy.arch" not in {p.key for p in model.metadata_props}
    manifest = {"source": {"path": str(tmp_path / "m.onnx")}, "outputs": [{"shape": [1, 10]}]}
    for arch in (None, "None"):
        if arch:
            onnx.helper.set_model_props(model, {"sdbnn_deploy.arch": arch})
        onnx.save(model, str(tmp_path / "m.onnx"))
        assert _binary_model(manifest, None) == (f"float baselines skipped: {tmp_path / 'm.onnx'} does not name "
                                                 "its architecture; pass --model MODEL.pt")


def test_profile_cli_json_plot_and_checkpoint_weights(artifacts, tmp_path):
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    result = CliRunner().invoke(main, ["profile", str(artifacts["x86"]), "--threads", "1", "--repeat", "3",
                                       "--warmup", "1", "--model", str(artifacts["checkpoint"]),
                                       "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "end-to-end latency" in result.output and "PyTorch fp32" in result.output
    report = json.loads(out.read_text())
    assert report["tools"]["tvm"] and report["target"].startswith("x86")
    assert report["baselines_note"].startswith(f"float twin (weights of {artifacts['checkpoint']}")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_through_x86_rpc_server(artifacts):
    with LocalServer() as server:
        report = profile_artifact(artifacts["x86"], rpc=server.address, threads=1, repeat=3, warmup=1)
    assert report["device"]["where"] == f"rpc {server.address}"
    assert report["device"]["arch"] == "x86_64" and not report["device"]["emulated"]
    check_latency(report["latency"], 3)
    check_layers(report)
    assert report["baselines"] is None and "only on this host" in report["baselines_note"]


def test_refused_port_is_a_clear_error():
    port = free_port()  # nothing listens there
    with pytest.raises(UserError, match=f"rpc 127.0.0.1:{port}: cannot connect to a TVM RPC server"):
        connect(rpc_address=f"127.0.0.1:{port}", timeout=10)


def test_silent_host_times_out(artifacts):
    """A host that accepts the connection but never answers: an error after --timeout, no hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        result = CliRunner().invoke(main, ["profile", str(artifacts["x86"]), "--rpc", address, "--timeout", "2"])
    assert result.exit_code == 2
    assert f"error: --rpc {address}: no answer within 2 s" in result.output


def test_tracker_without_the_key(artifacts):
    with LocalTracker() as tracker:
        with pytest.raises(UserError, match="--key rpi4: no board serves this key at tracker .* .keys served "
                                            "there: none"):
            profile_artifact(artifacts["x86"], tracker=tracker.address, key="rpi4", timeout=10)


@pytest.mark.parametrize("options, message", [
    ({"rpc": "localhost"}, "--rpc 'localhost': expected HOST:PORT"),
    ({"rpc": "h:99999"}, "expected HOST:PORT"),
    ({"tracker": "127.0.0.1:9190"}, "--tracker needs --key"),
    ({"key": "rpi4"}, "--key needs --tracker"),
    ({"rpc": "127.0.0.1:1", "tracker": "127.0.0.1:2", "key": "k"}, "not both"),
    ({"repeat": 0}, "--repeat"),
])
def test_bad_options(artifacts, options, message):
    with pytest.raises(UserError, match=message):
        profile_artifact(artifacts["x86"], **options)


def test_arm_artifact_is_not_profiled_on_this_host(artifacts):
    with pytest.raises(UserError, match="built for aarch64, this host is x86_64: profile it on a board"):
        profile_artifact(artifacts["rpi4"])


def test_parse_address():
    assert parse_address("192.168.1.20:9090", "--rpc") == ("192.168.1.20", 9090)
