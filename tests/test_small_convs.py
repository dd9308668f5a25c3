"""schedule_x86.serial_conv: convs of fewer than SERIAL_CONV_WORDS popcounted words (ResNet-20's 8x8
layers) run on one thread, with no parallel loop, and stay exact in every output mode, the output stage
fused or a separate pass; from SERIAL_CONV_WORDS on the rows stay parallel."""
import numpy as np
import pytest
import tvm

from sdbnn_deploy.ops import binary_conv2d
from sdbnn_deploy.targets import get_target
from sdbnn_deploy.tvm import schedule_x86
from test_tvm_kernels import HOST, RUNNABLE, conv_case, run, x86_conv

# (Cin, Cout, k, stride, pad, H, W, mode, N), words = N x OH x OW x Cout (in whole blocks) x k x k x input words
SMALL = [
    (64, 64, 3, 1, 1, 8, 8, "affine", 1),  # ResNet-20's 64->64 8x8: 36864 words
    (32, 64, 3, 2, 1, 16, 16, "affine", 1),  # ResNet-20's 32->64 stride 2: 36864 words
    (130, 48, 3, 1, 1, 5, 7, "bits", 1),  # 48 channels, not whole output words: a separate output pass
    (80, 20, 3, 2, 1, 9, 7, "int", 2),  # batch 2, Cout not a multiple of the lanes
]
# ResNet-20's 32->32 16x16: 73728 words, where the second thread pays (serial_conv's measurements)
LARGE = (32, 32, 3, 1, 1, 16, 16, "affine", 1)


def unscheduled(case, lanes: int):
    """(schedule of the unscheduled conv as the importer emits it, its arrays, reference output)."""
    mode = case[7]
    x, wt, extra, attrs = conv_case(np.random.default_rng(0), *case)
    arrays, tensors, output = x86_conv(x, wt, extra, mode, lanes, **attrs)
    sch = tvm.s_tir.Schedule(tvm.te.create_prim_func(list(tensors) + [output]))
    return sch, arrays, binary_conv2d.reference(x, wt, *extra, mode=mode, **attrs)


def scheduled(case, target=HOST):
    """unscheduled(case), scheduled with the target's shipped params."""
    params = get_target(target).params
    sch, arrays, want = unscheduled(case, schedule_x86.conv_lanes(params))
    schedule_x86.schedule_binary_conv2d(sch, params)
    return sch, arrays, want


def parallel_loops(sch) -> int:
    return sch.mod["main"].script().count("T.parallel(")


def exact(sch, arrays, want, target=HOST):
    lib = tvm.compile(sch.mod["main"], target=tvm.target.Target(get_target(target).tvm_target))
    np.testing.assert_array_equal(run(lib, arrays, want), want)


@pytest.mark.parametrize("target", [HOST, "x86-avx2", "x86-generic"])
@pytest.mark.parametrize("case", SMALL, ids=[f"cin{c[0]}-cout{c[1]}-s{c[3]}-{c[5]}x{c[6]}-{c[7]}" for c in SMALL])
def test_small_convs_are_serial_and_exact(case, target):
    if not RUNNABLE[target]:
        pytest.fail(f"an x86-64 host that cannot run {target}?")
    sch, arrays, want = scheduled(case, target)
    assert parallel_loops(sch) == 0
    exact(sch, arrays, want, target)


def test_a_separate_output_pass_is_serial_too():
    """48 bits channels end inside an output word: the output stage is its own loop nest, also serial."""
    sch, _, _ = scheduled(SMALL[2])
    conv_nest, output_nest = (sch.get(sch.get_loops(sch.get_sblock(name))[0]) for name in ("conv", "output"))
    assert not conv_nest.same_as(output_nest) and parallel_loops(sch) == 0


def test_larger_convs_keep_their_parallel_rows():
    sch, arrays, want = scheduled(LARGE)
    assert "_fused in T.parallel(16)" in sch.mod["main"].script() and parallel_loops(sch) == 1
    exact(sch, arrays, want)


@pytest.mark.parametrize("width, serial", [(31, True), (32, False)])
def test_serial_below_the_threshold(width, serial):
    """A 64->64 1x1 conv on 32 x width pixels: 64 x 32 x width words, 65536 at width 32."""
    sch, _, _ = unscheduled((64, 64, 1, 1, 0, 32, width, "int", 1), 8)
    assert (64 * 32 * width < schedule_x86.SERIAL_CONV_WORDS) == serial
    assert schedule_x86.serial_conv(sch) == serial


def test_a_serial_conv_with_few_odd_rows_is_not_split_by_channels():
    """default_channel_parts splits few odd rows between two threads; a serial conv has one, so 1 part."""
    params = get_target(HOST).params
    odd = (64, 64, 3, 1, 1, 7, 7, "affine", 1)  # 7 rows, 28224 words: serial
    sch, _, _ = unscheduled(odd, schedule_x86.conv_lanes(params))
    assert schedule_x86.serial_conv(sch)
    assert schedule_x86.default_channel_parts(7, 8) == 2  # what the rule gives a parallel conv of 7 rows
    assert schedule_x86.conv_choice(sch, {**params, "shapes": {}})["channel_parts"] == 1
