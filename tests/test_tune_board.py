"""compile --tune for a board over TVM RPC (sdbnn_deploy.tune with a remote measure step), on the emulated
Raspberry Pi 4 (sdbnn_deploy.board; its times mean nothing, so none is asserted): the winners land in a
temporary copy of targets/rpi4.toml, the artifact is compiled with them and equals onnxruntime; clear
errors for a missing, unreachable or wrong board and an unknown tracker key.
Needs the board's root filesystem (scripts/setup-system.sh, built once, see tests/test_board.py)."""
import json

import numpy as np
import onnx
import pytest
import tvm
from click.testing import CliRunner

from onnx_graphs import OUTPUTS, custom_op_model, onnxruntime_outputs
from sdbnn_deploy import tune
from sdbnn_deploy.board import EmulatedBoard, LocalServer, LocalTracker, ensure_rootfs, free_port
from sdbnn_deploy.cli import main as cli
from sdbnn_deploy.compile import compile_model
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.run import run_artifact
from sdbnn_deploy.targets import get_target
from sdbnn_deploy.tvm import schedule_arm

SHAPE = (1, 20, 8, 8)  # one input of the tiny model: convs with output widths 8, 2 and 4


@pytest.fixture(scope="module")
def tracker():
    """A local tracker with an emulated Pi 4 registered under the target's key (rpi4)."""
    with LocalTracker() as tracker, EmulatedBoard(tracker=tracker.address, key="rpi4", rootfs=ensure_rootfs()):
        yield tracker


@pytest.fixture(scope="module")
def x86_server():
    """This host's own TVM RPC server: an x86 device over RPC."""
    with LocalServer() as server:
        yield server


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(custom_op_model(h=SHAPE[2], w=SHAPE[3]), str(path))
    return path


