"""Target descriptions: every file loads into a valid TVM target, aliases resolve, the host is detected."""
import pytest
import tvm
from click.testing import CliRunner

from sdbnn_deploy.cli import main
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.targets import TARGETS_DIR, aliases, get_target, host_target_name, list_targets, target_names

REQUIRED = {"x86", "x86-avx2", "x86-avx512", "rpi3", "rpi4", "rpi5", "aarch64", "arm"}


def test_required_targets_exist():
    assert REQUIRED <= set(target_names())


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_target_loads_into_a_tvm_target(name):
    spec = get_target(name)
    target = tvm.target.Target(spec.tvm_target)
    assert target.kind.name == "llvm"
    assert spec.arch in ("x86_64", "aarch64")
    assert spec.schedule == {"x86_64": "x86", "aarch64": "arm"}[spec.arch]
    assert spec.threads >= 1


@pytest.mark.parametrize("name,cpu", [("rpi3", "cortex-a53"), ("rpi4", "cortex-a72"), ("rpi5", "cortex-a76")])
def test_raspberry_pis_are_cross_compiled_neon_targets(name, cpu):
    spec = get_target(name)
    assert spec.tvm_target == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": cpu, "mattr": ["+neon"]}
    assert spec.cross_compiler == "aarch64-linux-gnu-gcc"
    assert spec.rpc_key == name
    assert spec.threads == 4
    assert str(tvm.target.Target(spec.tvm_target).attrs["mcpu"]) == cpu


def test_x86_targets():
    assert get_target("x86-avx2").tvm_target == {"kind": "llvm", "mcpu": "x86-64-v3"}
    assert get_target("x86-avx512").tvm_target == {"kind": "llvm", "mcpu": "x86-64-v4",
                                                   "mattr": ["+avx512vpopcntdq"]}
    assert get_target("x86-avx512").cross_compiler is None


def test_arm_is_an_alias_of_rpi4():
    assert get_target("arm") == get_target("rpi4")
    assert get_target("arm").name == "rpi4"
    assert aliases()["arm"] == "rpi4"


def test_x86_resolves_to_the_host_best():
    assert get_target("x86").name == host_target_name()
    assert "x86" not in {t.name for t in list_targets()}
    assert "arm" not in {t.name for t in list_targets()}


def test_unknown_target_lists_the_valid_ones():
    with pytest.raises(UserError) as e:
        get_target("rpi9")
    message = str(e.value)
    assert "rpi9" in message
    for name in REQUIRED:
        assert name in message


def _cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n")
    return str(path)


@pytest.mark.parametrize("flags,expected", [
    ("popcnt avx avx2 avx512f avx512_vpopcntdq", "x86-avx512"),
    ("popcnt avx avx2 avx512f", "x86-avx2"),  # AVX-512 without VPOPCNTDQ (Skylake-X)
    ("popcnt avx avx2", "x86-avx2"),
    ("popcnt avx", "x86-generic"),
    ("", "x86-generic"),
])
def test_host_detection_from_cpuinfo(tmp_path, flags, expected):
    assert host_target_name(_cpuinfo(tmp_path, flags), machine="x86_64") == expected


def test_host_detection_on_arm_and_unknown_hosts(tmp_path):
    assert host_target_name(_cpuinfo(tmp_path, ""), machine="aarch64") == "aarch64"
    with pytest.raises(UserError, match="riscv64"):
        host_target_name(_cpuinfo(tmp_path, ""), machine="riscv64")


def test_every_detected_name_is_a_description():
    for name in ("x86-avx512", "x86-avx2", "x86-generic", "aarch64"):
        assert get_target(name).name == name


def test_every_file_parses():
    for path in TARGETS_DIR.glob("*.toml"):
        get_target(path.stem)


def test_cli_lists_targets():
    result = CliRunner().invoke(main, ["targets"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "TRIPLE", "CPU", "FEATURES", "THREADS", "RPC", "KEY"]
    rpi4 = next(line for line in lines if line.startswith("rpi4 "))
    assert rpi4.split() == ["rpi4", "aarch64-linux-gnu", "cortex-a72", "+neon", "4", "rpi4"]
    assert "arm -> rpi4" in lines
