"""BinaryConv2d with output pixels in the vector lanes (kernels_pixels, schedule_x86.schedule_pixel_lanes):
bit-exact against the numpy reference, chosen by the importer only where it applies, tunable."""
import numpy as np
import pytest
import tvm

from sdbnn_deploy import tune
from sdbnn_deploy.ops import binary_conv2d
from sdbnn_deploy.targets import get_target
from sdbnn_deploy.tvm import OP_ATTR, ScheduleParamError, kernels, kernels_pixels, schedule_x86
from sdbnn_deploy.tvm.relax_import import conv_constants, conv_module, import_onnx
from test_tvm_kernels import RUNNABLE, build, conv_case, placeholders, run

# The target the tests that run a pixel-lanes conv with a target's params use: AVX-512 where this host has it.
RUNS_PIXELS = "x86-avx512" if RUNNABLE["x86-avx512"] else "x86-avx2"

# (Cin, Cout, k, stride, pad, H, W, mode, N): Cin of one and two words (and one not a multiple of 64),
# strides 1 and 2 (a stride-2 input of odd width), pads 0 and 1, Cout not a multiple of the tile's 8
# channels, batch 2, 1x1 kernels; on rows (output widths 8, 16: whole vectors) and on the flat plane
# (kernels_pixels.flat_layout: widths 28, 12, 6 on planes of whole vectors, 7x7 padded to 56 pixels).
CASES = [
    (64, 16, 3, 1, 1, 8, 8, "affine", 1),
    (128, 12, 3, 1, 1, 16, 16, "affine", 2),
    (64, 24, 3, 2, 1, 32, 32, "affine", 1),
    (70, 10, 3, 2, 0, 17, 17, "affine", 1),
    (128, 8, 1, 1, 0, 8, 8, "affine", 1),
    (64, 9, 3, 1, 1, 28, 28, "affine", 1),   # flat
    (64, 10, 3, 2, 1, 12, 24, "affine", 2),  # flat, 6x12
    (100, 8, 3, 1, 1, 4, 6, "affine", 1),    # flat, 4x6
    (70, 16, 3, 1, 0, 6, 14, "affine", 1),   # flat, 4x12
    (128, 8, 1, 2, 0, 8, 24, "affine", 1),   # flat, 4x12
    (100, 8, 3, 2, 1, 14, 13, "affine", 2),  # flat, 7x7 padded to 56 pixels
    (64, 64, 3, 1, 1, 8, 8, "bits", 1),
    (128, 80, 3, 2, 1, 16, 16, "bits", 2),   # two output words, the second partly used
    (64, 130, 3, 1, 1, 16, 16, "bits", 1),   # three words: tiles of gcd(130, 64) = 2 channels
    (70, 16, 3, 2, 0, 17, 17, "bits", 1),
    (64, 24, 1, 1, 0, 8, 8, "bits", 1),
    (64, 64, 3, 1, 1, 28, 28, "bits", 1),    # flat
    (128, 64, 3, 2, 1, 12, 24, "bits", 2),   # flat, 6x12
    (64, 64, 3, 1, 1, 7, 7, "bits", 1),      # flat, 7x7 padded to 56 pixels
    (128, 72, 3, 1, 1, 14, 14, "bits", 1),   # flat, 14x14 padded to 200 pixels, two output words
]


def pixel_conv(rng, case, lanes):
    """(arrays, output tensor, placeholders, reference) of one case with kernels_pixels."""
    cin, cout, k, stride, pad, h, w, mode, n = case
    x, wt, extra, attrs = conv_case(rng, *case)
    weights, offsets, compute = conv_constants(kernels_pixels, wt, cin, (h, w), attrs["pads"], attrs["strides"],
                                               lanes, mode, extra[0] if mode == "bits" else None)
    arrays = [x, weights, offsets] + ([] if mode == "bits" else extra)  # bits: the thresholds in the limits
    tensors = placeholders(arrays, ["x", "weights", "offsets", "scale", "bias"])
    output = kernels_pixels.binary_conv2d(*tensors, in_channels=cin, out_channels=cout, strides=attrs["strides"],
                                          pads=attrs["pads"], mode=compute)
    return arrays, output, tensors, binary_conv2d.reference(x, wt, *extra, mode=mode, **attrs)


