"""BinarizePack's x86 schedule (chunks of fused pixels, words in registers) against the numpy reference.

Shapes are picked so that every part of the schedule is reached: several chunks per plane, chunks made of
several vectors, vectors narrower than a register (odd plane sizes), a last word with padding bits, batch
2 with a per-sample shift. Every x86 target this host runs is run; the others are compiled only.
"""
import numpy as np
import pytest

from sdbnn_deploy.ops import binarize_pack
from sdbnn_deploy.tvm import kernels
from test_tvm_kernels import RUNNABLE, build, placeholders, run

# (C, H, W, per_sample): 256 and 1024 pixels (2 and 8 chunks on AVX-512), 240 (chunk 120 of 15-wide
# vectors), 9x20 (180 pixels: chunks must end at a row's end, 60 not 90), 7x7 (one chunk of 49, 7-wide
# vectors), 4x4; C a multiple of 64 and not.
SHAPES = [(128, 16, 16, True), (64, 32, 32, False), (130, 12, 20, True), (64, 9, 20, False), (70, 7, 7, False),
          (512, 4, 4, True)]


def _inputs(channels: int, h: int, w: int, per_sample: bool):
    """Random values with the edge cases on every row: x + shift == 0 exactly (-1), -0.0 + 0.0, NaN, +-inf."""
    rng = np.random.default_rng(channels * h + w)
    n = 2
    x = rng.standard_normal((n, channels, h, w)).astype(np.float32)
    shift = rng.standard_normal((n, channels) if per_sample else (channels,)).astype(np.float32)
    x[0, :, 0, 0] = -(shift[0] if per_sample else shift)
    x[1, :, -1, -1] = -0.0
    (shift[1] if per_sample else shift)[::9] = 0.0
    x[0, ::5, -1, 0] = np.nan
    x[1, ::3, 0, -1] = np.inf
    x[1, 1::3, 0, -1] = -np.inf
    return x, shift


@pytest.mark.parametrize("target", sorted(RUNNABLE))
@pytest.mark.parametrize("channels,h,w,per_sample", SHAPES)
def test_binarize_pack_matches_reference(target, channels, h, w, per_sample):
    x, shift = _inputs(channels, h, w, per_sample)
    tensors = placeholders([x, shift], ["x", "shift"])
    lib = build("BinarizePack", kernels.binarize_pack(*tensors), tensors, target)
    if not RUNNABLE[target]:
        return  # compiled (the schedule applies); this CPU cannot run it
    want = binarize_pack.reference(x, shift)
    np.testing.assert_array_equal(run(lib, [x, shift], want), want)


@pytest.mark.parametrize("target", sorted(t for t, runnable in RUNNABLE.items() if runnable))
def test_binarize_pack_compares_like_the_sum_at_float_edges(target):
    """The kernel tests X > -shift for X + shift > 0: the same bit for values one or two ulps either side
    of -shift, subnormals, sums that overflow, signed zeros, infinities and NaN (against the reference's
    X + shift > 0 in numpy)."""
    rng = np.random.default_rng(11)
    channels, h, w = 64, 8, 16
    shift = rng.standard_normal((2, channels)).astype(np.float32)
    shift[:, :8] = [0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38, np.inf, np.nan]
    x = np.broadcast_to(-shift[:, :, None, None], (2, channels, h, w)).astype(np.float32)
    steps = rng.integers(-2, 3, size=x.shape)  # ulps away from -shift
    with np.errstate(over="ignore"):  # the next float after 3e38 is inf
        for _ in range(2):
            x = np.where(steps > 0, np.nextafter(x, np.float32(np.inf)), x)
            x = np.where(steps < 0, np.nextafter(x, np.float32(-np.inf)), x).astype(np.float32)
            steps = steps - np.sign(steps)
    x[0, :, 0, :8] = [0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38, np.inf, -np.inf]
    x[1, :, 1, :2] = np.nan
    tensors = placeholders([x, shift], ["x", "shift"])
    lib = build("BinarizePack", kernels.binarize_pack(*tensors), tensors, target)
    with np.errstate(over="ignore", invalid="ignore"):
        want = binarize_pack.reference(x, shift)
    np.testing.assert_array_equal(run(lib, [x, shift], want), want)
