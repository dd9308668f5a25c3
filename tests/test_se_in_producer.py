"""merge_se_into_producer, sum_in_producer and merge_binarize_into_se (se_block.py): the SE block in the
kernel that writes its input, and the BinarizePack that reads its shift in the same kernel.

- a TE producer (clip(a + b), as ResNet's residual add and hardtanh) and se_shift of its output in one
  PrimFunc, scheduled by schedule_float: v bit-identical to numpy, the shift within 1e-5 of numpy, and,
  where the plane's rows are whole vectors and se_shift alone sums in lanes too, bit-identical to
  se_shift compiled alone (the same additions in the same order); the sum is placed in the producer's loops where a row holds >= 4 lanes, and left to
  the generic schedule where it does not;
- on a converted dynamic ResNet-20: every se_shift whose input is a residual add's hardtanh joins that
  kernel (17 of 18; the stem's is a float conv's output), and the compiled logits are those of the
  artifact compiled without the merge, within 1e-6 relative;
- on the same model: every BinarizePack joins the kernel that computes its shift (18 calls, none left
  alone; no tuple of the merged kernels' outputs is built at run time), and the logits are exactly those of the artifact compiled without that merge (the same
  scheduled code runs, in one call).
"""
import numpy as np
import onnx
import pytest
import tvm
from tvm import s_tir, te, tirx
from tvm.s_tir.dlight import normalize_prim_func

import sdbnn_deploy.tvm.schedule_float as schedule_float
from conftest import TEST_INPUT, randomize
from sdbnn_deploy.compile import compile_model
from sdbnn_deploy.convert import convert
from sdbnn_deploy.models import build
from sdbnn_deploy.run import run_artifact
from sdbnn_deploy.targets import get_target
from sdbnn_deploy.tvm.se_block import se_shift, sum_in_producer
from test_se_block import _compiled_se_shift

TARGET = tvm.target.Target(get_target("x86").tvm_target)
LANES = 16  # x86 (AVX-512) float lanes


def _producer_and_se(shape, hidden):
    """PrimFunc (a, b, w1, w2) -> (v = clip(a + b, -1, 1), se_shift(v, w1, w2))."""
    a, b = te.placeholder(shape, "float32", "a"), te.placeholder(shape, "float32", "b")
    w1, w2 = te.placeholder((shape[1], hidden), "float32", "w1"), te.placeholder((hidden, shape[1]), "float32", "w2")
    one = tirx.const(1.0, "float32")
    v = te.compute(shape, lambda *i: tirx.min(tirx.max(a(*i) + b(*i), -one), one), name="v")
    return te.create_prim_func([a, b, w1, w2, v, se_shift(v, w1, w2)])


def _numpy_shift(v, w1, w2):
    hidden = np.maximum(v.astype(np.float64).mean(axis=(2, 3)) @ w1, 0)
    return 1 / (1 + np.exp(-(hidden @ w2)))


@pytest.mark.parametrize("shape, hidden", [((1, 16, 32, 32), 1), ((2, 64, 8, 8), 4), ((1, 8, 6, 6), 2),
                                           ((1, 4, 3, 3), 2), ((1, 16, 2, 16), 2), ((1, 20, 4, 16), 2)])
def test_producer_with_se_sum_equals_numpy_and_se_shift_alone(shape, hidden):
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    w1 = rng.standard_normal((shape[1], hidden)).astype(np.float32)
    w2 = rng.standard_normal((hidden, shape[1])).astype(np.float32)
    with TARGET:
        func = schedule_float.schedule_float_primfunc(_producer_and_se(shape, hidden))
    v, shift = tvm.runtime.empty(shape, "float32", tvm.cpu()), tvm.runtime.empty(shape[:2], "float32", tvm.cpu())
    tvm.compile(func, target=TARGET)(*[tvm.runtime.tensor(x) for x in (a, b, w1, w2)], v, shift)
    want_v = np.minimum(np.maximum(a + b, np.float32(-1)), np.float32(1))
    np.testing.assert_array_equal(v.numpy(), want_v)
    np.testing.assert_allclose(shift.numpy(), _numpy_shift(want_v, w1, w2), rtol=1e-5, atol=1e-6)
    _, channels, h, w = shape  # where both sum in lanes in the same order (sum_in_producer's docstring)
    if w % LANES == 0 and channels % schedule_float.ROWS_SIDE_BY_SIDE == 0 and h * w >= 4 * LANES:
        np.testing.assert_array_equal(shift.numpy(), _compiled_se_shift(want_v, w1, w2, None))


