"""The schedule-parameter search (sdbnn_deploy.tune) on a tiny shape: it runs, its winner is a valid
parameter set that compiles and is exact, the target description is rewritten atomically, and
`compile --tune` on this host stores the winners and compiles an exact artifact with them.
No timing is asserted (machines are noisy)."""
import numpy as np
import onnx
import pytest
import tvm

from onnx_graphs import custom_op_model, onnxruntime_outputs
from sdbnn_deploy import tune
from sdbnn_deploy.bits import pack_signs
from sdbnn_deploy.compile import compile_model
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.ops import binary_conv2d
from sdbnn_deploy.run import run_artifact
from sdbnn_deploy.targets import get_target, host_target_name
from sdbnn_deploy.tvm import kernels_pixels, pixel_lanes, schedule_x86
from test_tvm_kernels import x86_conv

HOST = host_target_name()
TINY = (192, 24, 3, 1, 1, 4, "bits")  # Cin, Cout, kernel, stride, pad, H=W, mode (3 words: channel lanes everywhere)


def _exact_with(params: dict, target: str, shape, seed=0):
    """Build the conv of `shape` with `params` and compare it with the numpy reference."""
    cin, cout, k, s, p, hw, mode = shape
    rng = np.random.default_rng(seed)
    x = pack_signs(rng.choice(np.array([-1, 1], np.int8), size=(1, hw, hw, cin)))
    w = pack_signs(rng.choice(np.array([-1, 1], np.int8), size=(cout, k, k, cin)))
    thresholds = rng.integers(-40, 40, cout).astype(np.int32)
    attrs = dict(in_channels=cin, strides=(s, s), pads=(p, p))
    arrays, tensors, out = x86_conv(x, w, [thresholds], mode, schedule_x86.conv_lanes(params), **attrs)
    sch = tvm.s_tir.Schedule(tvm.te.create_prim_func(tensors + [out]))
    schedule_x86.schedule_binary_conv2d(sch, params)
    lib = tvm.compile(sch.mod["main"], target=tvm.target.Target(get_target(target).tvm_target))
    want = binary_conv2d.reference(x, w, thresholds, mode=mode, **attrs)
    got = tvm.runtime.empty(want.shape, str(want.dtype), tvm.cpu())
    lib(*[tvm.runtime.tensor(a) for a in arrays], got)
    np.testing.assert_array_equal(got.numpy(), want)