def test_compile_tune_on_the_board_stores_and_uses_the_winners(tracker, model_path, targets_copy, tmp_path,
                                                                 monkeypatch):
    rpi4 = targets_copy / "rpi4.toml"
    head = rpi4.read_text()
    # Two candidates, neither the target's global tile (2 pixels x 4 vectors, one whole weight block):
    # whichever wins differs from the default, and both cut the weight blocks into parts.
    space = [{"tile_pixels": 1, "tile_vectors": 2}, {"tile_pixels": 4, "tile_vectors": 1}]
    monkeypatch.setitem(tune.SEARCH_SPACES, "arm", lambda sch, params: space)
    chosen = []  # (shape key, per-shape params) of every conv scheduled, in order

    def recorded_choice(sch, params, original=schedule_arm.conv_choice):
        chosen.append((schedule_arm.conv_key(sch), original(sch, params)))
        return chosen[-1][1]

    monkeypatch.setattr(schedule_arm, "conv_choice", recorded_choice)
    result = CliRunner().invoke(cli, ["compile", str(model_path), "--target", "rpi4", "--tune", "--tracker",
                                      tracker.address, "-o", str(tmp_path / "out"), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert f"rpi4: tuned on tracker {tracker.address} key rpi4" in result.output and "EMULATED" in result.output

    table = get_target("rpi4").params["shapes"]
    assert sorted(table) == ["10x10x1>8x8x18:3x3:bits", "4x4x2>4x4x2:1x1:int", "6x6x2>2x2x6:3x3:affine"]
    assert all(entry in space for entry in table.values())
    assert rpi4.read_text().startswith(head.rstrip("\n")), "the hand-written part of rpi4.toml must stay"
    # The compile after the search scheduled its three convs with the winners (the last three choices).
    assert dict(chosen[-3:]) == table
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["target"]["params"]["shapes"] == table

    x = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    got = run_artifact(tmp_path / "out", x, threads=1)
    want = onnxruntime_outputs(onnx.load(str(model_path)), x)
    for name in ("bits", "counts"):
        np.testing.assert_array_equal(got[name], want[name])
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)
    assert list(got) == list(OUTPUTS)


def test_module_cli_tunes_a_board_through_the_tracker(tracker, targets_copy, monkeypatch, capsys):
    monkeypatch.setattr(tune, "SHAPES", [(64, 24, 3, 1, 1, 4, "bits")])
    assert tune.main(["--target", "rpi4", "--tracker", tracker.address]) == 0
    assert "rpi4: tuned on tracker" in capsys.readouterr().out
    assert list(get_target("rpi4").params["shapes"]) == ["6x6x1>4x4x6:3x3:bits"]


def test_x86_search_over_rpc_is_exact_and_keyed_like_the_local_one(x86_server):
    shape = (64, 24, 3, 1, 1, 4, "bits")
    session = tune.measuring_session(get_target("x86-generic"), rpc_address=x86_server.address)
    (result,) = tune.tune_shapes("x86-generic", [shape], rounds=1, session=session)
    (local,) = tune.tune_shapes("x86-generic", [shape], rounds=1)
    assert result.key == local.key and result.candidates == local.candidates
    assert result.seconds > 0 and result.params["epilogue"] in ("pixels", "row")


@pytest.mark.parametrize("cin, key, want", [
    (256, "10x10x4>8x8x6:3x3:bits", [(1, 4), (2, 2), (2, 4), (4, 1), (4, 2), (4, 4), (8, 1), (8, 2)]),
    # Cin <= 128: the pairwise trees sum a whole weight block of two columns, whatever the entry asks
    (64, "10x10x1>8x8x6:3x3:bits", [(2, 4), (4, 4), (8, 4)]),
])
def test_arm_candidates_fit_the_registers_and_divide_the_width(cin, key, want):
    spec = get_target("rpi4")
    func = tune.conv_primfunc(cin, 24, 3, 1, 1, 8, "bits", lanes=4, conv=schedule_arm.conv_kernels(spec.params))
    sch = tvm.s_tir.Schedule(func)
    assert schedule_arm.conv_key(sch) == key
    tiles = [(c["tile_pixels"], c["tile_vectors"]) for c in tune.arm_candidates(sch, spec.params)]
    assert tiles == want


@pytest.mark.parametrize("options, message", [
    (["--target", "rpi4", "--tune"],
     "--tune: rpi4 is a board: measure on it with --rpc HOST:PORT or --tracker HOST:PORT --key rpi4"),
    (["--target", "rpi4", "--tune", "--rpc", "nohost"], "--rpc 'nohost': expected HOST:PORT"),
    (["--target", "rpi4", "--tune", "--key", "rpi4"], "--key needs --tracker HOST:PORT"),
    (["--target", "x86-generic", "--rpc", "127.0.0.1:9090"],
     "--rpc and --tracker/--key name the board that --tune measures on: add --tune"),
])
def test_bad_options_are_one_line_errors(model_path, tmp_path, options, message):
    result = CliRunner().invoke(cli, ["compile", str(model_path), "-o", str(tmp_path / "o"), *options])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1].startswith(f"error: {message}")
    assert not (tmp_path / "o").exists()


def test_unreachable_board_wrong_architecture_and_unknown_key(tracker, x86_server, model_path, tmp_path):
    port = free_port()  # nothing listens there
    with pytest.raises(UserError, match=f"rpc 127.0.0.1:{port}: cannot connect to a TVM RPC server"):
        compile_model(model_path, "rpi4", tmp_path / "o", tune=True, board={"rpc_address": f"127.0.0.1:{port}"})
    with pytest.raises(UserError, match=f"the device at rpc {x86_server.address} is x86_64, but rpi4 code is "
                                        "aarch64"):
        compile_model(model_path, "rpi4", tmp_path / "o", tune=True, board={"rpc_address": x86_server.address})
    with pytest.raises(UserError, match=r"--key rpi5: no board serves this key .*\(keys served there: rpi4\)"):
        compile_model(model_path, "rpi5", tmp_path / "o", tune=True, board={"tracker": tracker.address})
    assert not (tmp_path / "o").exists()


def test_module_cli_help_and_board_without_address(capsys):
    with pytest.raises(SystemExit) as exit_help:
        tune.main(["--help"])
    assert exit_help.value.code == 0 and "--rpc HOST:PORT" in capsys.readouterr().out
    assert tune.main(["--target", "rpi4"]) == 2
    assert "error: --tune: rpi4 is a board" in capsys.readouterr().err