@pytest.mark.parametrize("shape, placed", [((1, 16, 32, 32), True), ((2, 64, 8, 8), True), ((1, 8, 6, 6), True),
                                           ((1, 4, 3, 3), False)])
def test_sum_placed_in_producer_where_rows_hold_four_lanes(shape, placed):
    sch = s_tir.Schedule(_producer_and_se(shape, 2))
    schedule_float._inline_elementwise(sch, normalize_prim_func(sch))
    done = sum_in_producer(sch, LANES, schedule_float.MIN_PARALLEL_WORK)
    assert done == ({"v", "se_sum"} if placed else set())
    if placed:  # the partial sums are added under the producer's loops: they share its outer loop
        outer = [sch.get(sch.get_loops(sch.get_sblock(name))[0]) for name in ("v", "se_sum", "se_sum_rf_update")]
        assert outer[0].same_as(outer[1]) and outer[0].same_as(outer[2])
        # the partial sums in a buffer of the function: a local one under the parallel loop would be taken
        # from the workspace at every channel
        script = sch.mod["main"].script()
        assert "se_sum_rf = T.sblock_alloc_buffer" in script and 'scope="local"' not in script


@pytest.fixture(scope="module")
def resnet20_dynamic(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "resnet20.onnx"
    convert(randomize(build("resnet20", "dynamic"), seed=7), output=path, arch="resnet20",
            input_shape=TEST_INPUT["resnet20"], probe_batch=2)
    return path


def test_resnet20_se_blocks_join_their_residual_kernels(resnet20_dynamic, tmp_path, monkeypatch):
    x = np.random.default_rng(2).standard_normal((2,) + TEST_INPUT["resnet20"]).astype(np.float32) * 3
    merged = compile_model(resnet20_dynamic, "x86", tmp_path / "merged", batch=2)
    monkeypatch.setattr(schedule_float, "_with_se_merge", lambda passes: passes)
    apart = compile_model(resnet20_dynamic, "x86", tmp_path / "apart", batch=2)
    text = [tvm.relax.VMExecutable(tvm.runtime.load_module(str(a.library))).as_text() for a in (merged, apart)]
    calls = [[line for line in t.splitlines() if "se_shift" in line and "call" in line] for t in text]
    assert len(calls[1]) == 18 and sum("se_shift" in c.split()[1] and "_se_shift" not in c for c in calls[0]) == 1
    assert sum("_se_shift" in c for c in calls[0]) == 17
    got, want = (next(iter(run_artifact(a.path, x).values())) for a in (merged, apart))
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-6


def _kernel_calls(artifact) -> list:
    """The kernel names the artifact's VM calls, in order (VM builtins left out)."""
    text = tvm.relax.VMExecutable(tvm.runtime.load_module(str(artifact.library))).as_text()
    return [line.split()[1] for line in text.splitlines()
            if line.strip().startswith("call") and not line.split()[1].startswith("vm.")]


def test_resnet20_binarize_packs_join_their_se_kernels(resnet20_dynamic, tmp_path, monkeypatch):
    x = np.random.default_rng(4).standard_normal((2,) + TEST_INPUT["resnet20"]).astype(np.float32) * 3
    merged = compile_model(resnet20_dynamic, "x86", tmp_path / "merged", batch=2)
    monkeypatch.setattr(schedule_float, "merge_binarize_into_se", lambda: tvm.transform.Sequential([]))
    apart = compile_model(resnet20_dynamic, "x86", tmp_path / "apart", batch=2)
    calls, calls_apart = _kernel_calls(merged), _kernel_calls(apart)
    assert sum(c.startswith("binarize_pack") for c in calls_apart) == 18
    assert not any(c.startswith("binarize_pack") for c in calls)
    assert sum("se_shift" in c and "binarize_pack" in c for c in calls) == 18
    assert len(calls) == len(calls_apart) - 18
    # the merged kernels' outputs (v, bits) are read as tensors: the VM builds no tuple of them per call
    text = tvm.relax.VMExecutable(tvm.runtime.load_module(str(merged.library))).as_text()
    assert "vm.builtin.make_tuple" not in text
    got, want = (next(iter(run_artifact(a.path, x).values())) for a in (merged, apart))
    np.testing.assert_array_equal(got, want)
