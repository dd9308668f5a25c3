"""fuse_se_block: where it rewrites, and that the compiled model computes the same numbers.

- the sign rule it relies on, over float32 edge values (numpy): bit(clip(z) + s > 0) == bit(z + s > 0)
  for s in [0, 1];
- se_shift, compiled, against numpy (mean, matmul, relu, matmul, sigmoid), with and without a clip;
- on converted dynamic ResNet-18 and VGG-Small: every SE block becomes one se_shift call, which (and
  BinarizePack) reads the unclipped conv output where (and only where) that output is in memory; the
  artifact compiled with the pass gives the same top-1 and logits within 1e-5 as the one without it
  (the SE block's float sums may round differently, as any float schedule may).
"""
import numpy as np
import onnx
import pytest
import tvm
from tvm import te

import sdbnn_deploy.tvm.schedule_float as schedule_float
from conftest import TEST_INPUT, randomize
from sdbnn_deploy.compile import compile_model
from sdbnn_deploy.convert import convert
from sdbnn_deploy.models import build
from sdbnn_deploy.run import run_artifact
from sdbnn_deploy.targets import get_target
from sdbnn_deploy.tvm import kernels
from sdbnn_deploy.tvm.relax_import import import_onnx
from sdbnn_deploy.tvm.se_block import SE_ATTR, fuse_se_block, se_shift

# arch -> (SE blocks whose input is the clip of a binary conv's output, all SE blocks): ResNet-18: each
# block's conv2 reads hardtanh(conv1) (8 of 16); VGG-Small: conv2 and conv4 (no max-pool before them).
# The clips of those are gone after the rewrite: nothing reads them any more.
REWRITES = {"resnet18": (8, 16), "vgg_small": (2, 5)}


def test_sign_of_clipped_plus_shift_is_sign_of_unclipped_plus_shift():
    tiny = np.float32(1e-45)
    z = np.array([-np.inf, -3e38, -2.0, -1.0000001, -1.0, -0.9999999, -0.5, -tiny, -0.0, 0.0, tiny, 0.5, 0.9999999,
                  1.0, 1.0000001, 2.0, 3e38, np.inf, np.nan], dtype=np.float32)
    s = np.concatenate([np.array([0.0, tiny, 1e-38, 0.5, 0.9999999, 1.0], dtype=np.float32),
                        np.random.default_rng(0).random(200, dtype=np.float32)])
    zz, ss = np.meshgrid(z, s)
    with np.errstate(invalid="ignore"):
        clipped = np.minimum(np.maximum(zz, np.float32(-1)), np.float32(1))
        np.testing.assert_array_equal(clipped + ss > 0, zz + ss > 0)


def _compiled_se_shift(v, w1, w2, clip):
    tensors = [te.placeholder(a.shape, "float32", name) for a, name in ((v, "v"), (w1, "w1"), (w2, "w2"))]
    target = tvm.target.Target(get_target("x86").tvm_target)
    with target:
        func = schedule_float.schedule_float_primfunc(te.create_prim_func(tensors + [se_shift(*tensors, clip)]))
    out = tvm.runtime.empty((v.shape[0], v.shape[1]), "float32", tvm.cpu())
    tvm.compile(func, target=target)(*[tvm.runtime.tensor(a) for a in (v, w1, w2)], out)
    return out.numpy()


@pytest.mark.parametrize("clip", [None, (-1.0, 1.0)])
def test_se_shift_equals_numpy(clip):
    rng = np.random.default_rng(2)
    v = (rng.standard_normal((2, 32, 6, 10)) * 2).astype(np.float32)
    w1 = rng.standard_normal((32, 4)).astype(np.float32)
    w2 = rng.standard_normal((4, 32)).astype(np.float32)
    x = np.clip(v, *clip) if clip else v
    want = 1 / (1 + np.exp(-(np.maximum(x.mean(axis=(2, 3)) @ w1, 0) @ w2)))
    np.testing.assert_allclose(_compiled_se_shift(v, w1, w2, clip), want, rtol=1e-5, atol=1e-6)


def test_se_shift_stays_in_unit_interval():
    """Unclipped BinarizePack is exact only for shifts in [0, 1]: also where the sigmoid saturates."""
    rng = np.random.default_rng(3)
    v = (rng.standard_normal((1, 64, 4, 4)) * 1e6).astype(np.float32)
    w1, w2 = (rng.standard_normal(s).astype(np.float32) * 1e3 for s in ((64, 8), (8, 64)))
    shift = _compiled_se_shift(v, w1, w2, None)
    assert shift.min() >= 0 and shift.max() <= 1 and (shift == 0).any() and (shift == 1).any()


@pytest.fixture(scope="module")
def dynamic_onnx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    paths = {}
    for arch in REWRITES:
        paths[arch] = folder / f"{arch}.onnx"
        convert(randomize(build(arch, "dynamic"), seed=5), output=paths[arch], arch=arch, input_shape=TEST_INPUT[arch],
                probe_batch=2)
    return paths


@pytest.mark.parametrize("arch", sorted(REWRITES))
def test_rewrites_the_clips_of_conv_outputs(dynamic_onnx, arch):
    mod = import_onnx(onnx.load(str(dynamic_onnx[arch])), lanes=8, batch=1, source=arch, conv=kernels)
    with tvm.target.Target("llvm"):
        rewritten = fuse_se_block()(mod)
    before, after = mod["main"].script(), rewritten["main"].script()
    rewrites, se_blocks = REWRITES[arch]
    assert after.count("R.call_tir(se_shift") == se_blocks == before.count("R.mean(")
    assert after.count("R.mean(") == after.count("R.sigmoid(") == 0
    # BinarizePack's rewrite (the clips it removes, below) finds its shift by the attribute, not by a name
    names = {g.name_hint: f.attrs is not None and SE_ATTR in f.attrs for g, f in rewritten.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and g.name_hint.startswith("se_shift")}
    assert names and all(names.values())
    assert after.count("R.call_tir(minimum") == before.count("R.call_tir(minimum") - rewrites


@pytest.mark.parametrize("arch", sorted(REWRITES))
def test_compiled_logits_as_without_the_pass(dynamic_onnx, arch, tmp_path, monkeypatch):
    x = np.random.default_rng(1).standard_normal((2,) + TEST_INPUT[arch]).astype(np.float32) * 3
    with_pass = compile_model(dynamic_onnx[arch], "x86", tmp_path / "with", batch=2)
    monkeypatch.setattr(schedule_float, "fuse_se_block", lambda: tvm.transform.Sequential([]))
    without = compile_model(dynamic_onnx[arch], "x86", tmp_path / "without", batch=2)
    got, want = (next(iter(run_artifact(a.path, x).values())) for a in (with_pass, without))
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-5