@pytest.mark.parametrize("target", ["x86-avx512", "x86-avx2"])
@pytest.mark.parametrize("case", CASES, ids=[f"cin{c[0]}-cout{c[1]}-k{c[2]}-s{c[3]}-p{c[4]}-{c[5]}x{c[6]}-n{c[8]}"
                                             for c in CASES])
def test_pixel_lanes_match_the_reference(case, target):
    """Run where this host can (AVX2 always: the x86 hosts we support have it); on a host without AVX-512
    VPOPCNTDQ the AVX-512 build is compiled and its popcounts checked, not run (as test_tvm_kernels)."""
    if not RUNNABLE["x86-avx2"]:
        pytest.fail("this x86-64 host cannot run x86-avx2: the pixel-lanes tests need AVX2")
    lanes = schedule_x86.conv_lanes(get_target(target).params)
    arrays, output, tensors, want = pixel_conv(np.random.default_rng(len(case)), case, lanes)
    lib = build("BinaryConv2d", output, tensors, target)
    if not RUNNABLE[target]:
        assert "vpopcntq" in lib.mod.inspect_source("asm")
        return
    got = run(lib, arrays, padded_like(output, want))
    mode, out_hw = case[7], (want.shape[2:] if case[7] == "affine" else want.shape[1:3])
    assert (got.ndim == 3) == kernels_pixels.flat_layout(out_hw, lanes)
    if got.ndim == 3:
        assert got.shape[2 if mode == "affine" else 1] == kernels_pixels.plane_size(out_hw, lanes)
    got = as_the_importer_keeps(got, want, mode)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def as_the_importer_keeps(got: np.ndarray, want: np.ndarray, mode: str) -> np.ndarray:
    """The compute's output as relax_import._pixel_output hands it on: rows as they are; on the flat
    plane the first OH*OW pixels, reshaped to NCHW ("affine") or NHWC ("bits")."""
    if got.ndim == 4:
        return got
    if mode == "affine":
        return got[:, :, :want.shape[2] * want.shape[3]].reshape(want.shape)
    return got[:, :want.shape[1] * want.shape[2]].reshape(want.shape)


def padded_like(output, want: np.ndarray) -> np.ndarray:
    """An array shaped like the compute's output (on the flat plane: QP pixels) of want's dtype."""
    return np.empty([int(d) for d in output.shape], dtype=want.dtype)


@pytest.mark.parametrize("entry", [{"tile_pixels": 16, "tile_blocks": 4}, {"tile_pixels": 8, "tile_blocks": 2,
                                                                           "tile_scope": "global"},
                                   {"tile_pixels": 24, "tile_blocks": 5}, {"tile_pixels": 12, "tile_blocks": 4}])
def test_pixel_lanes_shape_entries_are_exact(entry):
    """A shape entry's tile gives the same bits (a side that is not whole vectors or does not divide the
    extents: that side of the default); the entry is found under the pixel-lanes key."""
    case = (64, 8, 3, 1, 1, 16, 16, "affine", 1)
    spec = get_target(RUNS_PIXELS)
    arrays, output, tensors, want = pixel_conv(np.random.default_rng(3), case, 8)
    func = tvm.te.create_prim_func(tensors + [output])
    key = schedule_x86.conv_key(tvm.s_tir.Schedule(func))
    assert key == "18x18x1>16x16x8:3x3:affine-pixels"
    params = {**spec.params, "shapes": {key: entry}}
    choice = schedule_x86.pixel_choice(tvm.s_tir.Schedule(func), params)
    lanes = schedule_x86.conv_lanes(spec.params)
    pixels_fit = entry["tile_pixels"] % lanes == 0 and 16 % entry["tile_pixels"] == 0
    assert choice["tile_pixels"] == (entry["tile_pixels"] if pixels_fit else schedule_x86.PIXEL_TILES["affine"][0] * lanes)
    assert choice["tile_blocks"] == (entry["tile_blocks"] if 8 % entry["tile_blocks"] == 0 else 8)
    sch = tvm.s_tir.Schedule(func)
    schedule_x86.schedule_binary_conv2d(sch, params)
    lib = tvm.compile(sch.mod["main"].with_attr("global_symbol", "main"), target=tvm.target.Target(spec.tvm_target))
    np.testing.assert_array_equal(run(lib, arrays, padded_like(output, want)), want)


