"""The byte-lane binary conv of the ARM targets (sdbnn_deploy.tvm.kernels_arm, scheduled by schedule_arm):
exact against the numpy reference under qemu, and at most 3.5 instructions per 128 bit-MACs in the hot
loop of the built library (sdbnn_deploy.asm_count).

All conv cases are built into ONE Relax module (one compile, one qemu run, about 30 s on 2 cores).
These tests need aarch64-linux-gnu-gcc, its objdump and qemu-aarch64 (scripts/setup-system.sh installs
them): where they are missing the tests fail with the name of the Debian package.
"""
import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax, te

from conftest import conv_case
from sdbnn_deploy import aarch64, asm_count
from sdbnn_deploy.ops import binary_conv2d
from sdbnn_deploy.targets import get_target
from sdbnn_deploy.tvm import OP_ATTR, apply_schedules, conv_kernels, kernels, kernels_arm, schedule_arm

RPI4 = get_target("rpi4")
MAX_INSTRUCTIONS_PER_128 = 3.5  # Cin <= 128 at 3x3 too, whose tile loop holds the tile's end (3.47-3.49)

# n, cin, h, w, cout, k, stride, pad, mode: odd channel counts, kernels 1/3/5, strides 1/2, padding 0/1/2,
# all three output modes, and each way the reduction is cut into uint8 chunks (kernels_arm.chunking).
CONV_CASES = [
    (1, 3, 7, 6, 5, 3, 1, 1, "int"),  # one partial word in a quad of zeros; chunk "all", columns in pairs
    (1, 64, 5, 5, 12, 3, 1, 1, "affine"),  # an odd output width: flattened pixels, one tree per pair
    (2, 17, 6, 5, 9, 5, 2, 2, "bits"),  # 5x5, stride 2, pad 2
    (1, 80, 5, 7, 70, 3, 2, 1, "affine"),  # two words = one quad; Cout over one output word
    (1, 130, 6, 6, 19, 5, 1, 2, "bits"),  # 5x5 over 2 quads: 50 quads -> chunk "row"
    (1, 130, 5, 4, 8, 1, 2, 0, "int"),  # 1x1, stride 2, no padding
    (1, 512, 5, 6, 12, 3, 1, 1, "affine"),  # 3x3 over 4 quads: 36 quads -> chunk "row", widened 3 times
    (1, 512, 4, 4, 8, 3, 2, 0, "bits"),  # the same without padding, stride 2
    (1, 1400, 3, 3, 6, 3, 1, 1, "int"),  # 11 quads per tap: chunk "quads"
    (1, 3968, 2, 3, 5, 1, 1, 0, "bits"),  # 31 quads, 1x1: chunk "all" at its limit, uaddlv of full bytes
]


def _conv_module(cases, target=RPI4) -> tuple[tvm.IRModule, list, list]:
    """main(x_0, x_1, ...) = (conv_0(x_0), conv_1(x_1), ...) with the target's conv compute and weights;
    also the inputs and the numpy references."""
    conv = conv_kernels(target.schedule, target.params)
    lanes = schedule_arm.conv_lanes(target.params)
    bb = relax.BlockBuilder()
    inputs, wants, prepared = [], [], []
    for seed, (n, cin, h, w, cout, k, stride, pad, mode) in enumerate(cases):
        x, wt, extra = conv_case(seed, n, cin, h, w, cout, k, stride, pad, mode)
        strides, pads = (stride, stride), (pad, pad)
        blocked, correction = conv.prepare_conv_weights(wt, cin, (h, w), pads, strides, lanes)
        inputs.append(x)
        wants.append(binary_conv2d.reference(x, wt, *extra, in_channels=cin, strides=strides, pads=pads,
                                             mode=mode))
        prepared.append((blocked, correction, extra, dict(in_channels=cin, out_channels=cout, strides=strides,
                                                          pads=pads, mode=mode)))
    params = [relax.Var(f"x{i}", relax.TensorType(x.shape, "uint64")) for i, x in enumerate(inputs)]
    with bb.function("main", params):
        with bb.dataflow():
            outs = []
            for p, (blocked, correction, extra, attrs) in zip(params, prepared):
                constants = [relax.const(c) for c in (blocked, correction, *extra)]
                outs.append(bb.emit_te(conv.binary_conv2d, p, *constants, **attrs))
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    mod = bb.get()
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc):
            mod[gvar] = func.with_attr(OP_ATTR, "BinaryConv2d")
    return mod, inputs, wants


