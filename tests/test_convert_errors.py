"""convert on bad input: one clear line naming the fault, exit status 2, no output file left behind."""
import pickle

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from conftest import randomize
from sdbnn_deploy.cli import main
from sdbnn_deploy.convert import convert
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.models import build


def _convert(tmp_path, src, *extra):
    out = tmp_path / "out.onnx"
    res = CliRunner().invoke(main, ["convert", str(src), "-o", str(out), "--probe-batch", "2", *extra])
    return res, out


def _fails(res, out, *words):
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: ")
    for w in words:
        assert w in line, line
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".out.onnx")] == []


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"this is not a checkpoint at all" * 10)
    _fails(*_convert(tmp_path, bad), "junk.pt")


def test_truncated_checkpoint(tmp_path):
    good = tmp_path / "m.pt"
    torch.save(build("resnet20").state_dict(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:5000])
    _fails(*_convert(tmp_path, cut), "cut.pt")


def test_pickled_module_needs_trust_pickle(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(randomize(build("resnet20", "static")), path)
    _fails(*_convert(tmp_path, path), "whole.pt", "--trust-pickle")
    res, out = _convert(tmp_path, path, "--trust-pickle")
    assert res.exit_code == 0, res.output
    assert out.exists()


def test_nan_parameter_is_named(tmp_path):
    model = build("resnet20", "static")
    state = model.state_dict()
    state["layer2.1.bn1.running_var"][3] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    _fails(*_convert(tmp_path, path), "layer2.1.bn1.running_var")


def test_unsupported_layer_is_named_with_its_path(tmp_path):
    model = randomize(build("resnet20", "static"))
    model.layer1[0].bn1 = nn.Sequential(nn.BatchNorm2d(16), nn.GELU())
    with pytest.raises(UserError, match=r"layer1\.0\.bn1\.1 \(GELU\)"):
        convert(model, input_shape=(3, 32, 32))
    path = tmp_path / "gelu.pt"
    torch.save(model, path)
    _fails(*_convert(tmp_path, path, "--trust-pickle"), "layer1.0.bn1.1", "GELU")


def test_input_shape_the_model_cannot_take(tmp_path):
    path = tmp_path / "vgg.pt"
    torch.save(build("vgg_small").state_dict(), path)
    _fails(*_convert(tmp_path, path, "--input-shape", "1,3,16,16"), "3x16x16")
    _fails(*_convert(tmp_path, path, "--input-shape", "3,a,16"), "--input-shape")


def test_missing_output_folder(tmp_path):
    path = tmp_path / "r.pt"
    torch.save(build("resnet20").state_dict(), path)
    res = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "no" / "m.onnx"), "--probe-batch", "2"])
    assert res.exit_code == 2 and "does not exist" in res.output