@pytest.mark.parametrize("stride,mode,tile", [(1, "affine", "affine"), (2, "affine", "affine-strided"),
                                              (1, "bits", "bits"), (2, "bits", "bits")])
def test_pixel_default_tile_by_mode_and_stride(stride, mode, tile):
    sch = tvm.s_tir.Schedule(tune.conv_primfunc(64, 64, 3, stride, 1, 32, mode, 8, pixels=True))
    vectors, channels = schedule_x86.PIXEL_TILES[tile]
    assert schedule_x86.pixel_choice(sch, {}) == {"tile_pixels": vectors * 8, "tile_blocks": channels,
                                                  "tile_scope": "global"}


def test_pixel_keys_tell_strides_and_pads_apart():
    """The key names the padded input and the real output width, like a channel-lane key: a stride-1
    pad-0 and a stride-2 pad-2 5x5 conv of the same input do not share a tuned entry."""
    keys = {schedule_x86.conv_key(tvm.s_tir.Schedule(tune.conv_primfunc(64, 32, 5, s, p, 9, "affine", 8, pixels=True)))
            for s, p in ((1, 0), (2, 2))}
    assert keys == {"9x9x1>5x5x32:5x5:affine-flat", "13x13x1>5x5x32:5x5:affine-flat"}


def test_pixel_lanes_reject_channel_lane_params():
    case = (64, 8, 3, 1, 1, 8, 8, "affine", 1)
    _, output, tensors, _ = pixel_conv(np.random.default_rng(0), case, 8)
    sch = tvm.s_tir.Schedule(tvm.te.create_prim_func(tensors + [output]))
    params = {"shapes": {"10x10x1>8x8x8:3x3:affine-pixels": {"epilogue": "row"}}}
    with pytest.raises(ScheduleParamError, match="unknown parameters \\['epilogue'\\] for a pixel-lanes conv"):
        schedule_x86.schedule_binary_conv2d(sch, params)


@pytest.mark.parametrize("mode,words,out_hw,lanes,pixels,chosen", [
    ("affine", 1, (32, 32), 8, True, True),
    ("affine", 2, (8, 8), 8, True, True),
    ("affine", 3, (32, 32), 8, True, False),  # 3 words: the channel lanes' transposition is small against the popcounts
    ("affine", 1, (28, 28), 8, True, True),   # the flat plane (784 pixels: whole vectors)
    ("affine", 1, (7, 7), 8, True, True),     # the flat plane, 49 pixels padded to 56
    ("bits", 1, (28, 28), 8, True, True),
    ("bits", 1, (14, 14), 8, True, True),
    ("affine", 1, (1, 4), 8, True, False),    # half the padded plane would be padding
    ("affine", 1, (1, 5), 8, True, True),
    ("affine", 1, (4, 4), 8, True, True),     # the flat plane: two rows per vector
    ("affine", 1, (28, 28), 4, True, True),
    ("bits", 2, (16, 16), 8, True, True),
    ("bits", 2, (4, 4), 8, True, True),
    ("bits", 2, (1, 4), 8, True, False),
    ("int", 1, (32, 32), 8, True, False),
    ("affine", 1, (32, 32), 8, False, False),  # the target does not ask for pixel lanes
])
def test_conv_module_rule(mode, words, out_hw, lanes, pixels, chosen):
    assert (conv_module(kernels, mode, words, out_hw, lanes, pixels) is kernels_pixels) == chosen