def _export(mod: tvm.IRModule, path, target=RPI4):
    executable = tvm.compile(apply_schedules(mod, target.schedule, target.params),
                             tvm.target.Target(target.tvm_target))
    executable.export_library(str(path), fcompile=tvm.support.cc.cross_compiler(aarch64.cross_compiler()))
    return path


def test_arm_targets_use_byte_lanes():
    for name in ("rpi3", "rpi4", "rpi5", "aarch64"):
        spec = get_target(name)
        assert conv_kernels(spec.schedule, spec.params) is kernels_arm, name


def test_chunks_never_let_a_byte_lane_see_more_than_255_bits():
    for kh, kw, quads in [(1, 1, 1), (3, 3, 3), (3, 3, 4), (5, 5, 2), (3, 3, 11), (1, 1, 40), (3, 3, 100)]:
        name, per_group, groups = kernels_arm.chunking(kh, kw, quads)
        per_chunk = {"all": kh * kw * per_group, "row": kw * per_group, "quads": per_group}[name]
        assert per_chunk * 8 <= 255 and per_group * groups >= quads, (kh, kw, quads)
    assert kernels_arm.chunking(3, 3, 4)[0] == "row"  # Cin 512, 3x3: the widening path
    with pytest.raises(ValueError, match="overflows uint16"):
        kernels_arm.chunking(5, 5, 400)


def test_uint16_lanes_never_see_more_than_65535_bits():
    """A "widen" lane adds two byte lanes per quad and tap (uadalp): 3x3 allows up to 455 quads."""
    assert kernels_arm.chunking(3, 3, 455)[0] == "quads"  # 9 * 455 * 16 = 65520
    with pytest.raises(ValueError, match="overflows uint16"):
        kernels_arm.chunking(3, 3, 456)


def test_offsets_are_the_taps_less_the_word_lanes_correction():
    """kernels_arm lays out Cin*kh*kw - kernels' correction (y = offset - 2*count), per border class and
    channel, padded channels included."""
    _, wt, _ = conv_case(0, 1, 80, 5, 7, 70, 3, 2, 1, "int")
    args = (80, (5, 7), (1, 1), (2, 2), 4)
    _, correction = kernels.prepare_conv_weights(wt, *args)
    _, offsets = kernels_arm.prepare_conv_weights(wt, *args)
    assert offsets.dtype == np.int32
    np.testing.assert_array_equal(offsets, 80 * 9 - correction)


def test_bits_limits_takes_no_offsets():
    """The count limits of "bits_limits" are not offsets: the output stage refuses the pair."""
    counts = te.placeholder((1, 4, 4, 1, 4), "uint8", "counts")
    limits = te.placeholder((3, 3, 4), "int32", "limits")
    with pytest.raises(ValueError, match="count limits, not offsets"):
        kernels.conv_output_stage(counts, limits, in_channels=64, out_channels=4, in_hw=(4, 4), kernel=(3, 3),
                                  strides=(1, 1), pads=(1, 1), mode="bits_limits", offsets=True)


@pytest.mark.parametrize("param, value", [("tile_vectors", 2), ("tile_pixels", 1)])
def test_a_smaller_tile_keeps_what_a_tree_sums(param, value):
    """The pixel tree sums a weight block's channels (kernels_arm._pixel_tree) and, with an even output
    width, two columns (_pixel_pair_tree): a shape's tile_vectors below V or tile_pixels 1 would make each
    tile recompute the popcounts of the rest, so the schedule keeps whole blocks and column pairs where a
    tree sums them (Cin 64), and only there (Cin 256: uaddlv per output)."""
    for cin, tree in ((64, True), (256, False)):
        mod, _, _ = _conv_module([(1, cin, 8, 8, 8, 3, 1, 1, "int")])
        (gvar,) = [gv for gv, func in mod.functions.items() if isinstance(func, tvm.tirx.PrimFunc)]
        key = schedule_arm.conv_key(tvm.s_tir.Schedule(mod[gvar]))
        smaller = {**RPI4.params, "shapes": {key: {param: value}}}
        schedules = [apply_schedules(mod, RPI4.schedule, params)[gvar] for params in (RPI4.params, smaller)]
        assert tvm_ffi.structural_equal(*schedules) == tree, cin


