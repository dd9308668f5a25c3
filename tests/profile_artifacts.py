"""Small artifacts for the profile and board tests: a random SD-BNN ResNet-20 on 1x16x16, converted and
compiled for this host (x86) and for a Raspberry Pi 4, once per test process."""
import torch

from sdbnn_deploy.checkpoint import save_checkpoint
from sdbnn_deploy.compile import compile_model
from sdbnn_deploy.convert import convert
from sdbnn_deploy.models import build

_built = {}


def compiled_artifacts(tmp_path_factory) -> dict:
    """{"checkpoint": .pt, "onnx": .onnx, "x86": artifact dir, "rpi4": artifact dir}; built on first use."""
    if not _built:
        root = tmp_path_factory.mktemp("profile-artifacts")
        torch.manual_seed(0)
        model = build("resnet20", "static", in_channels=1).eval()
        save_checkpoint(root / "model.pt", model, "resnet20", "static", (1, 16, 16))
        convert(root / "model.pt", output=root / "model.onnx")
        _built.update(checkpoint=root / "model.pt", onnx=root / "model.onnx")
        for target in ("x86", "rpi4"):
            _built[target] = compile_model(root / "model.onnx", target, root / target, threads=1).path
    return _built
