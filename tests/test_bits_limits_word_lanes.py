"""ARM without byte lanes (schedule_arm with byte_lanes = false) compiles kernels' uint64-word conv, so the
importer emits "bits" there as "bits_limits" too (relax_import.compute_mode): cross-compiled for a
Raspberry Pi 4 and run under qemu-aarch64, it equals the numpy reference (needs aarch64-linux-gnu-gcc and
qemu-aarch64, as tests/test_aarch64.py)."""
import dataclasses

import numpy as np
import pytest
import tvm

from conftest import conv_case
from sdbnn_deploy import aarch64
from sdbnn_deploy.ops import binary_conv2d
from sdbnn_deploy.targets import get_target
from sdbnn_deploy.tvm import conv_kernels, kernels, schedule_arm
from sdbnn_deploy.tvm.relax_import import compute_mode, conv_constants
from test_aarch64 import _build, _relax_module

WORD_LANES = dataclasses.replace(get_target("rpi4"), params={**get_target("rpi4").params, "byte_lanes": False})


@pytest.mark.parametrize("n,cin,h,w,cout,k,stride,pad", [(1, 64, 6, 5, 70, 3, 1, 1), (2, 130, 7, 7, 16, 3, 2, 1)])
def test_word_lane_bits_limits_under_qemu_equal_reference(tmp_path, n, cin, h, w, cout, k, stride, pad):
    assert conv_kernels(WORD_LANES.schedule, WORD_LANES.params) is kernels
    assert compute_mode("bits", kernels) == "bits_limits"
    x, wt, (thresholds,) = conv_case(cin + cout, n, cin, h, w, cout, k, stride, pad, "bits")
    strides, pads = (stride, stride), (pad, pad)
    blocked, limits, _ = conv_constants(kernels, wt, cin, (h, w), pads, strides,
                                        schedule_arm.conv_lanes(WORD_LANES.params), "bits", thresholds)

    def compute(xx, ww, cc):
        return kernels.binary_conv2d(xx, ww, cc, in_channels=cin, out_channels=cout, strides=strides, pads=pads,
                                     mode="bits_limits")

    library = tmp_path / "conv.so"
    _build(_relax_module("BinaryConv2d", compute, [x], [blocked, limits]), WORD_LANES).export_library(
        str(library), fcompile=tvm.support.cc.cross_compiler(WORD_LANES.cross_compiler))
    (got,) = aarch64.run_library(library, [x], threads=2)
    want = binary_conv2d.reference(x, wt, thresholds, in_channels=cin, strides=strides, pads=pads, mode="bits")
    np.testing.assert_array_equal(got, want)