def test_lane_sums_exact_when_every_bit_differs(tmp_path, monkeypatch):
    """Inputs all +1 against weights all -1: every byte lane holds its largest sum. 1x1 over 15 quads is
    the largest reduction whose counts come from a tree (a doubled byte lane: 2 * 15 * 8 = 240): on one
    row of 3 kernels_arm._pixel_tree, on 2x3 (flattened pixels, kernels_arm.flat_pixels) _pixel_pair_tree;
    16 quads sums with uaddlv, 3x3 over one quad is the trees of Cin <= 128."""
    import test_neon_bytes
    from sdbnn_deploy.bits import pack_signs

    def opposite_signs(seed, n, cin, h, w, cout, k, stride, pad, mode):
        return pack_signs(np.ones((n, h, w, cin), np.int8)), pack_signs(-np.ones((cout, k, k, cin), np.int8)), []

    monkeypatch.setattr(test_neon_bytes, "conv_case", opposite_signs)
    cases = [(1, 1920, 2, 3, 8, 1, 1, 0, "int"), (1, 1920, 1, 3, 8, 1, 1, 0, "int"), (1, 2048, 2, 3, 8, 1, 1, 0, "int"),
             (1, 128, 4, 4, 8, 3, 1, 1, "int")]
    assert [kernels_arm.chunking(k, k, cin // 128)[0] for _, cin, _, _, _, k, *_ in cases] == ["all"] * 4
    assert kernels_arm.flat_pixels((2, 3)) and not kernels_arm.flat_pixels((1, 3))
    mod, inputs, wants = _conv_module(cases)
    for case, got, want in zip(cases, aarch64.run_library(_export(mod, tmp_path / "convs.so"), inputs), wants):
        np.testing.assert_array_equal(got, want, err_msg=str(case))
    assert wants[0].min() == -1920  # no padding: every output counts every pair as different


@pytest.mark.parametrize("case, outputs, copies", [((1, 512, 5, 6, 12, 3, 1, 1, "affine"), 8, 1),  # "row", 2 x 4
                                                   ((1, 1400, 3, 3, 6, 3, 1, 1, "int"), 8, 3)])  # "quads", 2 x 4
def test_widen_is_one_uadalp_and_one_uaddlv_per_output(tmp_path, case, outputs, copies):
    """Several chunks: each chunk's bytes go into the tile's uint16 lanes with one `uadalp` per output
    (kernels_arm._byte_pair), and each output's count is one `uaddlv`; nothing widens a lane at a time.
    LLVM unrolls the 3 taps of a kernel row of the "quads" chunks (3 x 3 outputs: flattened pixels,
    kernels_arm.flat_pixels): 3 copies of the chunk's code."""
    mod, _, _ = _conv_module([case])
    functions = asm_count.disassemble(_export(mod, tmp_path / "conv.so"))
    (conv,) = [code for code in functions.values() if any(ins.is_byte_cnt for ins in code)]
    mnemonics = [ins.mnemonic for ins in conv]
    assert mnemonics.count("uadalp") == outputs * copies and mnemonics.count("uaddlv") == outputs
    assert not {"uaddw", "uaddw2", "uaddlp", "umov", "ins"} & set(mnemonics)


def test_byte_lane_conv_under_qemu_equals_reference(tmp_path):
    mod, inputs, wants = _conv_module(CONV_CASES)
    library = _export(mod, tmp_path / "convs.so")
    gots = aarch64.run_library(library, inputs, threads=2)
    assert len(gots) == len(wants)
    for case, got, want in zip(CONV_CASES, gots, wants):
        assert got.dtype == want.dtype and got.shape == want.shape, case
        np.testing.assert_array_equal(got, want, err_msg=str(case))


@pytest.mark.parametrize("cin", [256, 512, 64, 128])
def test_rpi4_conv_hot_loop_instructions_per_128_bit_macs(tmp_path, cin):
    mod, _, _ = _conv_module([(1, cin, 8, 8, 32, 3, 1, 1, "int")])
    loops = asm_count.count(_export(mod, tmp_path / "conv.so"))
    for loop in loops:
        print(f"rpi4 conv Cin={cin} 3x3: {loop.function} hot loop {loop.instructions} instructions, "
              f"{loop.byte_cnts} cnt .16b: {loop.per_128_bit_macs:.3f} instructions per 128 bit-MACs")
        assert loop.per_128_bit_macs <= MAX_INSTRUCTIONS_PER_128
        assert loop.mnemonics.get("eor", 0) == loop.byte_cnts  # one eor per cnt .16b
        # widening never per 16 bytes: one uadalp per output and chunk (Cin 512: a kernel row, 3 taps of 4
        # quads), 3 uaddlp in a pixel's tree of 4 outputs (Cin <= 128: 9 taps of one quad)
        assert (loop.mnemonics.get("uadalp", 0) + loop.mnemonics.get("uaddlp", 0)) * 12 <= loop.byte_cnts
        assert not any(m.startswith("uaddw") for m in loop.mnemonics)
        if cin == 512:  # the loop over chunks (kernel rows): 2 x 4 outputs x 3 taps x 4 quads, taps unrolled
            assert loop.byte_cnts == 96


def test_asm_count_reads_loops_from_objdump_text():
    code = {"f": [asm_count.Instruction(a, m, o) for a, m, o in [
        (0x10, "ldp", "q0, q1, [x1]"), (0x14, "eor", "v2.16b, v0.16b, v1.16b"), (0x18, "cnt", "v2.16b, v2.16b"),
        (0x1c, "add", "v3.16b, v3.16b, v2.16b"), (0x20, "subs", "x2, x2, #0x1"), (0x24, "b.ne", "10 <f+0x10>"),
        (0x28, "cnt", "v4.8b, v4.8b"), (0x2c, "b", "10 <f+0x10>")]]}
    (loop,) = asm_count.hot_loops(code)
    assert (loop.start, loop.end, loop.instructions, loop.byte_cnts) == (0x10, 0x24, 6, 1)
    assert loop.per_128_bit_macs == 6.0


def test_resnet20_for_rpi4_under_qemu_equals_onnxruntime(tmp_path):
    """The whole-model path with byte lanes: convert, compile for rpi4, run under qemu, compare."""
    import torch

    from sdbnn_deploy.compile import compile_model
    from sdbnn_deploy.convert import convert
    from sdbnn_deploy.models import build
    from sdbnn_deploy.run import run_artifact
    from sdbnn_deploy.verify_conversion import ort_session

    torch.manual_seed(0)
    conversion = convert(build("resnet20", "static", in_channels=1).eval(), output=tmp_path / "m.onnx",
                         input_shape=(1, 16, 16))
    artifact = compile_model(tmp_path / "m.onnx", "rpi4", tmp_path / "artifact")
    x = np.random.default_rng(0).normal(size=(1, 1, 16, 16)).astype(np.float32)
    (got,) = run_artifact(artifact.path, x).values()
    (want,) = ort_session(conversion.onnx_model, 1).run(None, {"input": x})
    assert np.array_equal(got.argmax(-1), want.argmax(-1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for loop in asm_count.count(artifact.path):  # Cin <= 64: one quad per tap, the tile epilogue is in the loop
        print(f"resnet20 rpi4 {loop.function}: {loop.per_128_bit_macs:.2f} instructions per 128 bit-MACs")
        assert loop.mnemonics.get("eor", 0) == loop.byte_cnts
        assert loop.per_128_bit_macs <= MAX_INSTRUCTIONS_PER_128
        # 3x3 taps, even widths: two pixels' 4 counts from one tree (kernels_arm._pixel_pair_tree): 4 uaddlp,
        # 7 addp, no uaddlv, one uqadd (doubled), then usubw and usubw2 (y = offset - 2*count)
        assert loop.mnemonics.get("uaddlp", 0) * 18 == loop.byte_cnts == loop.mnemonics.get("addp", 0) * 72 / 7
        assert loop.mnemonics.get("uqadd", 0) * 72 == loop.byte_cnts
        assert loop.mnemonics.get("usubw", 0) * 72 == loop.mnemonics.get("usubw2", 0) * 72 == loop.byte_cnts
        assert "uaddlv" not in loop.mnemonics
        assert not any(m.startswith(("uxtl", "uaddw")) or m == "uaddl" for m in loop.mnemonics)


def test_rpi4_conv_output_stage_is_vectorised(tmp_path):
    """The affine output stage (schedule_arm._vectorize_planes) converts, scales and shifts 4 lanes per
    instruction: no scalar int-to-float conversion is left in the conv (it cost 7 instructions per output)."""
    mod, _, _ = _conv_module([(1, 64, 8, 8, 8, 3, 1, 1, "affine")])
    functions = asm_count.disassemble(_export(mod, tmp_path / "conv.so"))
    (conv,) = [code for name, code in functions.items() if any(ins.is_byte_cnt for ins in code)]
    conversions = [ins.operands for ins in conv if ins.mnemonic == "scvtf"]
    assert conversions and all(".4s" in operands for operands in conversions), conversions
