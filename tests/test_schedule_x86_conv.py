"""schedule_x86's binary conv: the split of the parallel rows by output channels (channel_parts) is exact
in every output mode, with stride 2, odd sizes and Cout not a multiple of 64, keeps the output stage
fused where the parts hold whole output words, and is chosen by default only where rows are few and odd."""
import re

import numpy as np
import pytest
import tvm

from sdbnn_deploy import tune
from sdbnn_deploy.ops import binary_conv2d
from sdbnn_deploy.targets import get_target
from sdbnn_deploy.tvm import STACK_BYTES, kernels, schedule_x86
from test_tvm_kernels import HOST, RUNNABLE, conv_case, placeholders, run, x86_conv

# (Cin, Cout, k, stride, pad, H, W, mode, N)
CASES = [
    (64, 128, 3, 1, 1, 7, 7, "bits", 1),
    (130, 80, 3, 2, 1, 13, 9, "bits", 1),
    (64, 80, 3, 1, 1, 7, 5, "affine", 1),
    (17, 48, 3, 2, 1, 5, 7, "int", 1),
    (80, 128, 1, 1, 0, 3, 3, "int", 3),
]


def scheduled(case, parts: int, seed=0, target=HOST, **choice):
    """(schedule, arrays, reference output) of one conv case for `target` with `channel_parts` set to
    `parts` and the other params in `choice` (default: a 1 x 1 tile)."""
    cin, cout, k, stride, pad, h, w, mode, n = case
    x, wt, extra, attrs = conv_case(np.random.default_rng(seed), *case)
    params = {**get_target(target).params, "shapes": {}, "tile_pixels": 1, "tile_blocks": 1,
              "channel_parts": parts, **choice}
    arrays, tensors, output = x86_conv(x, wt, extra, mode, schedule_x86.conv_lanes(params), **attrs)
    sch = tvm.s_tir.Schedule(tvm.te.create_prim_func(list(tensors) + [output]))
    chosen = schedule_x86.conv_choice(sch, params)
    assert chosen["channel_parts"] == parts and all(chosen[name] == value for name, value in choice.items())
    schedule_x86.schedule_binary_conv2d(sch, params)
    return sch, arrays, binary_conv2d.reference(x, wt, *extra, mode=mode, **attrs)


def parallel_loops(sch) -> int:
    return sch.mod["main"].script().count("T.parallel(")


@pytest.fixture(autouse=True)
def parallel_convs(monkeypatch):
    """Every conv here with its parallel rows, small as they are (schedule_x86.serial_conv would run them
    on one thread; tested in test_small_convs.py)."""
    monkeypatch.setattr(schedule_x86, "SERIAL_CONV_WORDS", 0)


@pytest.mark.parametrize("parts", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[f"cin{c[0]}-cout{c[1]}-s{c[3]}-{c[5]}x{c[6]}-{c[7]}" for c in CASES])
def test_channel_parts_are_exact(case, parts):
    sch, arrays, want = scheduled(case, parts)
    lib = tvm.compile(sch.mod["main"], target=tvm.target.Target(get_target(HOST).tvm_target))
    np.testing.assert_array_equal(run(lib, arrays, want), want)


def test_parts_of_whole_words_keep_the_output_stage_in_the_tile():
    """The conv with its output stage: one parallel loop (a separate output pass would be a second; the
    9x9x1 words of the padded input are copied on one thread)."""
    sch, _, _ = scheduled(CASES[0], 2)
    assert parallel_loops(sch) == 1


def test_channel_parts_are_the_outer_parallel_loop():
    """Two threads share 2 parts x 7 rows in halves: each half must be one part (half the weights)."""
    sch, _, _ = scheduled(CASES[0], 2)
    script = sch.mod["main"].script()
    assert "_fused in T.parallel(14)" in script
    assert "v_y = T.axis.spatial(7, b_0_i_y_fused % 7)" in script
    assert "v_b = T.axis.spatial(16, b_0_i_y_fused // 7 * 8" in script


@pytest.mark.parametrize("hw, pad_parallel", [(7, False), (126, True)])
def test_only_a_large_padded_input_is_copied_in_parallel(hw, pad_parallel):
    """9x9 words stay under SERIAL_PAD_WORDS, 128x128 do not; the result is exact either way."""
    case = (64, 64, 3, 1, 1, hw, hw, "bits", 1)
    assert ((hw + 2) ** 2 > schedule_x86.SERIAL_PAD_WORDS) == pad_parallel
    sch, arrays, want = scheduled(case, 1)
    assert parallel_loops(sch) == 1 + pad_parallel
    lib = tvm.compile(sch.mod["main"], target=tvm.target.Target(get_target(HOST).tvm_target))
    np.testing.assert_array_equal(run(lib, arrays, want), want)