def test_importer_emits_pixel_lanes_where_the_target_asks():
    """ResNet-18 (CIFAR) on x86-avx512 (pixel_lanes = true): its convs of 64 and 128 input channels are
    pixel-lane PrimFuncs, the others not; with pixel_lanes off none is."""
    from sdbnn_deploy.bench import random_model
    from sdbnn_deploy.convert import convert

    model = convert(random_model("resnet18", "static"), input_shape=[3, 32, 32], probe_batch=1).onnx_model
    assert get_target("x86-avx512").params["pixel_lanes"] is True

    def pixel_funcs(on):
        mod = import_onnx(model, lanes=8, conv=kernels, pixel_lanes=on)
        convs = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None
                 and str(f.attrs.get(OP_ATTR, "")) == "BinaryConv2d"]
        return convs, [f for f in convs if schedule_x86.pixel_lanes(tvm.s_tir.Schedule(f))]

    convs, on = pixel_funcs(True)
    assert on and len(on) < len(convs)
    for func in convs:  # input (H x W x words) > output: pixel lanes exactly where the words are 1 or 2
        key = schedule_x86.conv_key(tvm.s_tir.Schedule(func))
        words = int(key.split(">")[0].split("x")[2])
        assert (func in on) == (words <= kernels_pixels.MAX_WORDS), key
        assert (func in on) == key.endswith(("-pixels", "-flat")), key
    assert pixel_funcs(False)[1] == []


@pytest.mark.parametrize("target", [t for t in ("x86-avx512",) if RUNNABLE[t]])
def test_flat_plane_convs_through_the_importer_equal_onnxruntime(tmp_path, target):
    """A model whose "bits" conv has a 28x28 output (784 pixels: whole vectors) and whose "affine" conv
    has a 7x7 one (49 pixels padded to 56): both on the flat plane, compiled and run end to end, so the
    importer's slice and reshape (relax_import._pixel_output) are checked on data, not only the computes."""
    import onnx

    from onnx_graphs import custom_op_model, onnxruntime_outputs

    from sdbnn_deploy.compile import compile_model
    from sdbnn_deploy.run import run_artifact

    path = tmp_path / "flat.onnx"
    onnx.save(custom_op_model(h=28, w=28), str(path))
    model = onnx.load(str(path))
    mod = import_onnx(model, lanes=8, conv=kernels, pixel_lanes=True)
    keys = sorted(schedule_x86.conv_key(tvm.s_tir.Schedule(f)) for f in mod.functions.values()
                  if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None
                  and str(f.attrs.get(OP_ATTR, "")) == "BinaryConv2d")
    assert sorted(k.split(":")[-1] for k in keys) == ["affine-flat", "bits-flat", "int_nhwc"], keys
    artifact = compile_model(path, target, tmp_path / "out", batch=2)
    x = np.random.default_rng(5).standard_normal((2, 20, 28, 28)).astype(np.float32)
    got, want = run_artifact(artifact.path, x, threads=2), onnxruntime_outputs(model, x)
    for name in ("bits", "counts"):
        np.testing.assert_array_equal(got[name], want[name])
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)


def test_tune_measures_pixel_lane_tiles():
    """compile --tune's search on a pixel-lanes conv: every candidate is a pixel tile and gives the same
    bits as the default (tune_primfunc raises otherwise)."""
    spec = get_target(RUNS_PIXELS)
    func = tune.conv_primfunc(64, 16, 3, 1, 1, 16, "affine", schedule_x86.conv_lanes(spec.params), pixels=True)
    sch = tvm.s_tir.Schedule(func)
    assert schedule_x86.pixel_lanes(sch)
    tried = tune.candidates(sch, tune._global(spec.params))
    assert tried and all(set(c) <= {"tile_pixels", "tile_blocks", "tile_scope"} for c in tried)
    assert {c["tile_scope"] for c in tried} == {"local", "global"}
    result = tune.tune_primfunc(func, spec, tune.Measure(tune.measuring_session(spec), spec, "."), rounds=1)
    assert result.key == "18x18x1>16x16x16:3x3:affine-pixels" and result.params in tried
    # Each candidate is built as what it is (the schedule reads a pixel tile from the shape's entry only).
    base = tune._global(spec.params)
    for trial in tried:
        assert schedule_x86.pixel_choice(sch, tune.trial_params(base, result.key, trial)) == trial
