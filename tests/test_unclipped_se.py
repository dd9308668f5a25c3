"""unclipped_se: where it rewrites, and that the compiled model computes exactly the same numbers.

- the sign rule it relies on, over float32 edge values (numpy): bit(clip(z) + s > 0) == bit(z + s > 0)
  for s in [0, 1];
- on converted dynamic ResNet-18 and VGG-Small: the rewritten module reads unclipped conv outputs in
  BinarizePack and clipped_mean where (and only where) the conv output is in memory, and the artifact
  compiled with the pass gives the same logits, bit for bit, as the one compiled without it.
"""
import numpy as np
import onnx
import pytest
import tvm

import sdbnn_deploy.tvm.schedule_float as schedule_float
from conftest import TEST_INPUT, randomize
from sdbnn_deploy.compile import compile_model
from sdbnn_deploy.convert import convert
from sdbnn_deploy.models import build
from sdbnn_deploy.run import run_artifact
from sdbnn_deploy.tvm import kernels
from sdbnn_deploy.tvm.relax_import import import_onnx
from sdbnn_deploy.tvm.unclipped_se import unclipped_se

# arch -> (SE blocks whose input is the clip of a binary conv's output, all SE blocks): ResNet-18: each
# block's conv2 reads hardtanh(conv1) (8 of 16); VGG-Small: conv2 and conv4 (no max-pool before them).
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
        rewritten = unclipped_se()(mod)
    before, after = mod["main"].script(), rewritten["main"].script()
    rewrites, se_blocks = REWRITES[arch]
    assert after.count("R.call_tir(clipped_mean") == rewrites
    assert after.count("R.mean(") == se_blocks - rewrites == before.count("R.mean(") - rewrites
    # the rewritten clips are gone: nothing reads them any more
    assert after.count("R.call_tir(minimum") == before.count("R.call_tir(minimum") - rewrites


@pytest.mark.parametrize("arch", sorted(REWRITES))
def test_compiled_logits_identical_with_and_without(dynamic_onnx, arch, tmp_path, monkeypatch):
    x = np.random.default_rng(1).standard_normal((2,) + TEST_INPUT[arch]).astype(np.float32) * 3
    with_pass = compile_model(dynamic_onnx[arch], "x86", tmp_path / "with", batch=2)
    monkeypatch.setattr(schedule_float, "unclipped_se", lambda: tvm.transform.Sequential([]))
    without = compile_model(dynamic_onnx[arch], "x86", tmp_path / "without", batch=2)
    got, want = (next(iter(run_artifact(a.path, x).values())) for a in (with_pass, without))
    np.testing.assert_array_equal(got, want)