@pytest.mark.parametrize("rows, tiles, parts", [(7, 64, 2), (7, 5, 1), (14, 64, 1), (23, 2, 2), (25, 8, 1), (1, 2, 2)])
def test_default_channel_parts(rows, tiles, parts):
    assert schedule_x86.default_channel_parts(rows, tiles) == parts
    assert schedule_x86.default_channel_parts(rows, tiles, halves_whole_words=False) == 1


# bits outputs of 3, 4 and 8 words per pixel: their word loop is unrolled (schedule_x86.UNROLLED_WORDS).
MANY_WORDS = [
    (128, 256, 3, 1, 1, 6, 6, "bits", 1),
    (64, 192, 3, 2, 1, 7, 5, "bits", 2),
    (256, 512, 3, 1, 1, 4, 4, "bits", 1),
]


@pytest.mark.parametrize("case", MANY_WORDS, ids=[f"cout{c[1]}" for c in MANY_WORDS])
def test_bits_of_many_words_are_exact(case):
    sch, arrays, want = scheduled(case, 1)
    lib = tvm.compile(sch.mod["main"], target=tvm.target.Target(get_target(HOST).tvm_target))
    np.testing.assert_array_equal(run(lib, arrays, want), want)


def test_bits_words_are_not_gathered():
    """Left a loop, LLVM vectorised the words of a pixel with one AVX-512 gather per bit."""
    sch, _, _ = scheduled(MANY_WORDS[0], 1)
    asm = tvm.compile(sch.mod["main"], target=tvm.target.Target(get_target("x86-avx512").tvm_target))
    assert "vpgather" not in asm.mod.inspect_source("asm")


# int/affine rows stored channel-major: odd widths, stride 2, Cout not a multiple of the 8 lanes, batch 2.
CHANNEL_MAJOR = [
    (64, 64, 3, 1, 1, 8, 8, "affine", 1, 4, 4),
    (130, 70, 3, 2, 1, 9, 13, "affine", 2, 7, 1),
    (17, 21, 3, 1, 1, 5, 6, "int", 2, 6, 1),
    (64, 128, 1, 1, 0, 7, 7, "int", 1, 7, 2),
]


@pytest.mark.parametrize("target", [HOST, "x86-avx2", "x86-generic"])
@pytest.mark.parametrize("case", CHANNEL_MAJOR, ids=[f"cin{c[0]}-cout{c[1]}-s{c[3]}-{c[7]}" for c in CHANNEL_MAJOR])
def test_channel_major_rows_are_exact(case, target):
    """On the narrower targets (4 and 2 lanes) the tile's blocks are other numbers of channels."""
    if not RUNNABLE[target]:
        pytest.fail(f"an x86-64 host that cannot run {target}?")
    *conv, tw, tb = case
    sch, arrays, want = scheduled(tuple(conv), 1, target=target, tile_pixels=tw, tile_blocks=tb,
                                  epilogue="row", row_layout="channels")
    write = sch.get(sch.get_sblock("conv")).writes[0]
    assert [str(r.min) for r in write.region[-3:]] == ["v_b", "v_v", "v_xx"], "the rows are not channel-major"
    lib = tvm.compile(sch.mod["main"], target=tvm.target.Target(get_target(target).tvm_target))
    np.testing.assert_array_equal(run(lib, arrays, want), want)


@pytest.mark.parametrize("mode, epilogue", [("bits", "row"), ("int_nhwc", "row"), ("affine", "pixels")])
def test_channel_major_rows_where_they_cannot_apply_are_an_error(mode, epilogue):
    """A shape's entry with row_layout "channels" but another epilogue or a non-NCHW output."""
    sch = tvm.s_tir.Schedule(tune.conv_primfunc(64, 64, 3, 1, 1, 8, "int" if mode == "int_nhwc" else mode, lanes=8))
    entry = {"tile_pixels": 4, "tile_blocks": 2, "epilogue": epilogue, "row_layout": "channels"}
    with pytest.raises(ValueError, match="row_layout 'channels' needs"):
        schedule_x86.conv_choice(sch, {"shapes": {schedule_x86.conv_key(sch): entry}})


def test_unknown_row_layout_is_an_error():
    with pytest.raises(ValueError, match="row_layout"):
        scheduled(CHANNEL_MAJOR[0][:9], 1, row_layout="diagonal")


def test_search_tries_channel_major_rows_only_for_nchw_outputs():
    lanes = schedule_x86.conv_lanes(get_target(HOST).params)
    layouts = {}
    for mode in ("bits", "affine"):
        sch = tvm.s_tir.Schedule(tune.conv_primfunc(64, 24, 3, 1, 1, 4, mode, lanes=lanes))
        layouts[mode] = {c.get("row_layout", "pixels") for c in tune.candidates(sch, get_target(HOST).params)}
    assert layouts == {"bits": {"pixels"}, "affine": {"pixels", "channels"}}


