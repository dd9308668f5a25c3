"""The emulated Raspberry Pi: the real aarch64 TVM RPC server under qemu-user, directly and behind a tracker.

The board's root filesystem is built once (about 80 s plus downloads; needs root, debootstrap and
qemu-user-static from scripts/setup-system.sh) and cached in ~/.cache/sdbnn-deploy/board/.
"""
import os
import subprocess

import psutil

import pytest
from click.testing import CliRunner
from profile_artifacts import compiled_artifacts

from sdbnn_deploy.board import SITE_PACKAGES, EmulatedBoard, LocalTracker, ensure_rootfs, write_wrapper
from sdbnn_deploy.cli import main
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.profile import EMULATED_NOTE, profile_artifact
from sdbnn_deploy.remote import connect


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return compiled_artifacts(tmp_path_factory)


@pytest.fixture(scope="module")
def rootfs():
    return ensure_rootfs()


@pytest.fixture(scope="module")
def board(rootfs):
    with EmulatedBoard(rootfs=rootfs) as b:
        yield b


def test_the_board_python_is_aarch64_and_its_own_executable(rootfs):
    wrapper = write_wrapper(rootfs)
    out = subprocess.run([str(wrapper), "-c", "import platform, sys; print(platform.machine(), sys.executable)"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["aarch64", str(wrapper)], out.stderr
    assert (rootfs / SITE_PACKAGES / "tvm").is_dir()


def test_board_session_says_aarch64_and_emulated(board):
    session = connect(rpc_address=board.address)
    assert (session.arch, session.emulated) == ("aarch64", True)


def test_profile_rpi4_artifact_on_the_board(board, artifacts):
    result = CliRunner().invoke(main, ["profile", str(artifacts["rpi4"]), "--rpc", board.address,
                                       "--repeat", "3", "--warmup", "1"])
    assert result.exit_code == 0, result.output
    assert "EMULATED: TIMES MEAN NOTHING" in result.output
    report = profile_artifact(artifacts["rpi4"], rpc=board.address, repeat=3, warmup=1)
    assert report["device"] == {"where": f"rpc {board.address}", "arch": "aarch64", "emulated": True,
                                "note": EMULATED_NOTE}
    assert report["target"] == "rpi4" and report["settings"]["threads"] == 1
    assert report["latency"]["repeats"] == 3 and report["latency"]["min_ms"] > 0
    assert len(report["layers"]) > 20 and any(r["layer"] == "layer2.0.conv1/BinaryConv2d" for r in report["layers"])
    assert report["baselines"] is None


def test_x86_artifact_is_refused_by_the_arm_board(board, artifacts):
    with pytest.raises(UserError, match=r"built for x86_64 .*but the device at rpc 127.0.0.1:\d+ is aarch64"):
        profile_artifact(artifacts["x86"], rpc=board.address)


def test_profile_through_a_tracker_by_key(rootfs, artifacts):
    with LocalTracker() as tracker, EmulatedBoard(tracker=tracker.address, key="rpi4", rootfs=rootfs):
        report = profile_artifact(artifacts["rpi4"], tracker=tracker.address, key="rpi4", repeat=2, warmup=1)
        assert report["device"]["where"] == f"tracker {tracker.address} key rpi4"
        assert report["device"]["emulated"] and report["device"]["note"] == EMULATED_NOTE
        assert report["latency"]["repeats"] == 2 and report["layers"]
        with pytest.raises(UserError, match=r"--key rpi5: no board serves this key .*keys served there: rpi4"):
            profile_artifact(artifacts["rpi4"], tracker=tracker.address, key="rpi5", timeout=10)


def test_board_stops_its_whole_process_group(rootfs):
    board = EmulatedBoard(rootfs=rootfs).start()
    session = connect(rpc_address=board.address)  # the server forks a worker for this session
    group = board.proc.pid
    members = [p for p in psutil.process_iter(["pid"]) if _group_of(p.pid) == group]
    assert len(members) >= 2  # the server and its session's worker
    board.stop()
    del session
    psutil.wait_procs(members, timeout=10)
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in members)


def _group_of(pid: int):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
