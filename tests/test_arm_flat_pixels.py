"""kernels_arm's flattened pixel axis (kernels_arm.flat_pixels: output widths that tiles of 2 pixels do not
divide, e.g. Bi-Real ResNet-18's 7x7 outputs): exact against the numpy reference under qemu in every
output mode the importer emits on ARM, and 2-pixel tiles in the hot loop (sdbnn_deploy.asm_count).
Needs the aarch64 cross tools and qemu-aarch64, as tests/test_neon_bytes.py."""
import numpy as np
import pytest
import tvm

from sdbnn_deploy import aarch64, asm_count
from sdbnn_deploy.tvm import apply_schedules, kernels_arm
from test_neon_bytes import MAX_INSTRUCTIONS_PER_128, RPI4, _conv_module, _export

# n, cin, h, w, cout, k, stride, pad, mode: 7x7 outputs at stride 1 and 2, Cin 256 (chunk "all") and 512
# (chunk "row"), each mode; an odd width with an even one of rows, a batch of 2, 1x1 and 5x5 kernels, and
# Cin <= 128 (pixel trees).
FLAT_CASES = [
    (1, 256, 14, 14, 12, 3, 2, 1, "affine"),  # Bi-Real's layer4.0 conv1 with fewer output channels
    (1, 256, 14, 14, 8, 3, 2, 1, "bits"),
    (1, 512, 7, 7, 9, 3, 1, 1, "int"),  # layer4's 512->512 convs; Cout not whole weight blocks
    (1, 512, 7, 7, 8, 3, 1, 1, "affine"),
    (1, 512, 7, 7, 70, 3, 1, 1, "bits"),  # Cout over one output word
    (2, 256, 6, 5, 8, 3, 1, 1, "int"),  # 6x5: 30 pixels, whole tiles; a batch
    (1, 300, 9, 9, 8, 5, 2, 2, "affine"),  # 5x5 kernel, stride 2: 5x5 outputs, 3 quads padded to whole ones
    (1, 2048, 7, 7, 8, 1, 1, 0, "bits"),  # 1x1, 16 quads: uaddlv
    (1, 128, 14, 14, 8, 3, 2, 1, "bits"),  # Cin <= 128: a tree over each tile's two pixels (_pixel_pair_tree)
    (1, 64, 7, 7, 12, 3, 1, 1, "affine"),
    (1, 200, 3, 5, 8, 1, 1, 0, "int"),  # 1x1 over 2 quads: a tree
]


def test_flat_pixels_only_where_tiles_of_two_do_not_divide_a_row():
    assert kernels_arm.flat_pixels((7, 7)) and kernels_arm.flat_pixels((2, 3))
    assert not kernels_arm.flat_pixels((8, 8))
    assert not kernels_arm.flat_pixels((1, 7))  # one row: nothing to cross


@pytest.mark.parametrize("cin,hw,byte_lanes", [(512, 7, True), (512, 8, True), (64, 8, True), (64, 7, True),
                                              (128, 8, False)])
def test_tuning_tries_each_tile_the_schedule_makes_once(cin, hw, byte_lanes):
    """The search (tune.arm_candidates) tries the tiles the schedule makes (schedule_arm.register_tile),
    each once: flattened pixels fix FLAT_TILE pixels, trees (Cin <= 128) a whole weight block and pairs
    of columns; word lanes take both sides."""
    from sdbnn_deploy import tune
    from sdbnn_deploy.tvm import conv_kernels, kernels, schedule_arm

    params = {**RPI4.params, "byte_lanes": byte_lanes, "shapes": {}}
    conv = conv_kernels(RPI4.schedule, params)
    assert (conv is kernels_arm) == byte_lanes and (conv is kernels) != byte_lanes
    sch = tvm.s_tir.Schedule(tune.conv_primfunc(cin, 64, 3, 1, 1, hw, "int", schedule_arm.conv_lanes(params),
                                                conv=conv))
    tried = tune.arm_candidates(sch, params)
    key = schedule_arm.conv_key(sch)
    made = [schedule_arm.register_tile(sch, tune.trial_params(params, key, c)) for c in tried]
    assert tried and made == [(c["tile_pixels"], c["tile_vectors"]) for c in tried] and len(set(made)) == len(made)
    assert schedule_arm.flat_tiles(sch) == (byte_lanes and hw % 2 == 1)
    if schedule_arm.flat_tiles(sch):
        assert {c["tile_pixels"] for c in tried} == {kernels_arm.FLAT_TILE}
    if byte_lanes and cin > 128 and hw == 8 or not byte_lanes:
        assert len({c["tile_pixels"] for c in tried}) > 1 and len({c["tile_vectors"] for c in tried}) > 1


