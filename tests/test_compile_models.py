"""Every architecture of models/, converted and compiled, equals onnxruntime on the same ONNX.

On the host's best x86 target: every architecture in both ASD forms. On the other x86 targets this
CPU runs, and on a Raspberry Pi 4 under qemu-aarch64: every architecture, the ASD forms alternating.
Identical top-1; logits within 1e-5 relative (the float layers around the binary ones may round
differently: TVM fuses multiply-adds, onnxruntime may not).
"""
import numpy as np
import pytest

from conftest import TEST_INPUT, randomize
from sdbnn_deploy.compile import compile_model
from sdbnn_deploy.convert import convert
from sdbnn_deploy.models import ARCHITECTURES, build
from sdbnn_deploy.run import run_artifact
from sdbnn_deploy.targets import _cpu_flags, host_target_name
from sdbnn_deploy.verify_conversion import ort_session

BATCH = 2
FLAGS = _cpu_flags("/proc/cpuinfo")
HOST = host_target_name()
OTHER_X86 = [t for t, needs in (("x86-generic", set()), ("x86-avx2", {"avx2", "popcnt"}),
                                ("x86-avx512", {"avx512f", "avx512_vpopcntdq"})) if needs <= FLAGS and t != HOST]
ARCHS = list(ARCHITECTURES)


def _cases():
    cases = [(arch, asd, HOST) for arch in ARCHS for asd in ("static", "dynamic")]
    for i, arch in enumerate(ARCHS):
        asd = ("static", "dynamic")[i % 2]
        cases += [(arch, asd, t) for t in OTHER_X86]
        cases.append((arch, ("dynamic", "static")[i % 2], "rpi4"))
    return cases


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(arch, asd) -> (ONNX path, probe inputs, onnxruntime logits), converted once per module."""
    folder = tmp_path_factory.mktemp("models")
    cache = {}

    def get(arch, asd):
        if (arch, asd) not in cache:
            model = randomize(build(arch, asd), seed=len(arch) + len(asd))
            result = convert(model, output=folder / f"{arch}-{asd}.onnx", arch=arch, input_shape=TEST_INPUT[arch],
                             probe_batch=2)
            x = np.random.default_rng(3).standard_normal((BATCH,) + TEST_INPUT[arch]).astype(np.float32)
            cache[arch, asd] = (folder / f"{arch}-{asd}.onnx", x, ort_session(result.onnx_model).run(None, {"input": x})[0])
        return cache[arch, asd]
    return get


@pytest.mark.parametrize("arch,asd,target", _cases())
def test_compiled_architecture_equals_onnxruntime(converted, tmp_path, arch, asd, target):
    path, x, expected = converted(arch, asd)
    artifact = compile_model(path, target, tmp_path / "artifact", batch=BATCH)
    got = next(iter(run_artifact(artifact.path, x).values()))
    assert got.shape == expected.shape
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= 1e-5
