"""The ARM path: the kernels with the NEON schedules, cross-compiled for a Raspberry Pi 4, run under
qemu-aarch64 with the aarch64 TVM runtime, equal the numpy references exactly.

These tests need aarch64-linux-gnu-gcc and qemu-aarch64 (scripts/setup-system.sh installs them): where
they are missing the tests fail with the name of the Debian package, they are not skipped.
"""
import json
import re

import numpy as np
import pytest
import tvm
from tvm import relax

from conftest import conv_case, random_signs
from sdbnn_deploy import aarch64
from sdbnn_deploy.bits import pack_signs, words_for
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.ops import binarize_pack, binary_conv2d, packed_max_pool2d
from sdbnn_deploy.targets import get_target
from sdbnn_deploy.tvm import OP_ATTR, apply_schedules, kernels, schedule_arm

RPI4 = get_target("rpi4")


def _relax_module(op: str, compute, inputs: list[np.ndarray], constants: list[np.ndarray]) -> tvm.IRModule:
    """main(*inputs) = compute(*inputs, *constants), one PrimFunc tagged as the custom op `op`."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"in{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(inputs)]
    with bb.function("main", params):
        with bb.dataflow():
            y = bb.emit_te(compute, *params, *(relax.const(c) for c in constants))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc):
            mod[gvar] = func.with_attr(OP_ATTR, op)
    return mod


def _build(mod: tvm.IRModule, target=RPI4):
    """Schedule for the target and compile: the VM executable."""
    return tvm.compile(apply_schedules(mod, target.schedule, target.params), tvm.target.Target(target.tvm_target))


def _run_on_rpi4(tmp_path, op, compute, inputs, constants=()) -> np.ndarray:
    library = tmp_path / f"{op}.so"
    _build(_relax_module(op, compute, inputs, list(constants))).export_library(
        str(library), fcompile=tvm.support.cc.cross_compiler(RPI4.cross_compiler))
    (out,) = aarch64.run_library(library, inputs, threads=2)
    return out


CONV_CASES = [
    # n, cin, h, w, cout, k, stride, pad, mode
    (1, 3, 7, 6, 5, 3, 1, 1, "int"),  # one partial word, odd sizes
    (2, 64, 5, 5, 8, 3, 1, 1, "int"),  # exactly one word
    (1, 130, 6, 7, 19, 3, 2, 1, "int"),  # three words, stride 2, odd Cout
    (1, 70, 5, 4, 9, 1, 1, 0, "affine"),  # 1x1
    (1, 33, 9, 8, 70, 5, 2, 2, "bits"),  # 5x5, Cout over one output word
    (1, 100, 6, 6, 16, 3, 1, 0, "bits"),  # no padding
]


@pytest.mark.parametrize("n,cin,h,w,cout,k,stride,pad,mode", CONV_CASES)
def test_binary_conv2d_under_qemu_equals_reference(tmp_path, n, cin, h, w, cout, k, stride, pad, mode):
    x, wt, extra = conv_case(cin + k + cout, n, cin, h, w, cout, k, stride, pad, mode)
    strides, pads = (stride, stride), (pad, pad)
    blocked, correction = kernels.prepare_conv_weights(wt, cin, (h, w), pads, strides,
                                                       schedule_arm.conv_lanes(RPI4.params))

    def compute(xx, ww, cc, *rest):
        return kernels.binary_conv2d(xx, ww, cc, *rest, in_channels=cin, out_channels=cout,
                                     strides=strides, pads=pads, mode=mode)

    got = _run_on_rpi4(tmp_path, "BinaryConv2d", compute, [x], [blocked, correction, *extra])
    want = binary_conv2d.reference(x, wt, *extra, in_channels=cin, strides=strides, pads=pads, mode=mode)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("per_sample", [False, True])
def test_binarize_pack_under_qemu_equals_reference(tmp_path, per_sample):
    rng = np.random.default_rng(7)
    n, c, h, w = 2, 70, 5, 3
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    shift = rng.normal(size=(n, c) if per_sample else (c,)).astype(np.float32)
    x[:, :5] = -(shift[:, :5, None, None] if per_sample else shift[:5, None, None])  # x + shift == 0 -> -1
    got = _run_on_rpi4(tmp_path, "BinarizePack", kernels.binarize_pack, [x, shift])
    want = binarize_pack.reference(x, shift)
    assert got.dtype == np.uint64 and got.shape == (n, h, w, words_for(c))
    np.testing.assert_array_equal(got, want)


def test_packed_max_pool2d_under_qemu_equals_reference(tmp_path):
    rng = np.random.default_rng(3)
    c = 100
    x = pack_signs(random_signs(rng, 2, 7, 6, c))
    min_mask = pack_signs(random_signs(rng, c))

    def compute(xx, mm):
        return kernels.packed_max_pool2d(xx, mm, kernel_shape=(2, 2), strides=(2, 2))

    got = _run_on_rpi4(tmp_path, "PackedMaxPool2d", compute, [x, min_mask])
    want = packed_max_pool2d.reference(x, min_mask, channels=c, kernel_shape=(2, 2), strides=(2, 2))
    np.testing.assert_array_equal(got, want)


def _conv_assembly(target) -> str:
    x, wt, _ = conv_case(0, 1, 256, 8, 8, 32, 3, 1, 1, "int")
    blocked, correction = kernels.prepare_conv_weights(wt, 256, (8, 8), (1, 1), (1, 1),
                                                       schedule_arm.conv_lanes(target.params))

    def compute(xx, ww, cc):
        return kernels.binary_conv2d(xx, ww, cc, in_channels=256, out_channels=32, strides=(1, 1),
                                     pads=(1, 1), mode="int")

    executable = _build(_relax_module("BinaryConv2d", compute, [x], [blocked, correction]), target)
    (llvm_module,) = [m for m in executable.mod.imports if m.kind == "llvm"]
    return llvm_module.inspect_source("s")


@pytest.mark.parametrize("name", ["rpi3", "rpi4", "rpi5"])
def test_arm_conv_counts_bits_on_128_bit_neon_registers(name):
    asm = _conv_assembly(get_target(name))
    assert re.search(r"\bcnt\s+v\d+\.16b, v\d+\.16b", asm), "no NEON byte popcount (cnt .16b)"
    assert re.search(r"\beor\s+v\d+\.16b", asm), "the XOR is not done on 128-bit registers"


def test_run_under_qemu_takes_inputs_in_manifest_order(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 10, 2, 2)).astype(np.float32)
    shift = rng.normal(size=(10,)).astype(np.float32)
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    _build(_relax_module("BinarizePack", kernels.binarize_pack, [x, shift], [])).export_library(
        str(artifact / "model.so"), fcompile=tvm.support.cc.cross_compiler(RPI4.cross_compiler))
    (artifact / "manifest.json").write_text(json.dumps({"library": "model.so", "inputs": [{"name": "X"}, {"name": "shift"}]}))
    (got,) = aarch64.run_under_qemu(artifact, {"shift": shift, "X": x})  # dict order differs on purpose
    np.testing.assert_array_equal(got, binarize_pack.reference(x, shift))
    with pytest.raises(UserError, match="shift"):
        aarch64.run_under_qemu(artifact, {"X": x})


def test_an_x86_library_is_refused(tmp_path):
    x = np.zeros((1, 3, 2, 2), dtype=np.float32)
    shift = np.zeros((3,), dtype=np.float32)
    library = tmp_path / "x86.so"
    _build(_relax_module("BinarizePack", kernels.binarize_pack, [x, shift], []),
           get_target("x86-avx2")).export_library(str(library))
    with pytest.raises(UserError, match="built for x86_64, not aarch64"):
        aarch64.run_library(library, [x, shift])


def test_missing_cross_compiler_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no tool at all
    monkeypatch.setattr(aarch64, "is_aarch64_host", lambda: False)
    with pytest.raises(UserError, match="gcc-aarch64-linux-gnu"):
        aarch64.cross_compiler()


def test_missing_qemu_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(aarch64, "is_aarch64_host", lambda: False)
    with pytest.raises(UserError, match="qemu-user"):
        aarch64.emulator()
    library = tmp_path / "lib.so"
    library.write_bytes(b"\x7fELF" + bytes(14) + (0xB7).to_bytes(2, "little"))  # an aarch64 ELF header
    with pytest.raises(UserError, match="apt-get install qemu-user"):
        aarch64.run_library(library, [])


def test_runtime_is_the_aarch64_build_of_the_installed_versions():
    runtime = aarch64.ensure_runtime()
    versions = aarch64.runtime_versions()
    assert runtime.name == f"tvm-{versions['apache-tvm']}-ffi-{versions['apache-tvm-ffi']}"
    for lib in ("libtvm_runtime.so", "libtvm_ffi.so"):
        assert aarch64.elf_arch(runtime / "lib" / lib) == "aarch64"
    assert (runtime / "include" / "tvm" / "ffi" / "c_api.h").is_file()