def test_flat_pixel_conv_under_qemu_equals_reference(tmp_path):
    mod, inputs, wants = _conv_module(FLAT_CASES)
    scheduled = apply_schedules(mod, RPI4.schedule, RPI4.params)
    planes = [func for func in scheduled.functions.values()
              if isinstance(func, tvm.tirx.PrimFunc) and 'sblock("planes")' in func.script()]
    assert len(planes) == len(FLAT_CASES)  # every case takes the flattened layout
    gots = aarch64.run_library(_export(mod, tmp_path / "convs.so"), inputs, threads=2)
    for case, got, want in zip(FLAT_CASES, gots, wants):
        assert got.dtype == want.dtype and got.shape == want.shape, case
        np.testing.assert_array_equal(got, want, err_msg=str(case))


@pytest.mark.parametrize("case, cnts", [((1, 256, 14, 14, 32, 3, 2, 1, "affine"), 48),  # a kernel row per loop
                                        ((1, 512, 7, 7, 32, 3, 1, 1, "affine"), 96)])  # one "row" chunk
def test_rpi4_flat_pixel_hot_loop(tmp_path, case, cnts):
    """2 pixels x 4 channels per tile: a kernel row's taps in one loop iteration (3.97 and 3.75 instructions
    per 128 bit-MACs with the 1-pixel tiles of rows of 7)."""
    mod, _, _ = _conv_module([case])
    (loop,) = asm_count.count(_export(mod, tmp_path / "conv.so"))
    print(f"rpi4 {case}: {loop.instructions} instructions per {loop.byte_cnts} cnt .16b = "
          f"{loop.per_128_bit_macs:.3f}")
    assert loop.byte_cnts == cnts and loop.per_128_bit_macs <= MAX_INSTRUCTIONS_PER_128
    assert loop.mnemonics.get("eor", 0) == loop.byte_cnts


def test_resnet18_with_7x7_stage_for_rpi4_under_qemu_equals_onnxruntime(tmp_path, monkeypatch):
    """The importer's path: ResNet-18 (CIFAR) on 28x28 inputs has 7x7 outputs in its third stage (a
    128->256 stride-2 conv with pixel trees, 256->256 convs with uaddlv), all on flattened pixels."""
    import torch

    from sdbnn_deploy.compile import compile_model
    from sdbnn_deploy.convert import convert
    from sdbnn_deploy.models import build
    from sdbnn_deploy.run import run_artifact
    from sdbnn_deploy.verify_conversion import ort_session

    flattened = []
    tap_planes = kernels_arm._tap_planes
    monkeypatch.setattr(kernels_arm, "_tap_planes", lambda xp, out_hw, *rest: flattened.append(out_hw) or
                        tap_planes(xp, out_hw, *rest))
    torch.manual_seed(0)
    conversion = convert(build("resnet18", "static").eval(), output=tmp_path / "m.onnx", input_shape=(3, 28, 28))
    artifact = compile_model(tmp_path / "m.onnx", "rpi4", tmp_path / "artifact")
    x = np.random.default_rng(0).normal(size=(1, 3, 28, 28)).astype(np.float32)
    (got,) = run_artifact(artifact.path, x).values()
    (want,) = ort_session(conversion.onnx_model, 1).run(None, {"input": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert flattened and set(flattened) == {(7, 7)}