def test_an_unknown_per_shape_parameter_is_an_error():
    sch = tvm.s_tir.Schedule(tune.conv_primfunc(64, 64, 3, 1, 1, 8, "bits", lanes=8))
    key = schedule_x86.conv_key(sch)
    with pytest.raises(ValueError, match="unknown parameters \\['tile_pixel'\\]"):
        schedule_x86.conv_choice(sch, {"shapes": {key: {"tile_pixel": 4}}})


@pytest.mark.parametrize("mode", ["bits", "bits_limits"])
@pytest.mark.parametrize("target", [HOST, "x86-avx2", "x86-generic"])
def test_bits_with_thresholds_beyond_every_output(target, mode):
    """int32's extremes and values just past +-taps (taps = 64 * 9) give the reference's bits, with no
    overflow, in every lane of a 2 x 2 tile: "bits" subtracts the clamped thresholds in the "conv" stage,
    "bits_limits" compares the counts with kernels.fold_thresholds' limits (the importer's x86 form)."""
    case = (64, 70, 3, 1, 1, 6, 6, "bits", 1)
    cin, cout, k, stride, pad, h, w, _, n = case
    x, wt, _, attrs = conv_case(np.random.default_rng(3), *case)
    taps = cin * k * k
    extremes = np.array([np.iinfo(np.int32).min, np.iinfo(np.int32).max, -taps - 2, taps + 2, -taps, taps, 0])
    thresholds = extremes[np.arange(cout) % len(extremes)].astype(np.int32)
    params = {**get_target(target).params, "shapes": {}, "tile_pixels": 2, "tile_blocks": 1}
    lanes = schedule_x86.conv_lanes(params)
    blocked, correction = kernels.prepare_conv_weights(wt, cin, (h, w), attrs["pads"], attrs["strides"], lanes)
    extra = [thresholds]
    if mode == "bits_limits":
        correction, extra = kernels.fold_thresholds(correction, thresholds, taps), []
    arrays = [x, blocked, correction, *extra]
    tensors = placeholders(arrays, ["x", "weights", "correction", "thresholds"])
    output = kernels.binary_conv2d(*tensors, out_channels=cout, mode=mode, **attrs)
    sch = tvm.s_tir.Schedule(tvm.te.create_prim_func(list(tensors) + [output]))
    schedule_x86.schedule_binary_conv2d(sch, params)
    lib = tvm.compile(sch.mod["main"], target=tvm.target.Target(get_target(target).tvm_target))
    want = binary_conv2d.reference(x, wt, thresholds, mode="bits", **attrs)
    np.testing.assert_array_equal(run(lib, arrays, want), want)


def _tile_from_workspace(lib) -> bool:
    """Whether the popcount tile's buffer is a call's result (TVMBackendAllocWorkspace), not a stack array."""
    return re.search(r"%popcount\S* = (tail )?call ptr", lib.mod.inspect_source("ll")) is not None


@pytest.mark.parametrize("case", [CASES[0], CASES[2], MANY_WORDS[1]], ids=["bits", "affine", "bits-s2"])
def test_global_tile_scope_is_exact_and_off_the_workspace(case):
    """tile_scope "global": a 1 x 2 tile (128 bytes) is no workspace allocation, and the results are exact;
    "local" is one."""
    target = tvm.target.Target(get_target(HOST).tvm_target)
    sch, arrays, want = scheduled(case, 1, tile_pixels=1, tile_blocks=2, tile_scope="global")
    lib = tvm.compile(sch.mod["main"], target=target)
    np.testing.assert_array_equal(run(lib, arrays, want), want)
    assert not _tile_from_workspace(lib)
    local, _, _ = scheduled(case, 1, tile_pixels=1, tile_blocks=2)
    assert _tile_from_workspace(tvm.compile(local.mod["main"], target=target))


def test_a_global_tile_of_stack_bytes_comes_from_the_workspace():
    """At STACK_BYTES (1 pixel x all 128 channels of CASES[0] in uint64 = 1024 bytes) TVM takes even a
    "global" tile from the workspace: why tile_scope_candidates offers "global" only below it."""
    blocks = STACK_BYTES // 8 // schedule_x86.conv_lanes(get_target(HOST).params)
    sch, _, _ = scheduled(CASES[0], 1, tile_pixels=1, tile_blocks=blocks, tile_scope="global")
    assert _tile_from_workspace(tvm.compile(sch.mod["main"], target=tvm.target.Target(get_target(HOST).tvm_target)))


def test_tile_scope_candidates():
    assert schedule_x86.tile_scope_candidates(2, 4, 8) == ("local", "global")
    assert schedule_x86.tile_scope_candidates(4, 4, 8) == ("local",)  # 1024 bytes: from the workspace
    with pytest.raises(ValueError, match="tile_scope"):
        scheduled(CASES[0], 1, tile_scope="registers")