def test_search_on_a_tiny_shape_gives_a_valid_exact_winner():
    (result,) = tune.tune_shapes(HOST, [TINY], rounds=1)
    spec = get_target(HOST)
    lanes = schedule_x86.conv_lanes(spec.params)
    blocks, width = -(-TINY[1] // lanes), TINY[5]
    assert result.key == f"6x6x3>4x4x{blocks}:3x3:bits"
    assert result.candidates >= 2 and result.seconds > 0 and result.default_seconds > 0
    tw, tb = result.params["tile_pixels"], result.params["tile_blocks"]
    assert width % tw == 0 and blocks % tb == 0 and tw * tb <= spec.params["accumulators"]
    assert result.params["epilogue"] in schedule_x86.EPILOGUES
    # The winner, stored as a per-shape entry, reaches the schedule and is exact.
    params = {**spec.params, "shapes": tune.shapes_table([result])}
    _exact_with(params, HOST, TINY)
    _exact_with(params, HOST, TINY, seed=1)


def test_every_candidate_is_exact_including_cout_not_a_multiple_of_64():
    spec = get_target(HOST)
    shape = (70, 72, 3, 2, 1, 9, "bits")
    sch = tvm.s_tir.Schedule(tune.conv_primfunc(*shape, lanes=schedule_x86.conv_lanes(spec.params)))
    for candidate in tune.candidates(sch, spec.params):
        key = schedule_x86.conv_key(sch)
        _exact_with({**spec.params, "shapes": {key: candidate}}, HOST, shape)


def test_write_params_is_atomic_and_keeps_the_rest(targets_copy):
    path = targets_copy / "x86-avx2.toml"
    before = get_target("x86-avx2")
    header = path.read_text().partition("[params]")[0]
    table = {"6x6x1>4x4x6:3x3:bits": {"tile_pixels": 2, "tile_blocks": 3, "epilogue": "row"}}
    tune.write_params("x86-avx2", table)
    after = get_target("x86-avx2")
    assert after.params["shapes"] == table
    assert {k: v for k, v in after.params.items() if k != "shapes"} == \
        {k: v for k, v in before.params.items() if k != "shapes"}
    assert after.tvm_target == before.tvm_target and path.read_text().startswith(header)
    # A second write replaces the table and keeps the hand-written [params] part (comments included).
    params_part = path.read_text().partition(tune.SHAPES_COMMENT)[0]
    second = {"4x4x1>2x2x6:3x3:int": {"tile_pixels": 1, "tile_blocks": 6, "epilogue": "row"}}
    tune.write_params("x86-avx2", second)
    assert get_target("x86-avx2").params["shapes"] == second
    assert path.read_text().partition(tune.SHAPES_COMMENT)[0] == params_part
    # A value that cannot be written leaves the file as it was.
    text = path.read_text()
    with pytest.raises(TypeError):
        tune.write_params("x86-avx2", {"k": {"tile_pixels": 1.5}})
    assert path.read_text() == text
    assert not any(p.name.startswith(".") for p in targets_copy.iterdir())


def test_write_params_into_a_read_only_install_goes_to_the_user_folder(targets_copy, tmp_path, monkeypatch):
    """An installed package's targets/ cannot be written: the tuned shapes that differ from the shipped
    ones go to the user's file, merged over the shipped description from then on; the shipped file stays
    as it was and still gives everything else (an upgraded shipped file is not shadowed)."""
    from sdbnn_deploy.targets import USER_TARGETS_ENV, target_names

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(USER_TARGETS_ENV, "config/targets")  # relative: against the current folder
    shipped_path = targets_copy / "x86-avx2.toml"
    shipped = shipped_path.read_text()
    before = get_target("x86-avx2").params
    monkeypatch.setattr(tune, "_writable", lambda folder: folder != targets_copy)  # root writes anywhere
    (key, old), *_ = before["shapes"].items()
    new = {"6x6x1>4x4x6:3x3:bits": {"tile_pixels": 2, "tile_blocks": 3, "epilogue": "row"}}
    written = tune.write_params("x86-avx2", {key: old, **new})
    assert written == str(tmp_path / "config" / "targets" / "x86-avx2.toml")
    assert shipped_path.read_text() == shipped
    assert key not in (tmp_path / "config" / "targets" / "x86-avx2.toml").read_text()  # unchanged: not copied
    after = get_target("x86-avx2").params
    assert after["shapes"] == {**before["shapes"], **new} and target_names().count("x86-avx2") == 1
    assert {k: v for k, v in after.items() if k != "shapes"} == {k: v for k, v in before.items() if k != "shapes"}
    # A later shipped change of another parameter is seen (only the shapes are the user's).
    shipped_path.write_text(shipped.replace("[params]\n", "[params]\ntile_pixels = 3\n", 1))
    assert get_target("x86-avx2").params["tile_pixels"] == 3
    # Tuned again where targets/ can be written: the shipped file takes it, the user's stale entry goes.
    monkeypatch.setattr(tune, "_writable", lambda folder: True)
    newer = {"6x6x1>4x4x6:3x3:bits": {"tile_pixels": 1, "tile_blocks": 6, "epilogue": "pixels"}}
    assert tune.write_params("x86-avx2", newer) == str(shipped_path)
    assert get_target("x86-avx2").params["shapes"] == newer
    assert not (tmp_path / "config" / "targets" / "x86-avx2.toml").exists()


def test_a_user_folder_that_cannot_be_made_is_one_error(targets_copy, tmp_path, monkeypatch):
    from sdbnn_deploy.targets import USER_TARGETS_ENV

    (tmp_path / "file").write_text("")
    monkeypatch.setenv(USER_TARGETS_ENV, str(tmp_path / "file" / "targets"))
    monkeypatch.setattr(tune, "_writable", lambda folder: False)
    with pytest.raises(UserError, match="cannot write the tuned parameters"):
        tune.write_params("x86-avx2", {"k": {"tile_pixels": 1}})


def test_a_user_shapes_file_with_other_keys_is_an_error(monkeypatch, tmp_path):
    from sdbnn_deploy.targets import USER_TARGETS_ENV

    monkeypatch.setenv(USER_TARGETS_ENV, str(tmp_path))
    (tmp_path / "x86-avx2.toml").write_text('[llvm]\nmcpu = "x"\n')
    with pytest.raises(UserError, match="only"):
        get_target("x86-avx2")


@pytest.mark.parametrize("target", sorted(tune.REQUIRED_FLAGS))
def test_shipped_shape_keys_are_keys_the_importer_makes(target):
    """x86 compiles an "int" conv as "int_nhwc" (relax_import.compute_mode), and with the target's
    pixel_lanes the convs that kernels_pixels.applies to as "...-pixels": a shipped channel-lane key of
    such a shape would never match, and the search must tune what the importer emits."""
    spec = get_target(target)
    modes = {key.rsplit(":", 1)[1] for key in spec.params.get("shapes", {})}
    assert modes <= {"bits", "affine", "int_nhwc", "bits-pixels", "affine-pixels", "bits-flat", "affine-flat"}, modes
    lanes = schedule_x86.conv_lanes(spec.params)
    for key in spec.params.get("shapes", {}):
        (_, _, words), (height, width, _) = (map(int, side.split("x")) for side in key.split(":")[0].split(">"))
        mode, out_hw = key.rsplit(":", 1)[1], (height, width)
        if mode in ("bits", "affine"):  # a channel-lane key: not a shape that gets pixel lanes
            assert not (pixel_lanes(spec.params) and kernels_pixels.applies(mode, words, out_hw, lanes)), key
        elif mode.endswith(("-pixels", "-flat")):  # a shape that gets them, in that layout
            layout = mode.split("-")[1]
            assert pixel_lanes(spec.params) and kernels_pixels.applies(mode.split("-")[0], words, out_hw, lanes), key
            assert kernels_pixels.flat_layout(out_hw, lanes) == (layout == "flat"), key
    sch = tvm.s_tir.Schedule(tune.conv_primfunc(64, 64, 3, 1, 1, 8, "int", lanes=8))
    assert schedule_x86.conv_key(sch).endswith(":int_nhwc")
    assert all("row_layout" not in c for c in tune.candidates(sch, get_target(target).params))


def test_writable_is_tried(tmp_path):
    assert tune._writable(tmp_path) and not tune._writable(tmp_path / "missing")


def test_only_x86_targets_this_cpu_runs_can_be_tuned():
    with pytest.raises(UserError, match="only the x86 targets"):
        tune.runnable("rpi4")
    assert tune.runnable("x86-generic")


def test_compile_tune_on_this_host_stores_the_winners_and_stays_exact(targets_copy, tmp_path, monkeypatch):
    monkeypatch.setitem(tune.SEARCH_SPACES, "x86", lambda sch, params: tune.candidates(sch, params)[:2])
    model = custom_op_model()
    onnx.save(model, str(tmp_path / "tiny.onnx"))
    artifact = compile_model(tmp_path / "tiny.onnx", "x86-generic", tmp_path / "out", tune=True)
    stored = get_target("x86-generic").params["shapes"]
    assert artifact.tuning.where.startswith("this host") and not artifact.tuning.emulated
    assert {r.key: r.params for r in artifact.tuning.results}.items() <= stored.items()
    assert len(artifact.tuning.results) == 3 and artifact.manifest["target"]["params"]["shapes"] == stored
    x = np.random.default_rng(1).standard_normal((1, 20, 9, 7)).astype(np.float32)
    got, want = run_artifact(artifact.path, x, threads=1), onnxruntime_outputs(model, x)
    np.testing.assert_array_equal(got["bits"], want["bits"])
    np.testing.assert_array_equal(got["counts"], want["counts"])


@pytest.mark.parametrize("shape", [(64, 64, 3, 1, 1, 8, "bits"), (128, 96, 3, 2, 1, 8, "bits")])
def test_the_searchs_random_arguments_give_bits_outputs_that_tell_candidates_apart(shape):
    """Each candidate is checked against the default schedule on tune.random_arguments: for a bits output
    those must set and clear bits, differently per channel, or a candidate that misplaces a bit would pass."""
    spec = get_target(HOST)
    func = tune.conv_primfunc(*shape, lanes=schedule_x86.conv_lanes(spec.params))
    inputs, (out_shape, dtype) = tune.random_arguments(func)
    got = tvm.runtime.empty(out_shape, dtype, tvm.cpu())
    tune._build(func, tune._global(spec.params), spec)(*[tvm.runtime.tensor(a) for a in inputs], got)
    bits = np.unpackbits(got.numpy().view(np.uint8), bitorder="little").reshape(-1, 64 * out_shape[-1])
    per_channel = bits.mean(axis=0)[:shape[1]]
    assert 0.2 < bits.mean() < 0.8
    assert np.count_nonzero((per_channel > 0) & (per_channel < 1)) > 0  # some channels vary over pixels
    assert len(np.unique(per_channel)) > 2  # channels differ from each other
