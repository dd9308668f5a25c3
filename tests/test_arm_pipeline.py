"""Every sdbnn kernel, as built for a Raspberry Pi 4, reads and writes only inside its buffers: run under
qemu with each buffer pressed against an inaccessible page (tests/guard_page_call.c), a stray access is a
segfault here rather than a crash that depends on what the Relax VM happens to allocate next to it.

Regression: BinarizePack tested `channel < C` in the same And as the load of x[channel] and shift[channel],
so every word read all 64 channels; with C = 16 the first ResNet-20 layer read up to 48 KiB past its input.
The compiled resnet20 (dynamic ASD) for rpi4 segfaulted under qemu once the float pipeline of
schedule_float and the byte-lane conv changed the VM's memory layout enough for that read to leave the heap.

Needs aarch64-linux-gnu-gcc and qemu-aarch64 (scripts/setup-system.sh); missing, the tests fail with the
Debian package to install.
"""
import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te

from sdbnn_deploy import aarch64
from sdbnn_deploy.bits import pack_signs
from sdbnn_deploy.ops import binarize_pack, binary_conv2d, packed_max_pool2d
from sdbnn_deploy.targets import get_target
from sdbnn_deploy.tvm import OP_ATTR, conv_kernels, kernels, schedule_arm, schedule_primfunc

RPI4 = get_target("rpi4")
HARNESS_SOURCE = Path(__file__).with_name("guard_page_call.c")


@pytest.fixture(scope="session")
def harness() -> Path:
    """guard_page_call.c built for aarch64 against the cached aarch64 TVM runtime (once per source)."""
    runtime = aarch64.ensure_runtime()
    digest = hashlib.sha256(HARNESS_SOURCE.read_bytes()).hexdigest()[:12]
    binary = runtime / f"guard-page-call-{digest}"
    if not binary.is_file():
        lib = runtime / "lib"
        tmp = binary.with_name(binary.name + ".tmp")
        subprocess.run([aarch64.cross_compiler(), "-O2", "-std=c11", "-Wall", "-Werror", "-o", str(tmp),
                        str(HARNESS_SOURCE), f"-I{runtime / 'include'}", f"-L{lib}", "-Wl,--no-as-needed",
                        "-ltvm_ffi", "-ltvm_runtime", "-Wl,--disable-new-dtags", f"-Wl,-rpath,{lib}"],
                       check=True, capture_output=True, text=True)
        tmp.replace(binary)
    return binary


def _run_guarded(harness: Path, tmp_path: Path, op: str, compute, inputs: list[np.ndarray]) -> np.ndarray:
    """compute(*inputs) as one PrimFunc scheduled for rpi4, built for aarch64, run under qemu with its
    buffers ending at (then starting after) an inaccessible page; returns the output (equal in both)."""
    placeholders = [te.placeholder(a.shape, str(a.dtype), name=f"in{i}") for i, a in enumerate(inputs)]
    out = compute(*placeholders)
    func = te.create_prim_func([*placeholders, out]).with_attr(OP_ATTR, op)
    func = schedule_primfunc(func, RPI4.schedule, RPI4.params)
    library = tmp_path / f"{op}.so"
    tvm.tirx.build(tvm.IRModule({"main": func}), target=tvm.target.Target(RPI4.tvm_target)).export_library(
        str(library), fcompile=tvm.support.cc.cross_compiler(aarch64.cross_compiler()))
    arrays = [*inputs, np.zeros([int(d) for d in out.shape], dtype=str(out.dtype))]
    results = []
    for placement in ("end", "start"):
        args = []
        for i, array in enumerate(arrays):
            path = tmp_path / f"{placement}{i}.bin"
            np.ascontiguousarray(array).tofile(path)
            args += [str(path), str(array.dtype), ",".join(map(str, array.shape))]
        proc = subprocess.run([*aarch64.emulator(), str(harness), str(library), "main", placement, *args],
                              capture_output=True, text=True)
        assert proc.returncode == 0, (f"{op} with its buffers at the {placement} of guarded pages: exit "
                                      f"{proc.returncode} (-11: an access outside a buffer)\n{proc.stderr[-2000:]}")
        results.append(np.fromfile(args[-3], dtype=arrays[-1].dtype).reshape(arrays[-1].shape))
    np.testing.assert_array_equal(results[0], results[1])
    return results[0]


@pytest.mark.parametrize("per_sample", [False, True])
def test_binarize_pack_reads_only_its_channels(harness, tmp_path, per_sample):
    rng = np.random.default_rng(11)
    n, c, h, w = 2, 16, 8, 8  # one word with 48 padding bits: the ResNet-20 stem's output
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    shift = rng.normal(size=(n, c) if per_sample else (c,)).astype(np.float32)
    got = _run_guarded(harness, tmp_path, "BinarizePack", kernels.binarize_pack, [x, shift])
    np.testing.assert_array_equal(got, binarize_pack.reference(x, shift))


@pytest.mark.parametrize("cin,cout,k,mode", [
    (64, 8, 3, "int"),  # one word: half a quad, the other half is padding
    (33, 70, 3, "bits"),  # a partial word; output bits past Cout (thresholds not read there)
    (512, 8, 3, "affine"),  # 4 quads per tap: one uint8 chunk per kernel row, widened
])
def test_byte_lane_conv_reads_only_its_buffers(harness, tmp_path, cin, cout, k, mode):
    rng = np.random.default_rng(cin + cout)
    h = w = 5
    x = pack_signs(rng.choice(np.array([-1, 1], dtype=np.int8), size=(1, h, w, cin)))
    wt = pack_signs(rng.choice(np.array([-1, 1], dtype=np.int8), size=(cout, k, k, cin)))
    extra = {"int": [], "bits": [rng.integers(-9, 9, size=cout).astype(np.int32)],
             "affine": [rng.normal(size=cout).astype(np.float32), rng.normal(size=cout).astype(np.float32)]}[mode]
    conv = conv_kernels(RPI4.schedule, RPI4.params)
    assert conv.__name__.endswith("kernels_arm"), "rpi4 no longer selects the byte-lane conv"
    blocked, correction = conv.prepare_conv_weights(wt, cin, (h, w), (1, 1), (1, 1),
                                                    schedule_arm.conv_lanes(RPI4.params))

    def compute(xx, ww, cc, *rest):
        return conv.binary_conv2d(xx, ww, cc, *rest, in_channels=cin, out_channels=cout, strides=(1, 1),
                                  pads=(1, 1), mode=mode)

    got = _run_guarded(harness, tmp_path, "BinaryConv2d", compute, [x, blocked, correction, *extra])
    want = binary_conv2d.reference(x, wt, *extra, in_channels=cin, strides=(1, 1), pads=(1, 1), mode=mode)
    np.testing.assert_array_equal(got, want)


def test_packed_max_pool_reads_only_its_buffers(harness, tmp_path):
    rng = np.random.default_rng(4)
    x = pack_signs(rng.choice(np.array([-1, 1], dtype=np.int8), size=(1, 6, 6, 40)))
    mask = pack_signs(rng.choice(np.array([-1, 1], dtype=np.int8), size=(40,)))

    def compute(xx, mm):
        return kernels.packed_max_pool2d(xx, mm, kernel_shape=(2, 2), strides=(2, 2))

    got = _run_guarded(harness, tmp_path, "PackedMaxPool2d", compute, [x, mask])
    np.testing.assert_array_equal(got, packed_max_pool2d.reference(x, mask, channels=40, kernel_shape=(2, 2),
                                                                   strides=(2, 2)))
